"""The training loop: settings and their checks, objectives and their needs, fit, checkpoints, prediction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kd_lib.distributed import Processes
from kd_lib.trainer import epoch_order
from kd_lib.training import (
    EpochStart,
    ForwardNeeds,
    LossFunction,
    Objective,
    Optimization,
    TrainSettings,
    accuracy,
    ce_loss,
    check_batch_split,
    check_precision,
    epoch_seed,
    fit,
    forward,
    freeze,
    make_optimizer,
    needs_of,
    predict_logits,
    train_epoch,
)
from tests.conftest import tiny_student


def test_predict_logits_is_in_dataset_order_and_eval_mode(small_data):
    model = tiny_student()
    model.train()
    logits = predict_logits(model, small_data, batch_size=10)
    assert logits.shape == (len(small_data), 2) and model.training  # mode restored
    model.eval()
    with torch.no_grad():
        one = model(input_ids=torch.tensor([small_data.input_ids[13]])).logits[0]
    torch.testing.assert_close(logits[13], one, atol=1e-5, rtol=0)
    assert 0 <= accuracy(logits, small_data.labels) <= 1
    with pytest.raises(ValueError, match="rows"):
        accuracy(logits, small_data.labels[:-1])


def test_fit_learns_and_is_deterministic(small_data):
    settings = TrainSettings(epochs=3, lr=1e-3, batch_size=16)
    a, b = tiny_student(), tiny_student()
    torch.manual_seed(0)
    hist_a = fit(a, small_data, ce_loss(), settings, seed=1, progress=False)
    torch.manual_seed(0)
    hist_b = fit(b, small_data, ce_loss(), settings, seed=1, progress=False)
    assert hist_a == hist_b and hist_a[-1] < hist_a[0]
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_fit_resumes_from_checkpoint_exactly(small_data, tmp_path):
    settings = TrainSettings(epochs=3, lr=1e-3, batch_size=16)
    torch.manual_seed(0)
    uninterrupted = tiny_student()
    full_history = fit(uninterrupted, small_data, ce_loss(), settings, seed=2, progress=False)

    ckpt2 = tmp_path / "ckpt2.pt"
    torch.manual_seed(0)
    crashed = tiny_student()
    import kd_lib.training as training

    calls = {"n": 0}
    real_epoch = training.train_epoch

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    training.train_epoch = crash_on_third
    try:
        with pytest.raises(KeyboardInterrupt):
            fit(crashed, small_data, ce_loss(), settings, seed=2, progress=False, checkpoint=str(ckpt2))
    finally:
        training.train_epoch = real_epoch
    assert torch.load(ckpt2, weights_only=True)["epochs_done"] == 2
    resumed = tiny_student(seed=99)  # a fresh process would start from other weights
    history = fit(resumed, small_data, ce_loss(), settings, seed=2, progress=False, checkpoint=str(ckpt2))
    assert history == pytest.approx(full_history, rel=1e-6)
    for pa, pb in zip(resumed.parameters(), uninterrupted.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)


def test_train_settings_validation():
    with pytest.raises(ValueError, match="epochs"):
        TrainSettings(epochs=0)
    with pytest.raises(ValueError, match="lr"):
        TrainSettings(lr=2.0)
    with pytest.raises(ValueError, match="batch_size"):
        TrainSettings(batch_size=0)
    with pytest.raises(ValueError, match="fused_adamw must be True or False; got 'yes'"):
        TrainSettings(fused_adamw="yes")


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 2))


def test_fused_adamw_has_the_same_groups_in_one_kernel():
    net = _net()
    plain, _ = make_optimizer(net, TrainSettings(lr=3e-4, weight_decay=0.05), 10)
    fused, _ = make_optimizer(net, TrainSettings(lr=3e-4, weight_decay=0.05, fused_adamw=True), 10)
    assert fused.defaults["fused"] is True and not plain.defaults["fused"]
    for a, b in zip(plain.param_groups, fused.param_groups, strict=True):
        assert [id(p) for p in a["params"]] == [id(p) for p in b["params"]]
        assert (a["weight_decay"], a["lr"], a["betas"], a["eps"]) == (b["weight_decay"], b["lr"], b["betas"], b["eps"])
    assert [g["weight_decay"] for g in fused.param_groups] == [0.05, 0.0]  # no decay on biases and LayerNorm


def test_fused_and_plain_adamw_take_the_same_steps_up_to_rounding():
    nets, x, y = [_net(), _net()], torch.randn(16, 6), torch.randint(0, 2, (16,))
    optims = [make_optimizer(net, TrainSettings(lr=1e-2, fused_adamw=fused), 5)[0]
              for net, fused in zip(nets, (False, True), strict=True)]
    for _ in range(5):
        for net, opt in zip(nets, optims, strict=True):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(nets[0][0].weight, _net()[0].weight)  # the steps did move the weights


def test_batch_split_and_precision_checks_name_the_options():
    assert check_batch_split(32, 2, 2) == 8
    with pytest.raises(ValueError, match=r"--batch-size 30 must be a multiple of --grad-accum 4 x 1 process"):
        check_batch_split(30, 4, 1)
    with pytest.raises(ValueError, match=r"batch-size 30 must be a multiple of --grad-accum 4"):
        TrainSettings(batch_size=30, grad_accum=4)
    assert check_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match=r"--bf16 \(mixed precision\) needs a CUDA GPU"):
        check_precision("bf16", "cpu")
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16"):
        check_precision("int8", "cpu")


def test_epoch_seed_gives_the_loop_and_the_trainer_one_order(small_data):
    assert epoch_seed(3, 2) == 3002 and epoch_seed(0, 1) != epoch_seed(1, 0)
    rows = [r for batch in small_data.loader(len(small_data), shuffle=True, seed=epoch_seed(5, 1))
            for r in batch["row"].tolist()]
    assert rows == epoch_order(len(small_data), seed=5, epoch=1)


def test_objectives_declare_what_they_need():
    assert needs_of(ce_loss()) == ForwardNeeds() and isinstance(ce_loss(), Objective)
    assert needs_of(lambda outputs, batch: outputs.logits.sum()) == ForwardNeeds()  # a plain function needs nothing
    wants_hidden = LossFunction(lambda outputs, batch: outputs.hidden_states[-1].mean(), ForwardNeeds(True, False))
    assert needs_of(wants_hidden).hidden_states and not needs_of(wants_hidden).attentions


def test_the_loop_asks_the_model_for_what_the_objective_needs(small_data):
    """An objective that reads hidden states gets them (the loop passes output_hidden_states=True)."""
    model, seen = tiny_student(), []

    def hidden_norm(outputs, batch):
        seen.append(len(outputs.hidden_states))
        return outputs.hidden_states[-1].pow(2).mean() + F.cross_entropy(outputs.logits, batch["labels"])

    fit(model, small_data, LossFunction(hidden_norm, ForwardNeeds(hidden_states=True)),
        TrainSettings(epochs=1, lr=1e-3, batch_size=32), progress=False)
    assert seen == [3, 3, 3]  # embeddings + 2 layers, for each of the 3 batches
    batch = small_data.collate([small_data[0], small_data[1]])
    assert forward(model, batch, "cpu").hidden_states is None
    assert len(forward(model, batch, "cpu", ForwardNeeds(hidden_states=True)).hidden_states) == 3


def test_freeze_makes_a_fixed_function():
    model = tiny_student().train()
    assert freeze(model) is model and not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_gradient_accumulation_matches_one_big_batch(small_data):
    """Two micro-batches of 16 weighted by their share give the gradient of the batch of 32 (no dropout)."""
    results = []
    for accum in (1, 2):
        model = tiny_student()
        model.config.dropout = model.config.attention_dropout = 0.0
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        settings = TrainSettings(epochs=1, lr=1e-3, batch_size=32, grad_accum=accum)
        optimizer, scheduler = make_optimizer(model, settings, steps_per_epoch=3)
        loss = train_epoch(model, small_data, ce_loss(), Optimization(optimizer, scheduler), settings, epoch=0,
                           seed=1, progress=False)
        results.append((loss, [p.detach().clone() for p in model.parameters()]))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_train_epoch_resumes_mid_epoch_with_the_same_batches(small_data):
    """Skipping the first 2 steps (start=EpochStart(2, ...)) trains on exactly the remaining batch."""
    settings = TrainSettings(epochs=1, lr=1e-3, batch_size=32)
    seen = []

    def recording(outputs, batch):
        seen.append(batch["row"].tolist())
        return F.cross_entropy(outputs.logits, batch["labels"])

    model = tiny_student()
    optimizer, scheduler = make_optimizer(model, settings, steps_per_epoch=3)
    mean = train_epoch(model, small_data, recording, Optimization(optimizer, scheduler), settings, epoch=4, seed=2,
                       start=EpochStart(steps_done=2, loss_sum=64.0, examples=64), progress=False)
    order = epoch_order(len(small_data), seed=2, epoch=4)
    assert seen == [order[64:]]
    assert mean > 64 / 96  # the carried sum (1.0 per example) is part of the epoch's mean
    with pytest.raises(ValueError, match="rank"):
        Processes(rank=2, world=2)


def test_accuracy_and_its_errors():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert accuracy(logits, [0, 1, 1]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="3 rows but labels 2"):
        accuracy(logits, [0, 1])


@pytest.mark.parametrize("damage", ["random bytes", "truncated", "another model"])
def test_a_damaged_checkpoint_is_discarded_and_training_starts_over(small_data, tmp_path, capsys, damage):
    """The run is not stuck: the damaged file is reported and removed, and the result is an uninterrupted run's."""
    settings = TrainSettings(epochs=2, lr=1e-3, batch_size=32)
    torch.manual_seed(0)
    reference = tiny_student()
    want = fit(reference, small_data, ce_loss(), settings, seed=3, progress=False)
    ckpt = tmp_path / "student.pt"
    if damage == "random bytes":
        ckpt.write_bytes(torch.randint(0, 256, (5000,), dtype=torch.uint8).numpy().tobytes())
    elif damage == "truncated":
        fit(tiny_student(), small_data, ce_loss(), TrainSettings(epochs=1, lr=1e-3, batch_size=32), seed=3,
            progress=False, checkpoint=str(ckpt))
        ckpt.write_bytes(ckpt.read_bytes()[:3000])
    else:  # a sound checkpoint of a different model
        other = torch.nn.Linear(3, 2)
        torch.save({"epochs_done": 1, "model": other.state_dict(), "optimizer": {}, "scheduler": {},
                    "history": [0.5]}, ckpt)
    torch.manual_seed(0)
    model = tiny_student()
    history = fit(model, small_data, ce_loss(), settings, seed=3, progress=False, checkpoint=str(ckpt))
    err = capsys.readouterr().err
    assert f"checkpoint {ckpt} is damaged" in err and "starts again from its first step" in err
    assert history == want
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)
