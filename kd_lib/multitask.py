"""One student, several tasks: a shared DistilBERT body with one classification head per task.

Multi-task distillation (e.g. Clark et al., 2019, "BAM! Born-Again Multi-Task Networks") trains
one student from several single-task teachers. Here:

- :class:`MultiTaskStudent` runs the shared body once and reads the ``[CLS]`` vector with one
  DistilBERT-style head per task; :meth:`MultiTaskStudent.for_task` presents it as an ordinary
  single-task classifier, so ``predict_logits``, ``evaluate_accuracy`` and ``measure_speed`` work.
- :func:`multitask_from_bert` builds it from a BERT with :func:`kd_lib.students.distilbert_from_bert`,
  so that it starts from exactly the weights of the single-task students built the same way.
- :class:`MultiTaskData` deals batches of several tasks in a shuffled order, each batch from one
  task (tagged ``batch["task"]``); :func:`multitask_kd` distils each batch from its own teacher's
  cached logits. Both plug into :func:`kd_lib.training.fit` unchanged.
- :func:`share_frozen_embeddings` freezes the input embeddings and lets several students share
  them (one table stored once, counted once by :func:`kd_lib.evaluate.count_params`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from kd_lib.data import EncodedDataset
from kd_lib.distill import kd_from_cache
from kd_lib.students import distilbert_from_bert
from kd_lib.training import LossFunction

__all__ = [
    "ClassificationHead",
    "MultiTaskData",
    "MultiTaskOutput",
    "MultiTaskStudent",
    "TaskView",
    "multitask_from_bert",
    "multitask_kd",
    "share_frozen_embeddings",
]


class ClassificationHead(nn.Module):
    """DistilBERT's classification head: ``[CLS]`` vector ``[B, d]`` → logits ``[B, C]``.

    ``logits = classifier(dropout(ReLU(pre_classifier(h_cls))))``, exactly as in
    ``DistilBertForSequenceClassification``.

    Taught in notebook 10, section 6 (Two teachers, two tasks, one student).
    """

    def __init__(self, pre_classifier: nn.Linear, classifier: nn.Linear, dropout: float = 0.2) -> None:
        super().__init__()
        if pre_classifier.out_features != classifier.in_features:
            raise ValueError(
                f"pre_classifier gives {pre_classifier.out_features} features but classifier expects "
                f"{classifier.in_features}"
            )
        self.pre_classifier = pre_classifier
        self.classifier = classifier
        self.dropout = nn.Dropout(dropout)

    @classmethod
    def from_distilbert(cls, model: nn.Module) -> ClassificationHead:
        """A copy of the head of a ``DistilBertForSequenceClassification``."""
        if not all(hasattr(model, name) for name in ("pre_classifier", "classifier", "dropout")):
            raise ValueError(f"model must be a DistilBertForSequenceClassification; got {type(model).__name__}")
        return cls(copy.deepcopy(model.pre_classifier), copy.deepcopy(model.classifier), model.dropout.p)

    @property
    def num_labels(self) -> int:
        return self.classifier.out_features

    def forward(self, cls_vector: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(torch.relu(self.pre_classifier(cls_vector))))


@dataclass
class MultiTaskOutput:
    """What :class:`MultiTaskStudent` returns.

    ``task_logits`` maps each computed task to its logits ``[B, C_task]``; ``logits`` is the
    requested task's (``None`` when no task was named); ``hidden_states`` as in transformers
    (with ``output_hidden_states=True``).

    Taught in notebook 10, section 6 (Two teachers, two tasks, one student).
    """

    logits: torch.Tensor | None
    task_logits: dict[str, torch.Tensor]
    hidden_states: tuple[torch.Tensor, ...] | None = None


class MultiTaskStudent(nn.Module):
    """A shared encoder ``body`` (a ``DistilBertModel``) and one :class:`ClassificationHead` per task.

    Taught in notebook 10, section 6 (Two teachers, two tasks, one student).
    """

    def __init__(self, body: nn.Module, heads: Mapping[str, ClassificationHead]) -> None:
        super().__init__()
        if len(heads) < 1:
            raise ValueError("heads must name at least one task")
        width = getattr(getattr(body, "config", None), "dim", None)
        for task, head in heads.items():
            if not isinstance(head, ClassificationHead):
                raise ValueError(f"head of task {task!r} must be a ClassificationHead; got {type(head).__name__}")
            if width is not None and head.pre_classifier.in_features != width:
                raise ValueError(
                    f"head of task {task!r} reads {head.pre_classifier.in_features} features; the body gives {width}"
                )
        self.body = body
        self.heads = nn.ModuleDict(dict(heads))

    @property
    def tasks(self) -> list[str]:
        return list(self.heads)

    def _check_task(self, task: str) -> str:
        if task not in self.heads:
            raise ValueError(f"unknown task {task!r}; this student has heads for {self.tasks}")
        return task

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        task: str | None = None,
    ) -> MultiTaskOutput:
        """Encode ``input_ids`` ``[B, L]`` once; apply the head of ``task``, or every head if ``None``."""
        names = self.tasks if task is None else [self._check_task(task)]
        out = self.body(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        cls_vector = out.last_hidden_state[:, 0]
        task_logits = {name: self.heads[name](cls_vector) for name in names}
        return MultiTaskOutput(task_logits[task] if task else None, task_logits, out.hidden_states)

    def for_task(self, task: str) -> TaskView:
        """This student as a single-task classifier of ``task`` (shares the weights)."""
        return TaskView(self, self._check_task(task))


class TaskView(nn.Module):
    """A :class:`MultiTaskStudent` seen as a classifier of one task: ``forward`` returns that
    task's logits in ``.logits``, which is what ``kd_lib.distill`` and ``kd_lib.evaluate`` read.

    Taught in notebook 10, section 6 (Two teachers, two tasks, one student).
    """

    def __init__(self, student: MultiTaskStudent, task: str) -> None:
        super().__init__()
        self.student = student
        self.task = student._check_task(task)

    def forward(self, input_ids, attention_mask=None, output_hidden_states: bool = False) -> MultiTaskOutput:
        return self.student(input_ids, attention_mask, output_hidden_states, task=self.task)


def multitask_from_bert(
    teacher: nn.Module, layers: Sequence[int], num_labels: Mapping[str, int], seed: int = 0
) -> MultiTaskStudent:
    """A multi-task DistilBERT student built from a BERT's embeddings and ``layers``.

    The body is the one ``distilbert_from_bert(teacher, layers)`` builds; the head of task ``t``
    is the head ``distilbert_from_bert(teacher, layers, num_labels[t], seed=seed)`` gets. So a
    single-task student built with the same arguments starts from the same weights as the
    multi-task student's body and that task's head.

    Returns:
        The student, in train mode, on the CPU.

    Taught in notebook 10, section 6 (Two teachers, two tasks, one student).
    """
    if not num_labels:
        raise ValueError("num_labels must map at least one task name to its number of classes, e.g. {'sst2': 2}")
    singles = {task: distilbert_from_bert(teacher, layers, num_labels=c, seed=seed) for task, c in num_labels.items()}
    heads = {task: ClassificationHead.from_distilbert(s) for task, s in singles.items()}
    return MultiTaskStudent(next(iter(singles.values())).distilbert, heads).train()


class MultiTaskData:
    """Several tasks' :class:`~kd_lib.data.EncodedDataset` as one training set of one-task batches.

    Every batch comes from a single task (no padding across tasks, one head per step) and carries
    ``batch["task"]``; ``batch["row"]`` is the row in *that task's* dataset. With ``shuffle`` the
    order of the tasks' batches is shuffled too, so each task is seen in proportion to its size
    throughout the epoch. ``len()`` is the total number of examples; an epoch has
    ``sum_t ceil(N_t / batch_size)`` batches, ``len(data.loader(batch_size))``, which is the step
    count ``fit`` schedules.

    Taught in notebook 10, section 6 (Two teachers, two tasks, one student).
    """

    def __init__(self, datasets: Mapping[str, EncodedDataset]) -> None:
        if not datasets:
            raise ValueError("datasets must map at least one task name to its EncodedDataset")
        empty = [task for task, data in datasets.items() if len(data) == 0]
        if empty:
            raise ValueError(f"datasets of tasks {empty} are empty")
        self.datasets = dict(datasets)

    def __len__(self) -> int:
        return sum(len(data) for data in self.datasets.values())

    def loader(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> _TaskBatches:
        """The batches of one epoch (tasks in turn without ``shuffle``; shuffled with ``seed``)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
        return _TaskBatches(self.datasets, batch_size, shuffle, seed)


class _TaskBatches:
    """An iterable over one epoch's one-task batches (with a length, like a DataLoader)."""

    def __init__(self, datasets: dict[str, EncodedDataset], batch_size: int, shuffle: bool, seed: int) -> None:
        self.datasets, self.batch_size, self.shuffle, self.seed = datasets, batch_size, shuffle, seed
        self.order = [task for task, data in datasets.items() for _ in range(-(-len(data) // batch_size))]
        if shuffle:
            self.order = [self.order[i] for i in np.random.default_rng(seed).permutation(len(self.order))]

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[dict]:
        # each task's own shuffle, seeded from (seed, task position) so that tasks never share an order
        seeds = [int(np.random.default_rng([self.seed, i]).integers(2**31)) for i in range(len(self.datasets))]
        loaders = {
            task: iter(data.loader(self.batch_size, self.shuffle, seed=s))
            for s, (task, data) in zip(seeds, self.datasets.items(), strict=True)
        }
        for task in self.order:
            yield {**next(loaders[task]), "task": task}


def multitask_kd(
    teacher_logits: Mapping[str, torch.Tensor], temperature: float = 2.0, alpha: float = 0.5
) -> LossFunction:
    """An objective for :func:`kd_lib.training.fit` over :class:`MultiTaskData` batches.

    A batch of task ``t`` gets ``distillation_loss`` (``alpha`` · KD at ``temperature`` +
    ``(1 - alpha)`` · CE) between the student's head ``t`` and ``teacher_logits[t]`` ``[N_t, C_t]``,
    looked up by ``batch["row"]`` (:func:`kd_lib.distill.kd_from_cache`). Tasks are weighted by
    their number of batches.

    Taught in notebook 10, section 6 (Two teachers, two tasks, one student).
    """
    if not teacher_logits:
        raise ValueError("teacher_logits must map at least one task name to its cached logits [N, C]")
    per_task = {task: kd_from_cache(z, temperature, alpha) for task, z in teacher_logits.items()}

    def loss(outputs: MultiTaskOutput, batch: dict) -> torch.Tensor:
        task = batch.get("task")
        if task not in per_task:
            raise ValueError(f"batch of task {task!r} but teacher logits only for {list(per_task)}")
        return per_task[task](SimpleNamespace(logits=outputs.task_logits[task]), batch)

    return LossFunction(loss)


def _embeddings(model: nn.Module) -> tuple[nn.Module, str]:
    """(the module holding ``embeddings``, i.e. the DistilBERT body, and a name for messages)."""
    for attr in ("distilbert", "body"):
        body = getattr(model, attr, None)
        if body is not None and hasattr(body, "embeddings"):
            return body, type(model).__name__
    raise ValueError(
        f"{type(model).__name__} has no DistilBERT embeddings (expected a DistilBertForSequenceClassification "
        "or a MultiTaskStudent)"
    )


def share_frozen_embeddings(models: Sequence[nn.Module]) -> nn.Module:
    """Freeze the input embeddings (word, position, LayerNorm) of ``models[0]`` and make every
    model use that same module; return it.

    The models must start with equal embedding weights (e.g. all built from one BERT), so sharing
    changes none of them. A frozen, shared table is stored once, and ``count_params`` over all
    the models counts it once. Frozen embeddings also make a CPU training step cheaper: AdamW no
    longer updates the ~12 M parameters of the vocabulary table.

    Taught in notebook 10, section 3 (A teacher per client, and the pooled model).
    """
    if not models:
        raise ValueError("models must hold at least one model")
    bodies = [_embeddings(m) for m in models]
    shared = bodies[0][0].embeddings
    reference = shared.state_dict()
    for body, name in bodies[1:]:
        state = body.embeddings.state_dict()
        if state.keys() != reference.keys() or not all(torch.equal(state[k], reference[k]) for k in reference):
            raise ValueError(
                f"the embeddings of a {name} differ from the first model's: sharing them would change that model "
                "(build every model from the same BERT)"
            )
    shared.requires_grad_(False)
    for body, _ in bodies[1:]:
        body.embeddings = shared
    return shared
