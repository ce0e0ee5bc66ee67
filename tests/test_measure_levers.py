"""scripts/measure_levers.py: its fused-AdamW arm trains with the library's parameter groups, fused, nothing else."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from kd_lib import training
from kd_lib.training import TrainSettings, make_optimizer

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.fixture(scope="module")
def script():
    sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location("measure_levers", SCRIPTS / "measure_levers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 2))


def test_fused_adamw_keeps_the_groups_and_is_undone_afterwards(script):
    settings = TrainSettings(lr=3e-4, weight_decay=0.05)
    net = _net()
    plain, _ = make_optimizer(net, settings, 10)
    with script.fused_adamw():
        fused, _ = make_optimizer(net, settings, 10)
    again, _ = make_optimizer(net, settings, 10)
    assert fused.defaults["fused"] is True and not plain.defaults["fused"] and not again.defaults["fused"]
    assert training.adamw.__name__ == "adamw"
    for a, b in zip(plain.param_groups, fused.param_groups, strict=True):
        assert [id(p) for p in a["params"]] == [id(p) for p in b["params"]]
        assert (a["weight_decay"], a["lr"], a["betas"], a["eps"]) == (b["weight_decay"], b["lr"], b["betas"], b["eps"])
    assert [g["weight_decay"] for g in fused.param_groups] == [0.05, 0.0]  # no decay on biases and LayerNorm


def test_fused_and_plain_adamw_take_the_same_steps_up_to_rounding(script):
    nets = [_net(), _net()]
    x, y = torch.randn(16, 6), torch.randint(0, 2, (16,))
    settings = TrainSettings(lr=1e-2)
    optims = [make_optimizer(nets[0], settings, 5)[0]]
    with script.fused_adamw():
        optims.append(make_optimizer(nets[1], settings, 5)[0])
    for _ in range(5):
        for net, opt in zip(nets, optims, strict=True):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(nets[0][0].weight, _net()[0].weight)  # the steps did move the weights
