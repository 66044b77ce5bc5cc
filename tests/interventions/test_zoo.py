"""Every zoo model (bench excluded), bit for bit on CPU:

- a live edit of a module output equals the same edit made with register_forward_hook,
  and of a function call equals the same edit made by an independent torch function mode;
- fork().intervene().replay() == rerun == live, and the source trace is unchanged;
- patching every site of the clean run into the corrupted run reproduces the clean
  output; patching sites with their own values reproduces the original output.

Actions rotate over the models so that each is exercised on several of them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
import torch

import lens as tl
import lens.interventions as li
from tests.interventions._truth import run_with_call_edit, run_with_hook
from tests.interventions._zoo import (
    IDS,
    ZOO,
    capture,
    corrupt,
    editable,
    function_site,
    module_site,
    same,
    setup,
    severing,
)

Maker = Callable[[torch.Tensor], li.Action]


def _dirs(v: torch.Tensor, k: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(v.shape[-1] + k)
    return torch.randn(k, v.shape[-1], generator=g).squeeze(0)


# Actions that need only the value: checkable against hand-made edits.
VALUE_ACTIONS: list[Maker] = [
    lambda v: li.zero_ablate().at[..., 0],
    lambda v: li.scale(0.5),
    lambda v: li.clamp(min=-0.1, max=0.2),
    lambda v: li.steer(_dirs(v), alpha=0.7),
    lambda v: li.project_off(_dirs(v)),
    lambda v: li.project_onto(_dirs(v, 2) if v.shape[-1] > 1 else _dirs(v)),
    lambda v: li.mean_ablate(over=0),
    lambda v: li.replace_with(0.25).at[:1],
    lambda v: li.swap_with(torch.randn(v.shape, generator=torch.Generator().manual_seed(9))),
    lambda v: li.zero_ablate(),
    lambda v: li.replace_with(lambda t: t.flip(-1)),
    lambda v: li.action(lambda t, op: t * t),
]

# Actions that read another trace or the op (checked as replay == rerun == live).
CONTEXT_ACTIONS: list[Callable[[Any], li.Action]] = [
    lambda other: li.patch_from(other),
    lambda other: li.mean_ablate(source=other),
    lambda other: li.resample_ablate(other, seed=3),
    lambda other: li.swap_with(other),
    lambda other: li.noise(0.3, seed=1),
    lambda other: li.patch_from(other).at[..., :1],
]


@functools.cache
def _setup(name: str) -> tuple[Any, ...]:
    case = next(c for c in ZOO if c.name == name)
    model, args, kwargs = setup(case)
    src = capture(model, args, kwargs)
    cargs, ckw = corrupt(args, kwargs)
    bad = capture(model, cargs, ckw)
    return model, args, kwargs, src, cargs, ckw, bad


def _has_modules(src: Any) -> bool:
    return bool(src.module_calls)


@pytest.mark.parametrize("i", range(len(ZOO)), ids=IDS)
def test_live_edits_equal_hand_made_edits(i: int) -> None:
    model, args, kwargs, src, *_ = _setup(ZOO[i].name)
    if _has_modules(src):
        key, address, n, out = module_site(src)
        act = VALUE_ACTIONS[i % len(VALUE_ACTIONS)](out.out)
        call = next(c for c in src.module_calls if c.key == key)
        if len({src.op_at_call(j).shape[-1:] for j in call.output_ops}) > 1:
            act = li.scale(0.5)  # outputs of several widths: a direction fits only one
        expected = run_with_hook(model, args, kwargs, address, lambda v: act(v), call=n)
        torch.manual_seed(0)
        live = tl.trace(model, *args, input_kwargs=kwargs, save=False,
                        intervene=li.when(key, act))
        assert same(live.output, expected), (key, act)
    op, name, k = function_site(src)
    act = VALUE_ACTIONS[(i + 5) % len(VALUE_ACTIONS)](op.out)
    expected = run_with_call_edit(model, args, kwargs, name, k, lambda v: act(v))
    torch.manual_seed(0)
    out = li.run(model, *args, input_kwargs=kwargs, intervene=li.when(op.label, act))
    assert same(out, expected), (op.label, act)


@pytest.mark.parametrize("i", range(len(ZOO)), ids=IDS)
def test_replay_equals_rerun_equals_live(i: int) -> None:
    model, args, kwargs, src, _, _, bad = _setup(ZOO[i].name)
    snapshot = [(op.payload, None if op.payload is None else op.payload.clone())
                for op in src.ops]
    op, _, _ = function_site(src, at=0.3)
    edits: list[tuple[Any, li.Action]] = [
        (op.label, CONTEXT_ACTIONS[i % len(CONTEXT_ACTIONS)](bad))]
    if _has_modules(src):
        key, _, _, out = module_site(src, at=0.7)
        edits.append((key, VALUE_ACTIONS[(i + 2) % len(VALUE_ACTIONS)](out.out)))
    for chosen in (edits[:1], edits):
        f = src.fork()
        for site, act in chosen:
            f.intervene(site, act)
        f.replay()
        torch.manual_seed(0)
        live = tl.trace(model, *args, input_kwargs=kwargs,
                        intervene=[li.when(s, a) for s, a in chosen])
        rerun = f.rerun(model, *args, input_kwargs=kwargs)
        assert same(f.output, live.output), chosen
        assert same(rerun.output, live.output), chosen
        fired = [o.label for o in f.ops if o.fired]
        assert fired == [o.label for o in live.ops if o.fired] == \
            [o.label for o in rerun.ops if o.fired]
    for op, (payload, value) in zip(src.ops, snapshot, strict=True):
        assert op.payload is payload and not op.fired
        assert value is None or same(op.payload, value), op.label


@pytest.mark.parametrize("i", range(len(ZOO)), ids=IDS)
def test_patching_reproduces_the_patched_run(i: int) -> None:
    model, args, kwargs, src, cargs, ckw, bad = _setup(ZOO[i].name)
    everything = editable(bad)
    f = bad.fork().intervene(everything, li.patch_from(src)).replay()
    assert same(f.output, src.output)
    torch.manual_seed(0)
    live = li.run(model, *cargs, input_kwargs=ckw,
                  intervene=li.when(everything, li.patch_from(src)))
    assert same(live, src.output)
    cut = severing(src)
    sites = [op.label for op in src.ops if op.kind == "op" and op.call_index not in cut
             ][:: max(1, len(src.ops) // 6)]
    for site in sites:  # a site patched with its own value changes nothing
        g = src.fork().intervene(site, li.patch_from(src)).replay()
        assert same(g.output, src.output), site


MODULE_SPLICE = [c for c in ZOO if c.name in (
    "mha", "tiny_transformer_2block", "alexnet_small", "identity_module", "gpt2_tiny",
    "resnet_block", "vit_tiny")]


@pytest.mark.parametrize("case", MODULE_SPLICE, ids=[c.name for c in MODULE_SPLICE])
def test_splice_module_equals_a_hook_running_the_replacement(case: Any) -> None:
    model, args, kwargs, src, *_ = _setup(case.name)
    call = next(c for c in src.module_calls if len(c.input_ops) == 1 and len(c.output_ops) == 1
                and src.op_at_call(c.output_ops[0]) is not None
                and src.op_at_call(c.output_ops[0]).shape == src.op_at_call(c.input_ops[0]).shape
                and src.op_at_call(c.output_ops[0]).dtype == torch.float32)
    module = model.get_submodule(call.address)
    seen = []
    handle = module.register_forward_hook(
        lambda m, inp, out: seen.append(1) or (torch.tanh(inp[0]) if len(seen) == call.call_num
                                               else None))
    try:
        torch.manual_seed(0)
        expected = model(*args, **kwargs)
    finally:
        handle.remove()
    torch.manual_seed(0)
    out = li.run(model, *args, input_kwargs=kwargs,
                 intervene=li.when(call.key, li.splice_module(torch.tanh, on="inputs")))
    assert same(out, expected)
    f = src.fork().intervene(call.key, li.splice_module(torch.tanh, on="inputs")).replay()
    assert same(f.output, expected)
