"""The course's on-policy loop next to TRL's ``GKDTrainer``, on the same data, offline on a CPU.

TRL (``pip install trl``) ships GKD as ``trl.experimental.gkd.GKDTrainer``. Three things about it that
its defaults hide, all checked in ``tests/test_llm_trl.py``:

* its ``temperature`` is the *sampling* temperature of the student's continuations; the divergence
  itself is always computed at ``T = 1`` (and without the ``T**2`` factor);
* its ``labels`` are *not* shifted (the trainer shifts them), while the course's are pre-shifted;
* its ``SFTConfig`` base turns on bf16 and gradient checkpointing by default, which a CPU run must
  turn off (:func:`gkd_config` does).

:func:`gkd_trainer` builds a trainer on tensors of prompts and continuations, and
:func:`record_generations` keeps the continuations the student sampled at each step, so that the
course's loop (:func:`kd_lib.training.fit` on :class:`ReplayData`) can be run on exactly the same
batches and the two compared parameter by parameter.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import torch

from kd_lib.losses import IGNORE_INDEX

__all__ = ["ReplayData", "gkd_collator", "gkd_config", "gkd_examples", "gkd_trainer", "import_gkd",
           "record_generations", "shift_labels"]


def import_gkd():
    """``(GKDConfig, GKDTrainer)`` from ``trl.experimental.gkd`` (its experimental warning silenced).

    Taught in notebook 13, section 6 (The same training with TRL).
    """
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        from trl.experimental.gkd import GKDConfig, GKDTrainer
    except ImportError as exc:
        raise ImportError(f"TRL's GKDTrainer is not available ({exc}): pip install 'trl>=1.0'") from None
    return GKDConfig, GKDTrainer


def gkd_examples(prompts: torch.Tensor, continuations: torch.Tensor) -> list[dict]:
    """Rows for a ``GKDTrainer`` data set: ``input_ids``, ``attention_mask``, unshifted ``labels`` (-100
    on the prompt), ``prompts`` and ``prompt_attention_mask``, from ``prompts [N, P]`` and ``continuations [N, G]``.

    Taught in notebook 13, section 6 (The same training with TRL).
    """
    ids = torch.cat([prompts, continuations], dim=1)
    labels = ids.clone()
    labels[:, :prompts.shape[1]] = IGNORE_INDEX
    return [{"input_ids": i.tolist(), "attention_mask": [1] * len(i), "labels": lab.tolist(), "prompts": p.tolist(),
             "prompt_attention_mask": [1] * len(p)} for i, lab, p in zip(ids, labels, prompts, strict=True)]


def gkd_collator(rows: list[dict]) -> dict:
    """Stacks equal-length :func:`gkd_examples` rows into ``[B, ...]`` long tensors.

    Taught in notebook 13, section 6 (The same training with TRL).
    """
    return {key: torch.tensor([row[key] for row in rows], dtype=torch.long) for key in rows[0]}


def gkd_config(output_dir, *, lmbda: float, beta: float, steps: int, lr: float, batch_size: int, new_tokens: int,
               temperature: float = 1.0, seed: int = 0):
    """A ``GKDConfig`` for a CPU run that matches :func:`kd_lib.training.fit`'s AdamW: linear decay, no
    warm-up, no weight decay, gradients clipped at norm 1, float32, nothing saved or logged.

    Taught in notebook 13, section 6 (The same training with TRL).
    """
    GKDConfig, _ = import_gkd()
    with warnings.catch_warnings():  # transformers 5 renames gradient_checkpointing; TRL still reads the old name
        warnings.simplefilter("ignore", FutureWarning)
        return GKDConfig(output_dir=str(output_dir), use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
                         per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=lr,
                         lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                         optim="adamw_torch", adam_epsilon=1e-8, seed=seed, data_seed=seed, lmbda=lmbda, beta=beta,
                         max_new_tokens=new_tokens, temperature=temperature, report_to="none", save_strategy="no",
                         logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0)


def gkd_trainer(student, teacher, tokenizer, prompts: torch.Tensor, continuations: torch.Tensor, config):
    """A ``GKDTrainer`` of ``student`` against ``teacher`` on the prompts and fixed continuations (quiet:
    no printed metrics, no deprecation warnings from ``train()``).

    Taught in notebook 13, section 6 (The same training with TRL).
    """
    from datasets import Dataset
    from transformers import PrinterCallback

    from kd_lib.utils import quiet_hf

    _, GKDTrainer = import_gkd()
    data = Dataset.from_list(gkd_examples(prompts, continuations))
    with quiet_hf():
        trainer = GKDTrainer(model=student, teacher_model=teacher, args=config, data_collator=gkd_collator,
                             train_dataset=data, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)  # it prints the final metrics when progress bars are off
    train = trainer.train

    def quiet_train(*args, **kwargs):
        with warnings.catch_warnings(), quiet_hf():  # transformers 5's renames, read by TRL; its notices
            warnings.simplefilter("ignore", FutureWarning)
            return train(*args, **kwargs)

    trainer.train = quiet_train
    return trainer


@contextlib.contextmanager
def record_generations():
    """While open, every on-policy batch ``GKDTrainer`` generates is appended to the yielded list as
    ``(input_ids, attention_mask, labels)`` (TRL's unshifted labels).

    Taught in notebook 13, section 6 (The same training with TRL).
    """
    _, GKDTrainer = import_gkd()
    original = GKDTrainer.__dict__["generate_on_policy_outputs"]
    recorded: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def recording(model, inputs, generation_config):
        out = original.__func__(model, inputs, generation_config)
        recorded.append(tuple(t.detach().cpu().clone() for t in out))
        return out

    GKDTrainer.generate_on_policy_outputs = staticmethod(recording)
    try:
        yield recorded
    finally:
        GKDTrainer.generate_on_policy_outputs = original


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """TRL's unshifted labels ``[B, L]`` as the course's pre-shifted ones: ``out[t] = labels[t + 1]``, -100 last.

    Taught in notebook 13, section 6 (The same training with TRL).
    """
    out = torch.full_like(labels, IGNORE_INDEX)
    out[:, :-1] = labels[:, 1:]
    return out


class ReplayData:
    """Given batches (course format, pre-shifted labels) replayed in order as one epoch, one optimizer step
    each, for :func:`kd_lib.training.fit` -- e.g. what ``GKDTrainer`` generated at its steps.

    Taught in notebook 13, section 6 (The same training with TRL).
    """

    def __init__(self, batches: list[dict]) -> None:
        if not batches or len({b["labels"].shape[0] for b in batches}) != 1:
            raise ValueError("batches must be a non-empty list of batches of one size")
        self.batches = batches

    def __len__(self) -> int:
        return self.batches[0]["labels"].shape[0] * len(self.batches)

    def loader(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> list[dict]:
        """The batches, in their order whatever ``shuffle`` and ``seed`` say."""
        if batch_size != self.batches[0]["labels"].shape[0]:
            raise ValueError(f"batch_size must be the replayed batches' size, {self.batches[0]['labels'].shape[0]}; "
                             f"got {batch_size}")
        return list(self.batches)
