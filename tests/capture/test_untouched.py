"""Importing lens and tracing leave torch and the model exactly as they were."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest
import torch
from torch import nn

import lens as tl
from tests.helpers import build, leaves
from tests.models import get

_SNAPSHOT = r"""
import torch, torch.nn.functional as F, torch.nn as nn
def snap():
    out = {}
    for ns_name, ns in [("torch", torch), ("Tensor", torch.Tensor),
                        ("TensorBase", torch._C.TensorBase), ("F", F), ("Module", nn.Module)]:
        for k, v in list(vars(ns).items()):
            out[ns_name + "." + k] = v  # the objects themselves, compared by identity
    from torch.nn.modules import module as m
    out["global_hooks"] = (len(m._global_forward_hooks), len(m._global_forward_pre_hooks))
    out["mode"] = torch._C._is_torch_function_mode_enabled()
    out["mode_stack"] = len(torch.overrides._get_current_function_mode_stack())
    return out
before = snap()
import lens
after = snap()
changed = sorted(k for k in before if before[k] is not after.get(k) and before[k] != after.get(k))
changed += sorted(k for k in after if k not in before and not k.startswith("torch."))
print("CHANGED", changed)
"""


def test_importing_lens_changes_nothing_in_torch():
    res = subprocess.run([sys.executable, "-c", _SNAPSHOT], capture_output=True, text=True,
                         check=True, cwd=str(__import__("pathlib").Path(__file__).parents[2]))
    assert "CHANGED []" in res.stdout, res.stdout + res.stderr


_FIRST_USE = r"""
import sys
import torch, torch.nn.functional as F, torch.nn as nn

def snap():
    out = {}
    for ns_name, ns in [("torch", torch), ("Tensor", torch.Tensor), ("F", F),
                        ("Module", nn.Module)]:
        for k, v in list(vars(ns).items()):
            out[ns_name + "." + k] = v
    return out

def torch_modules():
    return {m for m in sys.modules if m == "torch" or m.startswith("torch.")}

import lens as tl
model = nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 2))
x = torch.randn(3, 4)
before, mods_before = snap(), torch_modules()
steps = {
    "trace": lambda: tl.trace(model, x),
    "trace_grads": lambda: tl.trace(model, x, save_grads=True),
    "run": lambda: tl.run(model, x, intervene=tl.when(tl.func("gelu"), tl.zero_ablate())),
    "record": lambda: tl.record(model, x).to_trace(),
    "replay": lambda: tl.trace(model, x, intervention_ready=True).fork()
        .intervene(tl.func("gelu"), tl.scale(2.0)).replay(),
}
for name, step in steps.items():
    step()
    after = snap()
    replaced = sorted(k for k in before if after.get(k) is not before[k])
    added = sorted(k for k in after if k not in before and not k.startswith("torch."))
    new_mods = sorted(torch_modules() - mods_before)
    print("STEP", name, "REPLACED", replaced, "ADDED", added,
          "DYNAMO", [m for m in new_mods if m.startswith("torch._dynamo")])
"""


def test_first_trace_run_record_and_replay_touch_nothing_in_torch():
    """A first trace (and tl.run, tl.record, a fork/replay) replaces no torch attribute
    and never imports torch._dynamo (whose import replaces torch.manual_seed)."""
    res = subprocess.run([sys.executable, "-c", _FIRST_USE], capture_output=True, text=True,
                         check=True, cwd=str(__import__("pathlib").Path(__file__).parents[2]))
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("STEP")]
    assert len(lines) == 5, res.stdout + res.stderr
    for line in lines:
        assert line.endswith("REPLACED [] ADDED [] DYNAMO []"), line


def _no_hooks(model: nn.Module) -> bool:
    """No hook left, and no module keeps the ``forward`` a capture wraps it with."""
    return all(not m._forward_hooks and not m._forward_pre_hooks
               and "forward" not in vars(m) for m in model.modules())


def _mode_stack() -> int:
    return len(torch.overrides._get_current_function_mode_stack())


@pytest.mark.parametrize("name", ["demo_network", "alexnet_small", "lstm", "gpt2_tiny"])
def test_trace_leaves_no_mode_no_hooks_and_same_outputs(name):
    model, args, kwargs = build(get(name))
    torch.manual_seed(0)
    before = [t.detach().clone() for t in leaves(model(*args, **kwargs))]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tl.trace(model, *args, input_kwargs=kwargs)
    assert _mode_stack() == 0
    assert _no_hooks(model)
    torch.manual_seed(0)
    after = leaves(model(*args, **kwargs))
    assert all(torch.equal(a.detach(), b) for a, b in zip(after, before, strict=True))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


class _Boom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x).relu()
        raise ValueError("model failure")
        return y


def test_forward_that_raises_leaves_nothing_behind_and_gets_a_note():
    model = _Boom()
    with pytest.raises(ValueError, match="model failure") as info:
        tl.trace(model, torch.randn(2, 3))
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "relu" in notes and "lens" in notes
    assert _mode_stack() == 0
    assert _no_hooks(model)
    assert not torch._C._is_torch_function_mode_enabled()
    assert gc.isenabled()  # capture pauses the cyclic collector and must restore it
