"""Random ops and modes, recorded per op at capture and re-entered per op by replay."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lens as tl
import lens.interventions as li
from lens.capture import rng


class _Noisy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 5)
        self.gen = torch.Generator().manual_seed(42)

    def forward(self, x):
        h = torch.sigmoid(self.fc(x))
        a = torch.bernoulli(h, generator=self.gen)  # an explicit generator
        b = F.dropout(h, 0.5, training=self.training)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            c = torch.mm(h, h.t())
        with torch.no_grad():
            d = h * 3
        return a + b + c.float().sum() + d


def _setup(train: bool = True) -> tuple[_Noisy, torch.Tensor]:
    torch.manual_seed(0)
    return _Noisy().train(train), torch.randn(4, 5)


def test_state_is_recorded_only_before_ops_that_draw() -> None:
    for train in (True, False):
        model, x = _setup(train)
        tr = tl.trace(model, x)
        drawn = {op.func_name for op in tr.ops if op.rng is not None}
        assert drawn == ({"bernoulli", "dropout"} if train else {"bernoulli"})
        bern = next(op for op in tr.ops if op.func_name == "bernoulli")
        assert bern.rng.generator is not None and bern.rng.cuda is None


def test_modes_are_recorded_per_op_and_only_when_not_default() -> None:
    model, x = _setup()
    tr = tl.trace(model, x)
    mm = next(op for op in tr.ops if op.func_name == "mm")
    assert mm.mode.autocast == (("cpu", torch.bfloat16),) and mm.dtype == torch.bfloat16
    mul = next(op for op in tr.ops if op.func_name == "mul")
    assert mul.mode is not None and not mul.mode.grad
    assert next(op for op in tr.ops if op.func_name == "linear").mode is None
    with torch.no_grad():
        quiet = tl.trace(model, x)
    assert all(op.mode is not None and not op.mode.grad for op in quiet.ops if op.kind == "op")


def test_replay_redraws_the_recorded_numbers_and_leaves_every_generator_alone() -> None:
    model, x = _setup()
    torch.manual_seed(3)
    src = tl.trace(model, x)
    gen_state, cpu_state = model.gen.get_state(), torch.get_rng_state()
    same = src.fork().intervene("linear_1_1", li.replace_with(lambda t: t.clone())).replay()
    assert torch.equal(same.output, src.output)
    edited = src.fork().intervene("linear_1_1", li.scale(0.5)).replay()
    assert torch.equal(model.gen.get_state(), gen_state)
    assert torch.equal(torch.get_rng_state(), cpu_state)
    # the same edit live, from the same generator states
    torch.manual_seed(3)
    model.gen.set_state(src_gen_state(src))
    live = li.run(model, x, intervene=li.when("linear_1_1", li.scale(0.5), reference=src))
    assert torch.equal(edited.output, live)


def src_gen_state(src: tl.Trace) -> torch.Tensor:
    return next(op.rng.generator[1] for op in src.ops if op.func_name == "bernoulli")


def test_replay_runs_each_op_under_its_recorded_mode_not_the_callers() -> None:
    model, x = _setup(train=False)
    src = tl.trace(model, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the caller's mode must not leak in
        f = src.fork().intervene("linear_1_1", li.replace_with(lambda t: t.clone())).replay()
    assert torch.equal(f.output, src.output)
    assert f["linear_1_1"].out.dtype == torch.float32
    assert f[next(op.label for op in src.ops if op.func_name == "mm")].out.dtype == torch.bfloat16


def test_validate_recomputes_random_ops_instead_of_exempting_them() -> None:
    model, x = _setup()
    report = tl.validate(model, x)
    assert report, str(report)
    assert not [e for e in report.exempt if "stochastic" in e[1]]
    tr = report.trace
    drop = next(op for op in tr.ops if op.func_name == "dropout")
    drop.payload = drop.payload.flip(0)  # a wrong saved value is caught
    from lens.validation import _check_op

    bad = type(report)("m")
    _check_op(tr, drop, bad, False, torch.Generator())
    assert not bad and bad.failures[0][0] == drop.label


@pytest.mark.parametrize(("name", "args", "kwargs", "expected"), [
    ("dropout", (None, 0.5, False), {}, False),
    ("dropout", (None,), {"p": 0.0}, False),
    ("dropout", (None,), {}, True),
    ("rrelu", (None,), {}, False),
    ("rrelu", (None,), {"training": True}, True),
    ("multi_head_attention_forward", (None,) * 10 + (0.1,), {"training": True}, True),
    ("multi_head_attention_forward", (None,) * 10 + (0.1,), {"training": False}, False),
    ("scaled_dot_product_attention", (None,) * 3, {"dropout_p": 0.2}, True),
    ("gumbel_softmax", (None,), {}, True),
])
def test_which_calls_draw(name: str, args: tuple, kwargs: dict, expected: bool) -> None:
    assert rng.may_draw(name)
    assert rng.draws(name, args, kwargs) is expected
