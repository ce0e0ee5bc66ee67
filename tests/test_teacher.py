"""The fine-tuned teacher: trained once per recipe, cached under the recipe's hash, resumed after a crash."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import kd_lib.teacher as teacher_module
import kd_lib.training as training
from kd_lib.cache import RECORD
from kd_lib.teacher import TeacherRecipe, finetuned_teacher, recipe_key


def _recipe(folder, **overrides) -> TeacherRecipe:
    values = {"teacher": str(folder), "train_limit": 64, "epochs": 1, "lr": 1e-3, "batch_size": 16,
              "max_length": 32, **overrides}
    return TeacherRecipe(**values)


def _same_weights(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_fine_tuned_once_then_loaded_from_the_cache(tiny_teacher, tmp_path, monkeypatch):
    recipe = _recipe(tiny_teacher)
    model, _, info = finetuned_teacher(recipe, progress=False, cache_root=tmp_path)
    folder = tmp_path / "teachers" / f"sst2-{recipe_key(recipe)}"
    assert not info["from_cache"] and info["folder"] == str(folder) and not model.training
    assert info["train_examples"] == 64 and info["eval_split"] == "validation" and 0 <= info["accuracy"] <= 1
    assert json.loads((folder / RECORD).read_text())["recipe"]["lr"] == 1e-3
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert not (tmp_path / "teachers" / f"{folder.name}.partial").exists()

    monkeypatch.setattr(teacher_module, "fit", lambda *a, **k: pytest.fail("a cached teacher is not trained again"))
    again, _, info = finetuned_teacher(recipe, progress=False, cache_root=tmp_path)
    assert info["from_cache"] and _same_weights(again, model) and not again.training


def test_the_key_is_the_recipe_and_the_starting_weights(tiny_teacher, tmp_path):
    recipe = _recipe(tiny_teacher)
    key = recipe_key(recipe)
    assert key == recipe_key(_recipe(tiny_teacher))
    assert recipe_key(replace(recipe, lr=5e-4)) != recipe_key(recipe)
    assert recipe_key(replace(recipe, seed=1)) != recipe_key(recipe)
    weights = tiny_teacher / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # other starting weights in the same folder: another teacher
    weights.write_bytes(bytes(data))
    assert recipe_key(_recipe(tiny_teacher)) != key
    with pytest.raises(ValueError, match="unknown task 'imdb'"):
        TeacherRecipe(task="imdb")


def test_a_fine_tuned_folder_is_used_as_it_is(tiny_teacher, tmp_path):
    model, _, info = finetuned_teacher(_recipe(tiny_teacher), progress=False, cache_root=tmp_path / "a")
    again, _, info_again = finetuned_teacher(_recipe(info["folder"]), progress=False, cache_root=tmp_path / "b")
    assert info_again["from_cache"] and info_again["folder"] == info["folder"] and _same_weights(again, model)
    assert not (tmp_path / "b").exists(), "nothing was fine-tuned or cached again"


def test_an_interrupted_fine_tuning_resumes_to_the_same_teacher(tiny_teacher, tmp_path, monkeypatch):
    recipe = _recipe(tiny_teacher, epochs=2)
    reference, _, _ = finetuned_teacher(recipe, progress=False, cache_root=tmp_path / "reference")
    real_epoch, calls = training.train_epoch, []

    def die_in_second_epoch(*args, **kwargs):
        calls.append(kwargs["epoch"])
        if kwargs["epoch"] == 1 and len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(training, "train_epoch", die_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        finetuned_teacher(recipe, progress=False, cache_root=tmp_path / "crashed")
    resumed, _, info = finetuned_teacher(recipe, progress=False, cache_root=tmp_path / "crashed")
    assert calls == [0, 1, 1], "the second attempt ran only the unfinished epoch"
    assert not info["from_cache"]
    for p, q in zip(resumed.state_dict().values(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_a_damaged_cached_teacher_is_discarded_and_fine_tuned_again(tiny_teacher, tmp_path, capsys):
    recipe = _recipe(tiny_teacher)
    first, _, info = finetuned_teacher(recipe, progress=False, cache_root=tmp_path)
    weights = Path(info["folder"]) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])  # truncated
    again, _, info = finetuned_teacher(recipe, progress=False, cache_root=tmp_path)
    assert not info["from_cache"] and _same_weights(again, first)  # the same recipe gives the same teacher
    assert "is damaged (model.safetensors does not match the sha256" in capsys.readouterr().err


def test_a_damaged_fine_tuned_teacher_folder_is_refused(tiny_teacher, tmp_path):
    from kd_lib.models import TeacherIntegrityError

    _, _, info = finetuned_teacher(_recipe(tiny_teacher), progress=False, cache_root=tmp_path)
    (Path(info["folder"]) / "config.json").write_text("{}")
    with pytest.raises(TeacherIntegrityError, match=r"fine-tuned by the course but is damaged: config\.json does not"):
        finetuned_teacher(_recipe(info["folder"]), progress=False, cache_root=tmp_path / "other")


def test_fine_tuning_honours_checkpoint_every(tiny_teacher, tmp_path, monkeypatch):
    """64 sentences in batches of 16: with checkpoint_every=3, step checkpoints after steps 3 and 6 (mid-epoch)."""
    saved, real_save = [], training._Run.save

    def recording_save(self, path, epochs_done, steps_done=0, *args):
        saved.append((epochs_done, steps_done))
        return real_save(self, path, epochs_done, steps_done, *args)

    monkeypatch.setattr(training._Run, "save", recording_save)
    finetuned_teacher(_recipe(tiny_teacher, epochs=2), progress=False, cache_root=tmp_path, checkpoint_every=3)
    assert saved == [(0, 3), (1, 0), (1, 2), (2, 0)]  # steps 3, 4 (epoch end), 6, 8 (end)


def test_checkpoint_every_changes_nothing_in_the_result(tiny_teacher, tmp_path):
    """Step checkpoints are not part of the recipe: the same weights with and without them."""
    plain, _, _ = finetuned_teacher(_recipe(tiny_teacher, epochs=2), progress=False, cache_root=tmp_path / "a")
    stepped, _, _ = finetuned_teacher(_recipe(tiny_teacher, epochs=2), progress=False, cache_root=tmp_path / "b",
                                      checkpoint_every=3)
    assert _same_weights(plain, stepped)
