"""DistillationTrainer: agrees with the course's loop, freezes the teacher, resumes exactly; planning helpers."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification, TrainerCallback

from kd_lib.data import EncodedDataset, load_task
from kd_lib.distill import kd_from_cache, kd_online
from kd_lib.losses import distillation_loss
from kd_lib.models import packaged_teacher_path
from kd_lib.trainer import (
    COMPLETE,
    DistillationTrainer,
    epoch_order,
    last_checkpoint,
    trainer_fit,
    training_arguments,
    training_memory_gb,
    training_time_s,
)
from kd_lib.training import ForwardNeeds, TrainSettings, fit, forward, predict_logits
from kd_lib.utils import quiet_hf

SETTINGS = TrainSettings(epochs=2, lr=1e-3, batch_size=16)


@pytest.fixture(scope="module")
def data():
    tokenizer = AutoTokenizer.from_pretrained(packaged_teacher_path())
    return EncodedDataset(load_task("sst2", limit={"train": 96}, seed=3)["train"], tokenizer, max_length=32)


@pytest.fixture(scope="module")
def logits(data):
    return torch.randn(len(data), 2, generator=torch.Generator().manual_seed(5)) * 3


def tiny(seed: int = 0, dropout: float = 0.0, width: int = 32) -> DistilBertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = DistilBertConfig(dim=width, n_layers=2, n_heads=2, hidden_dim=2 * width, max_position_embeddings=64,
                           num_labels=2, dropout=dropout, attention_dropout=dropout, seq_classif_dropout=dropout)
    return DistilBertForSequenceClassification(cfg)


def max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters(), strict=True))


def trainer(model, tmp_path, data, **kwargs) -> DistillationTrainer:
    args = training_arguments(SETTINGS, tmp_path / "trainer", seed=1, progress=False)
    with quiet_hf():
        return DistillationTrainer(model, args, train_dataset=data, data_collator=data.collate, **kwargs)


def test_fused_adamw_reaches_the_trainer(data, tmp_path):
    for fused in (False, True):
        args = training_arguments(TrainSettings(fused_adamw=fused), tmp_path / "trainer", progress=False)
        assert args.optim == ("adamw_torch_fused" if fused else "adamw_torch")
        with quiet_hf():
            hf = DistillationTrainer(tiny(), args, teacher_logits=torch.zeros(len(data), 2), train_dataset=data,
                                     data_collator=data.collate)
        assert bool(hf.create_optimizer().defaults["fused"]) is fused


def test_epoch_order_is_the_loops_shuffle(data):
    for seed, epoch in ((1, 0), (1, 1), (7, 3)):
        rows = [r for b in data.loader(16, shuffle=True, seed=seed * 1000 + epoch) for r in b["row"].tolist()]
        assert rows == epoch_order(len(data), seed, epoch)
    assert epoch_order(len(data), 1, 0) != epoch_order(len(data), 1, 1)


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_trainer_and_loop_train_the_same_student(data, logits, tmp_path, grad_accum):
    """Same data order, optimizer, schedule, no dropout: the same weights to 1e-5 (float rounding)."""
    settings = TrainSettings(epochs=2, lr=1e-3, batch_size=16, grad_accum=grad_accum)
    loop, hf = tiny(), tiny()
    loop_losses = fit(loop, data, kd_from_cache(logits, 2.0, 0.5), settings, seed=1, progress=False)
    with quiet_hf():
        hf_losses = trainer_fit(hf, data, settings, output_dir=tmp_path, teacher_logits=logits, seed=1, progress=False)
    assert max_diff(loop, tiny()) > 3e-3, "training moved the weights (by about lr x steps)"
    assert max_diff(loop, hf) < 1e-5
    # 96 examples = 6 full batches: the loop's per-example mean equals the Trainer's per-step mean
    assert hf_losses == pytest.approx(loop_losses, rel=1e-5)


def test_grad_accumulation_matches_one_big_batch(data, logits):
    one, two = tiny(), tiny()
    fit(one, data, kd_from_cache(logits), SETTINGS, seed=1, progress=False)
    fit(two, data, kd_from_cache(logits), TrainSettings(epochs=2, lr=1e-3, batch_size=16, grad_accum=4),
        seed=1, progress=False)
    assert max_diff(one, two) < 1e-5


def test_live_teacher_is_frozen_and_gives_the_cached_result(data, tmp_path):
    teacher = tiny(seed=3)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cached = predict_logits(teacher, data)
    live_student, cached_student = tiny(), tiny()
    with quiet_hf():
        trainer_fit(cached_student, data, SETTINGS, output_dir=tmp_path / "c", teacher_logits=cached, seed=1,
                    progress=False)
        live = trainer(live_student, tmp_path, data, teacher=teacher)
        live.train()
    assert max_diff(live_student, cached_student) < 1e-5
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items()), "the teacher never changes"
    in_optimizer = {id(p) for group in live.optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in live_student.parameters()}
    assert not in_optimizer & {id(p) for p in teacher.parameters()}


def test_compute_loss_uses_the_model_it_is_given(data, logits, tmp_path):
    """Under DDP the Trainer hands compute_loss the wrapped model: that one must run, not self.model."""
    student = tiny()
    hf = trainer(student, tmp_path, data, teacher_logits=logits, temperature=3.0, alpha=0.7)

    class Wrapper(torch.nn.Module):  # stands in for DistributedDataParallel(student)
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, **kwargs):
            self.calls += 1
            return self.inner(**kwargs)

    wrapped = Wrapper(student).train()
    batch = data.collate([data[i] for i in (4, 9, 17)])
    loss, outputs = hf.compute_loss(wrapped, batch, return_outputs=True, num_items_in_batch=3)
    assert wrapped.calls == 1
    want = distillation_loss(outputs.logits, logits[[4, 9, 17]], batch["labels"], 3.0, 0.7)
    torch.testing.assert_close(loss, want)
    wrapped.eval()  # evaluation: the held-out cross-entropy (cached logits cover the training rows only)
    loss = hf.compute_loss(wrapped, batch)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(outputs.logits, batch["labels"]))


def test_cosine_term_with_a_live_teacher(data, tmp_path):
    teacher, student = tiny(seed=3), tiny()
    hf = trainer(student, tmp_path, data, teacher=teacher, cosine_weight=2.0)
    batch = data.collate([data[i] for i in range(5)])
    loss = hf.compute_loss(student.train(), batch)
    outputs = forward(student, batch, torch.device("cpu"), ForwardNeeds(hidden_states=True))
    torch.testing.assert_close(loss, kd_online(teacher, 2.0, 0.5, cosine_weight=2.0)(outputs, batch))
    assert loss > kd_online(teacher, 2.0, 0.5)(outputs, batch)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, r"exactly one of teacher= .* got neither"),
        ({"teacher": "T", "teacher_logits": "L"}, r"exactly one of teacher= .* got both"),
        ({"teacher_logits": "L", "temperature": 0}, r"temperature must be a finite number > 0"),
        ({"teacher_logits": "L", "alpha": 1.5}, r"alpha must be in the range \[0, 1\]"),
        ({"teacher_logits": "L", "cosine_weight": 1.0}, r"cosine_weight=1.0 needs a live teacher"),
        ({"teacher": "T", "cosine_weight": -1}, r"cosine_weight must be a number >= 0"),
        ({"teacher_logits": torch.zeros(5, 2)}, r"teacher_logits has 5 rows but train_dataset 96 items"),
        ({"teacher_logits": torch.zeros(96)}, r"teacher_logits must be a tensor of shape \[N, C\]"),
        ({"teacher": "student"}, r"teacher and student share parameters"),
    ],
)
def test_bad_arguments(data, logits, tmp_path, kwargs, message):
    student = tiny()
    named = {"T": tiny(seed=3), "L": logits, "student": student}
    kwargs = {k: named.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=message):
        trainer(student, tmp_path, data, **kwargs)


def test_remove_unused_columns_and_uneven_batches_are_refused(data, logits, tmp_path, monkeypatch):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match=r"remove_unused_columns=True\) would drop the batch's 'row'"):
        DistillationTrainer(tiny(), args, teacher_logits=logits, train_dataset=data, data_collator=data.collate)
    monkeypatch.setenv("WORLD_SIZE", "4")  # as under torchrun --nproc_per_node 4
    with pytest.raises(ValueError, match=r"--batch-size 6 must be a multiple of --grad-accum 3 x 4 process"):
        training_arguments(TrainSettings(batch_size=6, grad_accum=3), tmp_path)


class StopAfterFirstCheckpoint(TrainerCallback):
    """A crash right after a checkpoint was written (and marked complete)."""

    def on_save(self, args, state, control, **kwargs):
        raise KeyboardInterrupt


def test_trainer_resumes_from_a_step_checkpoint_exactly(data, logits, tmp_path):
    settings = TrainSettings(epochs=2, lr=1e-3, batch_size=16)
    reference = tiny(dropout=0.1)  # dropout on: the resumed run must also restore the random state
    with quiet_hf():
        trainer_fit(reference, data, settings, output_dir=tmp_path / "ref", teacher_logits=logits, seed=1,
                    progress=False)
        out = tmp_path / "run"
        with pytest.raises(KeyboardInterrupt):
            trainer_fit(tiny(dropout=0.1), data, settings, output_dir=out, teacher_logits=logits, seed=1,
                        progress=False, checkpoint_every=4, callbacks=[StopAfterFirstCheckpoint()])
        assert last_checkpoint(out).name == "checkpoint-4"  # mid-epoch: 6 steps per epoch
        (out / "checkpoint-5").mkdir()  # a checkpoint whose writing was cut short: never resumed from
        assert last_checkpoint(out).name == "checkpoint-4"
        resumed = tiny(seed=99, dropout=0.1)
        trainer_fit(resumed, data, settings, output_dir=out, teacher_logits=logits, seed=1, progress=False,
                    checkpoint_every=4)
    assert max_diff(resumed, reference) < 1e-6
    assert (out / "checkpoint-12" / COMPLETE).is_file()


def test_a_damaged_trainer_checkpoint_is_skipped_for_the_one_before(data, logits, tmp_path, capsys):
    settings = TrainSettings(epochs=1, lr=1e-3, batch_size=16)
    out = tmp_path / "run"
    with quiet_hf():
        trainer_fit(tiny(), data, settings, output_dir=out, teacher_logits=logits, seed=1, progress=False,
                    checkpoint_every=2)
    kept = sorted(p.name for p in out.glob("checkpoint-*"))
    assert kept == ["checkpoint-4", "checkpoint-6"]  # the last two are kept
    weights = out / "checkpoint-6" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated, though the checkpoint was marked complete
    assert last_checkpoint(out).name == "checkpoint-4"
    assert "checkpoint-6 is damaged (model.safetensors cannot be read" in capsys.readouterr().err
    assert not (out / "checkpoint-6").exists()
    optimizer = out / "checkpoint-4" / "optimizer.pt"
    optimizer.write_bytes(b"not a zip archive")
    assert last_checkpoint(out) is None


def test_memory_estimate():
    got = training_memory_gb(100_000_000, layers=2, hidden=64, heads=4, batch=8, seq_len=16)
    assert got["weights"] == pytest.approx(0.4) and got["gradients"] == pytest.approx(0.4)
    assert got["optimizer"] == pytest.approx(0.8)
    per_layer = 16 * 8 * 64 * (34 + 5 * 4 * 16 / 64)  # bytes, 16-bit activations
    assert got["activations"] == pytest.approx(2 * per_layer / 1e9)
    assert got["total"] == pytest.approx(1.6 + 2 * per_layer / 1e9)
    frozen = training_memory_gb(100_000_000, layers=2, hidden=64, heads=4, batch=8, seq_len=16, trainable=False,
                                precision="fp32")
    assert frozen["gradients"] == frozen["optimizer"] == 0
    assert frozen["activations"] == pytest.approx(2 * per_layer / 1e9)  # fp32: twice, but one layer at a time
    with pytest.raises(ValueError, match="batch must be a positive int"):
        training_memory_gb(10, layers=1, hidden=8, heads=1, batch=0, seq_len=4)
    with pytest.raises(ValueError, match="precision must be fp32, bf16 or fp16"):
        training_memory_gb(10, layers=1, hidden=8, heads=1, batch=1, seq_len=4, precision="int8")


def test_time_estimate():
    # 1e6 tokens through 1e8 parameters: 6e14 FLOPs for training, at 1e14 FLOP/s: 6 s
    assert training_time_s(100_000_000, 1_000_000, flops_per_s=1e14) == pytest.approx(6.0)
    assert training_time_s(100_000_000, 1_000_000, flops_per_s=1e14, backward=False) == pytest.approx(2.0)
    eight = training_time_s(100_000_000, 1_000_000, flops_per_s=1e14, processes=8, scaling_efficiency=0.75)
    assert eight == pytest.approx(1.0)
    with_attention = training_time_s(0, 10, flops_per_s=1.0, layers=2, hidden=4, seq_len=8, backward=False)
    assert with_attention == pytest.approx(4 * 2 * 8 * 4 * 10)
    with pytest.raises(ValueError, match="scaling_efficiency"):
        training_time_s(1, 1, flops_per_s=1.0, processes=2, scaling_efficiency=1.5)
