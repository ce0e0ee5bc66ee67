"""Language-model distillation: tokenizer, LM blocks, GPT-2 teacher and student, perplexity,
sampling, and DistilBERT's three-loss masked-LM objective.

Conventions (as in :mod:`kd_lib.losses`): ``B`` batch size, ``L`` block length in tokens,
``V`` vocabulary size, ``H`` hidden size; losses are 0-dim tensors in nats.

The blocks of :class:`LMBlocks` store **next-token targets already shifted**:
``labels[:, t]`` is the token that follows ``input_ids[:, t]`` (``-100`` where there is none,
and on padding). So a model's ``logits[:, t]`` is compared with ``labels[:, t]`` directly, and
the course's generic losses -- ``distillation_loss`` with ``-100`` labels, ``kd_loss`` with a
mask -- and its training loop :func:`kd_lib.training.fit` apply to language models unchanged.
Hugging Face's ``model(input_ids, labels=input_ids)`` does the same shift inside the model
(``logits[:, :-1]`` against ``input_ids[:, 1:]``); never pass these pre-shifted labels to it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kd_lib.data import seeded_loader
from kd_lib.losses import IGNORE_INDEX, check_temperature, hidden_state_loss, kd_loss
from kd_lib.students import bert_to_distilbert_state_dict, distilbert_config

__all__ = [
    "GPT2_SIZES",
    "SPECIAL_TOKENS",
    "GPT2Size",
    "LMBlocks",
    "distilbert_mlm_from_bert",
    "distilbert_mlm_loss",
    "make_gpt2",
    "mlm_collator",
    "perplexity",
    "sample_text",
    "train_bpe_tokenizer",
]

# End of text (between chapters, and GPT-2's usual choice), padding, and the masked-LM mask.
SPECIAL_TOKENS: dict[str, str] = {"eos_token": "<|endoftext|>", "pad_token": "<pad>", "mask_token": "<mask>"}


def train_bpe_tokenizer(texts: Sequence[str], vocab_size: int = 2048):
    """Train a byte-level BPE tokenizer (GPT-2's kind) on ``texts``; deterministic.

    Args:
        texts: training text only (never held-out text, which would leak into the vocabulary).
        vocab_size: total vocabulary, including the 256 byte symbols and the 3
            :data:`SPECIAL_TOKENS`; an int in ``[260, 65536]``.

    Returns:
        A ``PreTrainedTokenizerFast`` with ``eos_token``, ``pad_token`` and ``mask_token`` set
        (ids 0, 1, 2). Any text can be encoded: unseen characters fall back to their bytes.

    Taught in notebook 09, section 2 (A tokenizer of our own).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 260 <= vocab_size <= 65536:
        raise ValueError(f"vocab_size must be an int in [260, 65536] (256 bytes + special tokens + merges); "
                         f"got {vocab_size!r}")
    if isinstance(texts, str) or not texts:
        raise ValueError("texts must be a non-empty sequence of strings (e.g. the training chapters)")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


class LMBlocks:
    """Texts cut into blocks of at most ``block_size`` tokens for next-token prediction.

    Each text (a chapter) is tokenised and closed with the end-of-text token; then cut into
    consecutive blocks of ``block_size`` input tokens. The targets are the inputs shifted by
    one: ``labels[t] = ids[start + t + 1]``, so the block's last input token is predicted from
    the first token of the next block (the text continues) and the text's final token, which
    has no successor, gets ``-100``. The last block of a text is shorter; :meth:`collate`
    right-pads it with ``pad_token_id`` (``attention_mask`` 0, ``labels`` -100), so padding
    never counts in a loss or in perplexity.

    Item ``i`` is ``{"input_ids", "labels", "row"}``; batches from :meth:`loader` have
    ``input_ids``, ``attention_mask``, ``labels`` ``[B, L]`` and ``row`` ``[B]`` -- the batch
    format of :func:`kd_lib.training.fit`.

    Taught in notebook 09, section 3 (Next-token targets: the shift, blocks and padding).
    """

    def __init__(self, texts: Sequence[str], tokenizer, block_size: int = 128) -> None:
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2:
            raise ValueError(f"block_size must be an int >= 2 (tokens per block); got {block_size!r}")
        if isinstance(texts, str):
            raise ValueError("texts must be a sequence of strings (one per chapter), not a single string")
        self.block_size = block_size
        self.pad_token_id: int = tokenizer.pad_token_id
        self.input_ids: list[list[int]] = []
        self.labels: list[list[int]] = []
        for ids in tokenizer(list(texts))["input_ids"]:
            ids = [*ids, tokenizer.eos_token_id]
            for start in range(0, len(ids), block_size):
                block = ids[start : start + block_size]
                targets = ids[start + 1 : start + block_size + 1]
                if not targets:  # a lone end-of-text token predicts nothing
                    continue
                self.input_ids.append(block)
                self.labels.append(targets + [IGNORE_INDEX] * (len(block) - len(targets)))

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, row: int) -> dict:
        return {"input_ids": self.input_ids[row], "labels": self.labels[row], "row": row}

    @property
    def num_targets(self) -> int:
        """Number of predicted tokens (positions whose label is not -100)."""
        return sum(sum(t != IGNORE_INDEX for t in labels) for labels in self.labels)

    def collate(self, items: list[dict]) -> dict:
        """Right-pad items to the longest: ``input_ids``, ``attention_mask``, ``labels`` ``[B, L]``, ``row`` ``[B]``."""
        longest = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), longest), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(items), longest), dtype=torch.long)
        for i, it in enumerate(items):
            n = len(it["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(it["input_ids"]), torch.tensor(it["labels"]), 1
        rows = torch.tensor([it["row"] for it in items])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "row": rows}

    def loader(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> torch.utils.data.DataLoader:
        """A DataLoader over the blocks; shuffled with a generator seeded by ``seed``."""
        return seeded_loader(self, batch_size, shuffle, seed)


@dataclass(frozen=True)
class GPT2Size:
    """Depth and width of a GPT-2: ``n_layer`` blocks of width ``n_embd`` with ``n_head`` heads.

    Taught in notebook 09, section 4 (The teacher: a 4-layer GPT-2, trained from scratch).
    """

    n_layer: int
    n_embd: int
    n_head: int


# The notebook's teacher and student (the student: half the depth, half the width), and a
# tiny size for tests.
GPT2_SIZES: dict[str, GPT2Size] = {
    "teacher": GPT2Size(n_layer=4, n_embd=256, n_head=4),
    "student": GPT2Size(n_layer=2, n_embd=128, n_head=2),
    "tiny": GPT2Size(n_layer=1, n_embd=32, n_head=2),
}


def make_gpt2(tokenizer, size: str | GPT2Size, block_size: int = 128, seed: int = 0, dropout: float = 0.0):
    """A randomly initialised ``GPT2LMHeadModel`` (trained from scratch) for ``tokenizer``'s vocabulary.

    Args:
        tokenizer: gives the vocabulary size and the end-of-text/padding ids.
        size: a key of :data:`GPT2_SIZES` or a :class:`GPT2Size`.
        block_size: the longest context in tokens (GPT-2's ``n_positions``).
        seed: seeds the initial weights.
        dropout: for the residual, embedding and attention dropouts; 0 by default (short
            training runs underfit, they do not overfit).

    Taught in notebook 09, section 3 (Next-token targets: the shift, blocks and padding).
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    if isinstance(size, str):
        if size not in GPT2_SIZES:
            raise ValueError(f"size must be one of {sorted(GPT2_SIZES)} or a GPT2Size; got {size!r}")
        size = GPT2_SIZES[size]
    if size.n_embd % size.n_head:
        raise ValueError(f"n_embd ({size.n_embd}) must be divisible by n_head ({size.n_head})")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=block_size, n_embd=size.n_embd, n_layer=size.n_layer,
        n_head=size.n_head, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config)


@torch.no_grad()
def perplexity(model: nn.Module, data: LMBlocks, batch_size: int = 32, device: str | torch.device = "cpu") -> float:
    """``exp`` of the mean next-token cross-entropy (nats) over every target token of ``data``.

    Tokens are pooled over the whole set (not averaged per block), so a short padded block
    weighs by its tokens. The model is evaluated in eval mode and restored afterwards.

    Taught in notebook 09, section 4 (The teacher: a 4-layer GPT-2, trained from scratch).
    """
    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    total, count = 0.0, 0
    for batch in data.loader(batch_size):
        ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
        logits = model(input_ids=ids, attention_mask=mask).logits
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                 ignore_index=IGNORE_INDEX, reduction="sum").item()
        count += int((labels != IGNORE_INDEX).sum())
    model.train(was_training)
    return math.exp(total / count)


@torch.no_grad()
def sample_text(
    model: nn.Module,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 60,
    temperature: float = 0.8,
    top_k: int = 40,
    seed: int = 0,
) -> str:
    """Continue ``prompt`` by sampling from ``model`` one token at a time; return the continuation.

    At each step the next-token logits are divided by ``temperature`` and all but the ``top_k``
    largest are dropped before sampling. The sampler has its own ``torch.Generator`` seeded
    with ``seed``: the same model, prompt and seed give the same text, whatever else used the
    global random state. The context is cropped to the model's ``n_positions``; sampling stops
    early at the end-of-text token.

    Taught in notebook 09, section 7 (What they write).
    """
    temperature = check_temperature(temperature)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int (1 = greedy); got {top_k!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int; got {max_new_tokens!r}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
    prompt_length = ids.shape[1]
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids[:, -model.config.n_positions :]).logits[0, -1] / temperature
        values, indices = logits.topk(min(top_k, logits.shape[-1]))
        choice = indices[torch.multinomial(torch.softmax(values, dim=-1), 1, generator=generator)]
        ids = torch.cat([ids, choice.view(1, 1)], dim=1)
        if choice.item() == tokenizer.eos_token_id:
            break
    model.train(was_training)
    return tokenizer.decode(ids[0, prompt_length:], skip_special_tokens=True)


# --------------------------------------------------------------------------------------------
# DistilBERT's general (masked-LM) distillation
# --------------------------------------------------------------------------------------------


def mlm_collator(tokenizer, mlm_probability: float = 0.15, seed: int = 0):
    """BERT's masking, from transformers: ``mlm_probability`` of the non-special tokens are chosen;
    of those 80 % become the mask token, 10 % a random token, 10 % stay -- and only they keep a
    label (the others get -100). Seeded, so the masks are reproducible.

    Call it on a list of ``{"input_ids": [...]}`` to get ``input_ids``, ``attention_mask`` and
    ``labels`` ``[B, L]``.

    Taught in notebook 09, section 8 (Two other ways to distil a language model).
    """
    from transformers import DataCollatorForLanguageModeling

    if not 0.0 < mlm_probability < 1.0:
        raise ValueError(f"mlm_probability must be in (0, 1) (BERT used 0.15); got {mlm_probability!r}")
    return DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=mlm_probability, seed=seed)


def distilbert_mlm_loss(
    student_outputs,
    teacher_outputs,
    labels: torch.Tensor,
    attention_mask: torch.Tensor,
    temperature: float = 2.0,
    alpha_kd: float = 5.0,
    alpha_mlm: float = 2.0,
    alpha_cos: float = 1.0,
    kd_on_masked_only: bool = True,
) -> dict[str, torch.Tensor]:
    """DistilBERT's pre-training objective: ``alpha_kd * L_kd + alpha_mlm * L_mlm + alpha_cos * L_cos``.

    * ``L_kd``: soft targets, :func:`kd_lib.losses.kd_loss` (``T^2`` KL, averaged over tokens)
      on the masked positions (``labels != -100``), or on every real token with
      ``kd_on_masked_only=False`` (the default of DistilBERT's released script).
    * ``L_mlm``: the usual masked-LM cross-entropy at ``T = 1`` on the masked positions.
    * ``L_cos``: :func:`kd_lib.losses.hidden_state_loss` with ``kind="cosine"`` (mean of
      ``1 - cos``) between the last hidden states, over real tokens.

    The default weights ``5 : 2 : 1`` and ``T = 2`` are those of DistilBERT's training command.

    Args:
        student_outputs, teacher_outputs: masked-LM outputs with ``.logits`` ``[B, L, V]`` and
            ``.hidden_states`` (run the models with ``output_hidden_states=True``).
        labels: ``[B, L]``, the original token at masked positions and -100 elsewhere.
        attention_mask: ``[B, L]``, 1 on real tokens.

    Returns:
        ``{"loss", "kd", "mlm", "cos"}``, 0-dim tensors; ``"loss"`` is the weighted sum.

    Taught in notebook 09, section 8 (Two other ways to distil a language model).
    """
    temperature = check_temperature(temperature)
    for name, weight in (("alpha_kd", alpha_kd), ("alpha_mlm", alpha_mlm), ("alpha_cos", alpha_cos)):
        if not (isinstance(weight, int | float) and math.isfinite(weight) and weight >= 0):
            raise ValueError(f"{name} must be a finite weight >= 0; got {weight!r}")
    s_logits, t_logits = student_outputs.logits, teacher_outputs.logits
    kd_mask = labels != IGNORE_INDEX if kd_on_masked_only else attention_mask.bool()
    parts = {
        "kd": kd_loss(s_logits, t_logits, temperature, mask=kd_mask),
        "mlm": F.cross_entropy(s_logits.reshape(-1, s_logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX),
        "cos": hidden_state_loss(student_outputs.hidden_states[-1], teacher_outputs.hidden_states[-1], attention_mask,
                                 kind="cosine"),
    }
    parts["loss"] = alpha_kd * parts["kd"] + alpha_mlm * parts["mlm"] + alpha_cos * parts["cos"]
    return parts


_MLM_HEAD_MAP = {  # BertForMaskedLM -> DistilBertForMaskedLM
    "cls.predictions.transform.dense": "vocab_transform",
    "cls.predictions.transform.LayerNorm": "vocab_layer_norm",
    "cls.predictions.decoder": "vocab_projector",
}


def distilbert_mlm_from_bert(teacher: nn.Module, layers: Sequence[int] | None = None):
    """A ``DistilBertForMaskedLM`` student built from a ``BertForMaskedLM`` teacher, as DistilBERT was.

    The encoder is mapped with :func:`kd_lib.students.bert_to_distilbert_state_dict` (every
    other layer by default); the masked-LM head (transform, LayerNorm, output projection and
    its bias) is copied as is, so a student with *all* the teacher's layers computes the
    teacher's masked-LM logits for single-segment input.

    Taught in notebook 09, section 8 (Two other ways to distil a language model).
    """
    from transformers import BertForMaskedLM, DistilBertForMaskedLM

    if not isinstance(teacher, BertForMaskedLM):
        raise ValueError(f"teacher must be a BertForMaskedLM; got {type(teacher).__name__}")
    config, layers = distilbert_config(teacher.config, layers, tie_word_embeddings=teacher.config.tie_word_embeddings)
    student = DistilBertForMaskedLM(config)
    teacher_state = teacher.state_dict()
    bert_state = {k.removeprefix("bert."): v for k, v in teacher_state.items() if k.startswith("bert.")}
    state = bert_to_distilbert_state_dict(bert_state, layers)
    for bert_name, distil_name in _MLM_HEAD_MAP.items():
        for kind in ("weight", "bias"):
            state[f"{distil_name}.{kind}"] = teacher_state[f"{bert_name}.{kind}"]
    missing, unexpected = student.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=False)
    if unexpected or missing:
        raise RuntimeError(f"weight mapping incomplete: missing {missing}, unexpected {unexpected}")
    return student
