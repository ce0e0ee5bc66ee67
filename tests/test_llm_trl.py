"""TRL's GKDTrainer against the course's loop (kd_lib.llm_trl): the same batches give the same student."""

from __future__ import annotations

import copy

import pytest
import torch

from kd_lib.llm_losses import kd_from_teacher
from kd_lib.llm_students import small_llama
from kd_lib.llm_trl import ReplayData, gkd_config, gkd_examples, gkd_trainer, record_generations, shift_labels
from kd_lib.training import TrainSettings, fit

V, LR = 260, 1e-2


@pytest.fixture(scope="module")
def bpe():
    from kd_lib.data import load_austen
    from kd_lib.lm import train_bpe_tokenizer

    return train_bpe_tokenizer(load_austen()["train"]["text"][:1], V)


@pytest.fixture(scope="module")
def tiny():
    """A tiny student and teacher (seeds 0 and 1) and 4 prompts of 4 tokens with 8-token continuations."""
    g = torch.Generator().manual_seed(0)
    prompts, continuations = torch.randint(3, V, (4, 4), generator=g), torch.randint(3, V, (4, 8), generator=g)
    return (small_llama(V, layers=2, width=32, heads=4, kv_heads=2, seed=0),
            small_llama(V, layers=2, width=32, heads=4, kv_heads=2, seed=1), prompts, continuations)


def run_trl(student, teacher, tokenizer, prompts, continuations, tmp_path, **options):
    """Trains ``student`` in place for 2 steps; returns the batches each step trained on (course format),
    TRL's normaliser and loss per step, and the on-policy generations."""
    config = gkd_config(tmp_path, steps=2, lr=LR, batch_size=4, new_tokens=8, **options)
    trainer = gkd_trainer(student, teacher, tokenizer, prompts, continuations, config)
    seen = []
    compute_loss = trainer.compute_loss

    def spy(model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = compute_loss(model, inputs, return_outputs, num_items_in_batch)
        seen.append(({"input_ids": inputs["input_ids"].clone(), "attention_mask": inputs["attention_mask"].clone(),
                      "labels": shift_labels(inputs["labels"])}, num_items_in_batch, loss.detach().item()))
        return loss

    trainer.compute_loss = spy
    with record_generations() as generated:
        trainer.train()
    return seen, generated


def course(student, teacher, batches, beta, temperature=1.0):
    settings = TrainSettings(epochs=1, lr=LR, batch_size=4, warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=1.0)
    return fit(student, ReplayData(batches), kd_from_teacher(teacher, beta=beta, temperature=temperature), settings,
               progress=False)


def largest_gap(a, b) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("lmbda", [0.0, 1.0])
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_gkd_trainer_equals_the_course_loop(bpe, tiny, tmp_path, lmbda, beta):
    student, teacher, prompts, continuations = tiny
    by_trl, by_course = copy.deepcopy(student), copy.deepcopy(student)
    seen, generated = run_trl(by_trl, teacher, bpe, prompts, continuations, tmp_path, lmbda=lmbda, beta=beta)
    assert len(seen) == 2 and len(generated) == (2 if lmbda == 1 else 0)
    if lmbda == 1:  # the batches trained on are the student's own samples, the prompts kept
        for (batch, *_), (ids, _, _) in zip(seen, generated, strict=True):
            assert torch.equal(batch["input_ids"], ids) and sorted(ids[:, :4].tolist()) == sorted(prompts.tolist())
    else:  # the data set's rows, in the sampler's order
        rows = sorted(map(tuple, seen[0][0]["input_ids"].tolist()))
        assert rows == sorted(map(tuple, torch.cat([prompts, continuations], 1).tolist()))
    course(by_course, teacher, [batch for batch, *_ in seen], beta)
    assert largest_gap(student, by_course) > 1e-3  # both trained
    assert largest_gap(by_trl, by_course) < 1e-6


def test_gkd_trainers_temperature_only_samples(bpe, tiny, tmp_path):
    # GKDConfig(temperature=2) samples at T = 2 but computes the divergence at T = 1
    student, teacher, prompts, continuations = tiny
    by_trl = copy.deepcopy(student)
    seen, _ = run_trl(by_trl, teacher, bpe, prompts, continuations, tmp_path, lmbda=0.0, beta=0.0, temperature=2.0)
    batches = [batch for batch, *_ in seen]
    at_one, at_two = copy.deepcopy(student), copy.deepcopy(student)
    course(at_one, teacher, batches, 0.0, temperature=1.0)
    course(at_two, teacher, batches, 0.0, temperature=2.0)
    assert largest_gap(by_trl, at_one) < 1e-6
    assert largest_gap(by_trl, at_two) > 1e-4


def test_trl_divides_by_the_data_sets_token_count_not_the_generated_one(bpe, tiny, tmp_path, monkeypatch):
    # A generated continuation that stops early (EOS) has fewer labelled tokens than the data set's row, but
    # the Trainer counted num_items_in_batch on the data set's labels: TRL's loss is the course's mean times
    # (tokens generated / tokens in the data set).
    from kd_lib.llm_trl import import_gkd

    student, teacher, prompts, continuations = tiny
    _, GKDTrainer = import_gkd()

    def early_stop(model, inputs, generation_config):
        ids = torch.cat([inputs["prompts"], continuations], dim=1)
        mask = torch.ones_like(ids)
        mask[:2, 4 + 3:] = 0  # rows 0 and 1 end after 3 new tokens
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :4] = -100
        return ids, mask, labels

    monkeypatch.setattr(GKDTrainer, "generate_on_policy_outputs", staticmethod(early_stop))
    seen, _ = run_trl(copy.deepcopy(student), teacher, bpe, prompts, continuations, tmp_path, lmbda=1.0, beta=0.0)
    batch, num_items, trl_loss = seen[0]
    assert int(num_items) == 32 and int((batch["labels"] != -100).sum()) == 2 * 3 + 2 * 8
    with torch.no_grad():
        course_mean = kd_from_teacher(teacher)(student(input_ids=batch["input_ids"],
                                                       attention_mask=batch["attention_mask"]), batch).item()
    assert trl_loss == pytest.approx(course_mean * 22 / 32, rel=1e-5)


def test_gkd_examples_mask_the_prompt_and_shift_labels_matches_the_course():
    prompts, continuations = torch.tensor([[5, 6]]), torch.tensor([[7, 8, 9]])
    (row,) = gkd_examples(prompts, continuations)
    assert row["input_ids"] == [5, 6, 7, 8, 9] and row["labels"] == [-100, -100, 7, 8, 9]
    assert row["prompts"] == [5, 6] and row["prompt_attention_mask"] == [1, 1]
    assert shift_labels(torch.tensor([row["labels"]])).tolist() == [[-100, 7, 8, 9, -100]]


def test_replay_data_checks_its_batch_size():
    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3, dtype=torch.long),
             "labels": torch.zeros(2, 3, dtype=torch.long)}
    data = ReplayData([batch, batch])
    assert len(data.loader(2, shuffle=True, seed=5)) == 2
    with pytest.raises(ValueError, match="batch_size must be the replayed batches' size, 2"):
        data.loader(4)
    with pytest.raises(ValueError, match="non-empty"):
        ReplayData([])
