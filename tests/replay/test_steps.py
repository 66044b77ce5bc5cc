"""Prepared replay steps: the inlined loop of ``Interpreter.run_steps`` and the general
path (``run_op``) give the recorded values bit for bit, under every grad setting, and a
failure in the inlined loop names the op and the line that ran it, as the general path
does.

The model uses every shape of argument template the steps sort apart: flat with op and
parameter references, a parameter as a keyword (layer_norm's weight), constant tuples,
a list of tensors (torch.cat), a multi-output call (split) and ops recorded under
``torch.no_grad()``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lens as tl
from lens.errors import ReplayError
from lens.replay.interpreter import Interpreter
from lens.replay.steps import GUARDED, NO_GRAD, PLAIN, prepare, prepare_all


class _Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.ln = nn.LayerNorm(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        a, b = h.split(3, dim=-1)
        h = torch.cat([b, a], dim=-1).view(2, 2, 6).reshape((4, 6))
        h = F.layer_norm(h, (6,), weight=self.ln.weight, bias=self.ln.bias)
        with torch.no_grad():
            scale = h.abs().amax()
        return torch.tanh(h) / scale


def _by_hand(m: _Mixed, x: torch.Tensor) -> torch.Tensor:
    """The same forward written out again (no lens): the ground truth."""
    h = x @ m.fc.weight.T + m.fc.bias
    h = torch.cat([h[:, 3:], h[:, :3]], dim=-1)
    h = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True)
                                                    + m.ln.eps)
    h = h * m.ln.weight + m.ln.bias
    return torch.tanh(h) / h.abs().amax()


def _trace(**kw: object) -> tl.Trace:
    torch.manual_seed(0)
    m = _Mixed()
    return tl.trace(m, torch.randn(4, 6), intervention_ready=True, **kw)


@pytest.mark.parametrize("grad", [False, True])
def test_inline_and_general_paths_give_the_recorded_values(grad: bool) -> None:
    tr = _trace()
    ops = list(tr.ops)
    with torch.set_grad_enabled(grad):
        fast = Interpreter(tr).run(ops)
        slow = Interpreter(tr)
        for op in ops:
            slow.env[op.call_index] = slow.run_op(op)
    for op in ops:
        assert torch.equal(fast[op.call_index], op.out), op.label
        assert torch.equal(slow.env[op.call_index], op.out), op.label
    amax, tanh = (next(op.call_index for op in ops if op.func_name == f) for f in ("amax", "tanh"))
    for env in (fast, slow.env):  # the op captured under no_grad runs under it again
        assert not env[amax].requires_grad
        assert env[tanh].requires_grad == grad


def test_replay_matches_a_hand_written_forward_after_an_edit() -> None:
    tr = _trace()
    torch.manual_seed(0)  # the traced model and input again
    m = _Mixed()
    x = torch.randn(4, 6)
    with torch.no_grad():
        m.fc.weight.mul_(-1.0)  # the edited model: the ground truth's route
        want = _by_hand(m, x)
        params = dict(tr.param_values)
        params["fc.weight"] = m.fc.weight
        env = Interpreter(tr, params=params).run(tr.ops)
    out = [op for op in tr.ops if op.is_output][0]
    torch.testing.assert_close(env[out.call_index], want, rtol=1e-5, atol=1e-6)
    assert not torch.equal(env[out.call_index], out.out)


def test_steps_sort_ops_by_what_they_need() -> None:
    tr = _trace()
    codes = {op.func_name: prepare(op.record).code for op in tr.ops if op.kind == "op"}
    assert codes["tanh"] == PLAIN
    assert codes["amax"] == NO_GRAD  # recorded under no_grad alone
    dropped = tl.trace(nn.Dropout(0.5).train(), torch.randn(3), intervention_ready=True)
    drop = [op for op in dropped.ops if op.kind == "op"][0]
    assert prepare(drop.record).code == GUARDED  # draws: replayed from its generator state
    split = [prepare(op.record) for op in tr.ops if op.func_name == "split"]
    assert len(split) == 2 and {s.out_index for s in split} == {(0,), (1,)}
    ln = prepare(next(op.record for op in tr.ops if op.func_name == "layer_norm"))
    assert dict(ln.kwparams) == {"weight": "ln.weight", "bias": "ln.bias"}
    assert not ln.nested  # (6,) is a constant, passed as it is
    cat = prepare(next(op.record for op in tr.ops if op.func_name == "cat"))
    assert cat.nested  # a list of tensors: walked on each call


def test_a_failure_in_the_inline_loop_names_the_op_and_its_line() -> None:
    tr = _trace(code_context=True)
    params = dict(tr.param_values)
    params["ln.weight"] = torch.ones(5)  # wrong size: layer_norm fails
    ln = next(op for op in tr.ops if op.func_name == "layer_norm")
    steps = prepare_all(tr.kept)
    for run in (lambda it: it.run(tr.ops), lambda it: it.run_steps(steps)):
        with pytest.raises(ReplayError) as err, torch.no_grad():
            run(Interpreter(tr, params=params))
        msg = str(err.value)
        assert f"Replaying {ln.label} (layer_norm) failed: RuntimeError" in msg
        assert "Recorded at " in msg and "test_steps.py" in msg and "in forward()" in msg


def test_a_subclass_value_is_honoured_by_run() -> None:
    tr = _trace()
    tanh = next(op for op in tr.ops if op.func_name == "tanh")
    parent = tanh.parent_idx[0]

    class Doubled(Interpreter):
        def value(self, call_index: int) -> torch.Tensor:
            v = super().value(call_index)
            return v * 2 if call_index == parent else v

    given = tr.op_at_call(parent).out.clone()
    with torch.no_grad():  # the value asked for is in the environment: asked all the same
        env = Doubled(tr, values={parent: given}).run([tanh])
    assert torch.equal(env[tanh.call_index], torch.tanh(given * 2))
