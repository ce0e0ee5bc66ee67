"""The training loop, dynamic padding, cached-logit alignment, checkpoints and the logits cache."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

from kd_lib.cache import atomic_save_pretrained, load_logits, save_logits
from kd_lib.data import EncodedDataset, load_task
from kd_lib.distill import TrainSettings, accuracy, ce_loss, fit, kd_from_cache, predict_logits
from kd_lib.models import packaged_teacher_path


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(packaged_teacher_path())


@pytest.fixture(scope="module")
def small_data(tokenizer):
    split = load_task("sst2", limit={"train": 96}, seed=3)["train"]
    return EncodedDataset(split, tokenizer, max_length=32)


def tiny_student(seed: int = 0) -> DistilBertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64, num_labels=2)
    return DistilBertForSequenceClassification(cfg)


def test_dynamic_padding(small_data, tokenizer):
    batch = small_data.collate([small_data[0], small_data[1], small_data[2]])
    lengths = [len(small_data.input_ids[i]) for i in range(3)]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()
    assert batch["row"].tolist() == [0, 1, 2]
    assert all(len(ids) <= 32 for ids in small_data.input_ids)
    assert all(ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id for ids in small_data.input_ids)


def test_cached_logits_stay_aligned_under_shuffling(small_data):
    """Logits that encode each example's label must be found again for every shuffled batch."""
    labels = torch.tensor(small_data.labels)
    cached = torch.nn.functional.one_hot(labels, 2).float() * 10 + torch.arange(len(labels))[:, None] * 1e-3
    seen = []
    for batch in small_data.loader(batch_size=16, shuffle=True, seed=7):
        rows = batch["row"]
        looked_up = cached[rows]
        assert (looked_up.argmax(-1) == batch["labels"]).all()
        torch.testing.assert_close(looked_up[:, 0] % 1, (rows * 1e-3).float() % 1, rtol=0, atol=1e-5)
        seen += rows.tolist()
    assert sorted(seen) == list(range(len(small_data))) and seen != sorted(seen)  # shuffled, complete


def test_kd_from_cache_looks_up_by_row(small_data):
    cached = torch.randn(len(small_data), 2)
    loss_fn = kd_from_cache(cached, temperature=2.0, alpha=1.0)
    batch = small_data.collate([small_data[5], small_data[9]])

    class Out:
        logits = torch.zeros(2, 2)

    # student logits all zero: KD = T² · mean KL(softmax(cached/T) || uniform)
    p = torch.softmax(cached[[5, 9]] / 2.0, -1)
    want = 4.0 * (p * (p.log() - torch.log(torch.tensor(0.5)))).sum(-1).mean()
    torch.testing.assert_close(loss_fn(Out, batch), want)
    with pytest.raises(ValueError, match="temperature"):
        kd_from_cache(cached, temperature=0)


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
    import kd_lib.distill as distill

    calls = {"n": 0}
    real_epoch = distill.train_epoch

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    distill.train_epoch = crash_on_third
    try:
        with pytest.raises(KeyboardInterrupt):
            fit(crashed, small_data, ce_loss(), settings, seed=2, progress=False, checkpoint=str(ckpt2))
    finally:
        distill.train_epoch = real_epoch
    assert torch.load(ckpt2, weights_only=True)["epochs_done"] == 2
    resumed = tiny_student(seed=99)  # a fresh process would start from other weights
    history = fit(resumed, small_data, ce_loss(), settings, seed=2, progress=False, checkpoint=str(ckpt2))
    assert history == pytest.approx(full_history, rel=1e-6)
    for pa, pb in zip(resumed.parameters(), uninterrupted.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)


def test_logits_cache_roundtrip_and_mismatch(tmp_path):
    path = tmp_path / "logits.safetensors"
    logits, idx = torch.randn(5, 3), [10, 11, 15, 20, 21]
    save_logits(path, logits, idx, {"teacher": "a", "task": "sst2"})
    got, got_idx = load_logits(path, expected_idx=idx, expected_meta={"teacher": "a", "task": "sst2"})
    torch.testing.assert_close(got, logits)
    assert got_idx.tolist() == idx
    assert load_logits(path, expected_idx=[10, 11, 15, 20, 22]) is None  # other examples
    assert load_logits(path, expected_meta={"teacher": "b", "task": "sst2"}) is None  # other teacher
    path.write_bytes(b"garbage")
    assert load_logits(path) is None and not path.exists()  # corrupt: removed, recomputed
    assert load_logits(tmp_path / "absent.safetensors") is None
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        save_logits(path, torch.randn(4, 3), idx, {})


def test_atomic_save_pretrained_replaces_whole_folder(tmp_path):
    folder = tmp_path / "student"
    atomic_save_pretrained(folder, tiny_student(seed=1))
    first = (folder / "model.safetensors").read_bytes()
    atomic_save_pretrained(folder, tiny_student(seed=2))
    assert (folder / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]  # no temporary folders left
    loaded = DistilBertForSequenceClassification.from_pretrained(folder, use_safetensors=True)
    torch.testing.assert_close(loaded.classifier.weight, tiny_student(seed=2).classifier.weight)


def test_train_settings_validation():
    with pytest.raises(ValueError, match="epochs"):
        TrainSettings(epochs=0)
    with pytest.raises(ValueError, match="lr"):
        TrainSettings(lr=2.0)
    with pytest.raises(ValueError, match="batch_size"):
        TrainSettings(batch_size=0)
