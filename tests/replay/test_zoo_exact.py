"""Every zoo model, in eval and in train mode (``tl.validate`` on the same grid is in
tests/capture/test_module_outputs.py):

- replaying an identity edit of the first floating op (which recomputes everything
  downstream, random ops and autocast regions included) reproduces the output bit for
  bit, and leaves the model's state alone;
- a real edit replayed equals the same edit made live;
- where an op cannot be replayed (torch.autograd.grad), replay refuses naming it.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

import lens as tl
import lens.interventions as li
from lens.errors import ReplayError
from tests.helpers import build, regular_cases
from tests.interventions._zoo import same

CASES = [(c, train) for c in regular_cases(irregular=True) for train in (False, True)]
IDS = [f"{c.name}-{'train' if train else 'eval'}" for c, train in CASES]


def state_of(model: nn.Module) -> dict[str, Any]:
    """Every tensor and plain attribute of every module, copied."""
    out: dict[str, Any] = {}
    for name, m in model.named_modules():
        for k, v in m.__dict__.items():
            if isinstance(v, torch.Tensor):
                out[f"{name}.{k}"] = v.detach().clone()
            elif k in ("_parameters", "_buffers"):
                for pk, pv in v.items():
                    out[f"{name}.{k}.{pk}"] = (id(pv), None if pv is None else pv.detach().clone())
            elif not k.startswith("_"):
                out[f"{name}.{k}"] = id(v)
    return out


def same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(same(a[k], b[k]) if not isinstance(a[k], int)
                                        else a[k] == b[k] for k in a)


def _first_floating(trace: Any) -> Any:
    """The first floating op an edit can be replayed at. Replay refuses, by design and with
    an error saying so, to edit a view that a later in-place write goes through (the live
    edit would sever the write from its base); such ops are checked to refuse, then skipped."""
    for op in trace.ops:
        if not (op.kind == "op" and op.out_index == () and op.mutates is None
                and op.dtype is not None and op.dtype.is_floating_point):
            continue
        try:
            trace.fork().intervene(op.label, li.scale(1.0)).replay()
        except ReplayError as e:
            if "Cannot replay this edit" in str(e):
                continue
        return op
    raise AssertionError("no floating op can be edited")


@pytest.mark.parametrize(("case", "train"), CASES, ids=IDS)
def test_validate_replay_and_live_agree(case: Any, train: bool) -> None:
    model, args, kwargs = build(case)
    model.train(train)
    # the forward of a 'stateful' model changes it: the live run starts from a copy
    live_model = copy.deepcopy(model) if case.has("stateful") else model
    torch.manual_seed(0)
    src = tl.trace(model, *copy.deepcopy(args), input_kwargs=copy.deepcopy(kwargs),
                   intervention_ready=True)
    start = state_of(model)
    site = _first_floating(src)
    ident = src.fork().intervene(site.label, li.replace_with(lambda t: t.clone()))
    grads = [op for op in src.ops if op.func is torch.autograd.grad and op.index > site.index]
    if grads:
        with pytest.raises(ReplayError, match=rf"{grads[0].label} is torch\.autograd\.grad"):
            ident.replay()
        return
    ident.replay()
    assert same(ident.output, src.output)
    assert sum(op.payload is not src.op_at_call(op.call_index).payload for op in ident.ops) > 1

    edit = li.scale(0.5)
    f = src.fork().intervene(site.label, edit).replay()
    assert same_state(start, state_of(model)), "replay changed the model"
    torch.manual_seed(0)
    live = li.run(live_model, *copy.deepcopy(args), input_kwargs=copy.deepcopy(kwargs),
                  intervene=li.when(site.label, edit, reference=src))
    assert same(f.output, live)

