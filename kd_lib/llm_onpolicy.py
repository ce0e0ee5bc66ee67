"""On-policy distillation of language models: the student writes, the teacher grades every token.

Token-level KD on a corpus (*off-policy*) trains the student on prefixes someone else wrote; at
generation time it conditions on its *own* earlier tokens, a distribution it never trained on, and
small errors compound (exposure bias). On-policy distillation (GKD, Agarwal et al. 2024; MiniLLM,
Gu et al. 2024) trains on continuations the current student samples itself, with the teacher's
next-token distribution as the target at every sampled position. The data of each batch come from:

* the student, with probability ``lmbda`` (``lmbda = 1``: fully on-policy);
* otherwise a fixed set of continuations: the corpus's own text (off-policy KD), or text the
  teacher wrote once (sequence-level KD, Kim and Rush 2016, usually trained with cross-entropy).

:class:`OnPolicyData` is a data set for :func:`kd_lib.training.fit` that does this with one batch
format: a prompt of ``P`` tokens then ``G`` new ones, with pre-shifted labels (``labels[t]`` is the
token at ``t + 1``) only where the *next* token is part of the continuation. The objective is any
``fit`` objective, e.g. :func:`kd_lib.llm_losses.kd_from_teacher` (forward KL, reverse KL or the
generalised JSD against the live teacher). TRL's ``GKDTrainer`` does the same with a live draw per
step; :class:`TokenCounter` measures what each recipe costs in teacher forward tokens.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from kd_lib.losses import IGNORE_INDEX

__all__ = ["OnPolicyData", "TokenCounter", "completion_batch", "position_divergence", "prompts_and_continuations",
           "sample_continuations", "token_nll"]


def prompts_and_continuations(blocks, prompt_tokens: int, new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``prompt_tokens`` of each full block as a prompt ``[N, P]`` and the next ``new_tokens``
    as the corpus's continuation ``[N, G]`` (blocks shorter than ``P + G`` tokens are left out).

    Taught in notebook 13, section 2 (Prompts, continuations and one batch format).
    """
    for name, value in (("prompt_tokens", prompt_tokens), ("new_tokens", new_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    length = prompt_tokens + new_tokens
    rows = [ids[:length] for ids in blocks.input_ids if len(ids) >= length]
    if not rows:
        raise ValueError(f"no block has prompt_tokens + new_tokens = {length} tokens: use shorter prompts or "
                         f"continuations, or blocks of at least {length} tokens (block_size={blocks.block_size})")
    ids = torch.tensor(rows, dtype=torch.long)
    return ids[:, :prompt_tokens].contiguous(), ids[:, prompt_tokens:].contiguous()


def _after_first(tokens: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """``[B, G]`` bool: positions after the first ``eos_token_id`` of each row (the EOS itself is kept)."""
    if eos_token_id is None:
        return torch.zeros_like(tokens, dtype=torch.bool)
    seen = (tokens == eos_token_id).long().cumsum(dim=1)
    return (seen - (tokens == eos_token_id).long()) > 0


def completion_batch(prompts: torch.Tensor, completions: torch.Tensor, *, eos_token_id: int | None,
                     pad_token_id: int) -> dict:
    """One training batch from prompts ``[B, P]`` and continuations ``[B, G]``.

    Returns ``input_ids`` and ``attention_mask`` ``[B, P + G]`` and pre-shifted ``labels`` ``[B, P + G]``:
    ``labels[t] = input_ids[t + 1]`` where ``t + 1`` is a continuation token, -100 elsewhere (the prompt,
    the last position). A continuation ends with its first ``eos_token_id`` (kept, as TRL does): what
    follows becomes padding (``pad_token_id``, attention 0, label -100).

    Taught in notebook 13, section 2 (Prompts, continuations and one batch format).
    """
    if prompts.dim() != 2 or completions.dim() != 2 or prompts.shape[0] != completions.shape[0]:
        raise ValueError(f"prompts must be [B, P] and completions [B, G] with the same B; got "
                         f"{tuple(prompts.shape)} and {tuple(completions.shape)}")
    dropped = _after_first(completions, eos_token_id)
    completions = completions.masked_fill(dropped, pad_token_id)
    ids = torch.cat([prompts, completions], dim=1)
    mask = torch.cat([torch.ones_like(prompts), (~dropped).long()], dim=1)
    labels = torch.full_like(ids, IGNORE_INDEX)
    p = prompts.shape[1]
    labels[:, p - 1:-1] = completions.masked_fill(dropped, IGNORE_INDEX)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def sample_continuations(model, prompts: torch.Tensor, *, new_tokens: int, seed: int, temperature: float = 1.0,
                         top_k: int = 0, top_p: float = 1.0, eos_token_id: int | None = None,
                         pad_token_id: int = 0) -> torch.Tensor:
    """``[B, new_tokens]`` tokens ``model`` samples after equal-length ``prompts [B, P]`` (``top_k = 0``,
    ``top_p = 1``: the model's own distribution at ``temperature``, as TRL's ``GKDTrainer`` samples).

    Sampling uses its own seeded random state (``seed``), so the caller's random numbers (dropout,
    shuffling) are not disturbed and the same seed gives the same tokens. Rows that end early are padded
    with ``pad_token_id``. The model is put in eval mode for sampling and back in its previous mode after.

    Taught in notebook 13, section 2 (Prompts, continuations and one batch format).
    """
    from kd_lib.utils import quiet_hf

    if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or new_tokens < 1:
        raise ValueError(f"new_tokens must be a positive int; got {new_tokens!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (the sampling temperature); got {temperature!r}")
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), quiet_hf():
            torch.manual_seed(seed)
            out = model.generate(prompts.to(device), attention_mask=torch.ones_like(prompts).to(device),
                                 do_sample=True, temperature=float(temperature), top_k=top_k, top_p=top_p,
                                 max_new_tokens=new_tokens, min_new_tokens=0, eos_token_id=eos_token_id,
                                 pad_token_id=pad_token_id)
    finally:
        model.train(was_training)
    completions = out[:, prompts.shape[1]:].cpu()
    if completions.shape[1] < new_tokens:  # every row stopped early
        pad = torch.full((completions.shape[0], new_tokens - completions.shape[1]), pad_token_id, dtype=torch.long)
        completions = torch.cat([completions, pad], dim=1)
    return completions


class OnPolicyData:
    """Prompts whose continuations come from the current student (probability ``lmbda``) or a fixed set.

    A data set for :func:`kd_lib.training.fit`: ``loader(batch_size, shuffle, seed)`` yields batches of
    :func:`completion_batch` (the last, incomplete batch is dropped), one per optimizer step, each
    drawn when the step needs it. The draw ``u < lmbda`` and the student's samples are seeded by
    ``(seed, loader seed, step)``, so a run is reproducible; a resumed run redraws the batches it skips
    (the same seeds, the resumed student). ``student_batches`` and ``student_tokens`` count what the
    student generated.

    Args:
        student: the model being trained (it samples in eval mode, without gradients).
        prompts: ``[N, P]`` token ids.
        continuations: ``[N, G]`` fixed continuations (the corpus's, or the teacher's own text for
            sequence-level KD); required unless ``lmbda = 1``.
        lmbda: probability that a batch is sampled from the student (GKD's lambda).
        new_tokens: ``G``, tokens per continuation; sampling as :func:`sample_continuations`.

    Taught in notebook 13, section 3 (Four ways to choose the data).
    """

    def __init__(self, student, prompts: torch.Tensor, continuations: torch.Tensor | None = None, *,
                 lmbda: float = 1.0, new_tokens: int | None = None, temperature: float = 1.0,
                 eos_token_id: int | None = None, pad_token_id: int = 0, seed: int = 0) -> None:
        if isinstance(lmbda, bool) or not isinstance(lmbda, (int, float)) or not 0 <= lmbda <= 1:
            raise ValueError(f"lmbda must be a number in [0, 1] (1: every batch sampled from the student); got {lmbda!r}")  # noqa: E501
        if continuations is None and lmbda < 1:
            raise ValueError("continuations=None needs lmbda=1: with lmbda < 1 some batches use fixed continuations")
        if continuations is not None:
            if continuations.shape[0] != prompts.shape[0]:
                raise ValueError(f"continuations must have one row per prompt ({prompts.shape[0]}); got "
                                 f"{continuations.shape[0]}")
            new_tokens = continuations.shape[1] if new_tokens is None else new_tokens
            if new_tokens != continuations.shape[1]:
                raise ValueError(f"new_tokens={new_tokens} differs from the continuations' {continuations.shape[1]}")
        if new_tokens is None:
            raise ValueError("new_tokens is required when no continuations are given")
        self.student, self.prompts, self.continuations = student, prompts, continuations
        self.lmbda, self.new_tokens, self.temperature, self.seed = float(lmbda), new_tokens, temperature, seed
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id
        self.student_batches, self.student_tokens = 0, 0

    def __len__(self) -> int:
        return self.prompts.shape[0]

    def _batch(self, rows: torch.Tensor, step_seed: int) -> dict:
        draw = torch.rand((), generator=torch.Generator().manual_seed(step_seed)).item()
        if draw < self.lmbda:
            completions = sample_continuations(self.student, self.prompts[rows], new_tokens=self.new_tokens,
                                               seed=step_seed, temperature=self.temperature,
                                               eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id)
            self.student_batches += 1
            self.student_tokens += completions.numel()
        else:
            completions = self.continuations[rows]
        return completion_batch(self.prompts[rows], completions, eos_token_id=self.eos_token_id,
                                pad_token_id=self.pad_token_id)

    def loader(self, batch_size: int, shuffle: bool = False, seed: int = 0):
        """The batches of one epoch (``len()`` of them), drawn lazily."""
        return _Batches(self, batch_size, shuffle, seed)


class _Batches:
    def __init__(self, data: OnPolicyData, batch_size: int, shuffle: bool, seed: int) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
        if batch_size > len(data):
            raise ValueError(f"batch_size={batch_size} is more than the {len(data)} prompts: lower it")
        self.data, self.batch_size, self.shuffle, self.seed = data, batch_size, shuffle, seed

    def __len__(self) -> int:
        return len(self.data) // self.batch_size

    def __iter__(self):
        n = len(self.data)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)) if self.shuffle else torch.arange(n)  # noqa: E501
        for step in range(len(self)):
            rows = order[step * self.batch_size:(step + 1) * self.batch_size]
            yield self.data._batch(rows, (self.data.seed * 1_000_003 + self.seed) * 10_007 + step)


class TokenCounter(contextlib.AbstractContextManager):
    """Counts the tokens ``model`` processes in forward passes while the context is open: ``.tokens``.

    Generation with a key/value cache counts each new token once per step (its prompt once).
    Example: ``with TokenCounter(teacher) as c: ...; c.tokens``.

    Taught in notebook 13, section 3 (Four ways to choose the data).
    """

    def __init__(self, model) -> None:
        self.model, self.tokens, self.calls, self._handle = model, 0, 0, None

    def _hook(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            self.tokens += ids.numel()
            self.calls += 1

    def __enter__(self) -> TokenCounter:
        self._handle = self.model.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


@torch.no_grad()
def token_nll(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``model``'s negative log-likelihood (nats) of each labelled token: ``nll [B, L]`` and ``mask [B, L]``
    (``labels != -100``; ``nll`` is 0 elsewhere). Labels pre-shifted, as :func:`completion_batch`'s.

    Taught in notebook 13, section 4 (Measuring what the student writes).
    """
    model.eval()
    device = next(model.parameters()).device
    logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
    labels = batch["labels"].to(device)
    mask = labels != IGNORE_INDEX
    nll = F.cross_entropy(logits.float().transpose(1, 2), labels.masked_fill(~mask, 0), reduction="none")
    return (nll * mask).cpu(), mask.cpu()


@torch.no_grad()
def position_divergence(student, teacher, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both KL divergences (nats) between teacher and student at each labelled position: ``forward [B, L]``
    (``KL(p_teacher || p_student)``: how much of the teacher's distribution the student misses),
    ``reverse [B, L]`` (``KL(p_student || p_teacher)``: how much of the student's mass lands where the
    teacher puts little) and ``mask [B, L]``; both are 0 where ``mask`` is False.

    On a batch whose prefixes the student wrote itself this shows how far it drifts from the teacher
    where it will actually be used; on corpus prefixes, where it was trained (exposure bias).

    Taught in notebook 13, section 5 (Exposure bias).
    """
    student.eval()
    teacher.eval()
    device = next(student.parameters()).device
    inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
    log_s = F.log_softmax(student(**inputs).logits.float(), dim=-1)
    log_t = F.log_softmax(teacher(**inputs).logits.float(), dim=-1)
    mask = batch["labels"].to(device) != IGNORE_INDEX
    forward = F.kl_div(log_s, log_t, log_target=True, reduction="none").sum(-1) * mask
    reverse = F.kl_div(log_t, log_s, log_target=True, reduction="none").sum(-1) * mask
    return forward.cpu(), reverse.cpu(), mask.cpu()
