"""Writes through views reach their base: the graph follows storage, not tensor objects.

Ground truth comes from a separate torch function mode written here (no lens code): it
clones every tensor argument as the call sees it, and notes which storage elements each
in-place call writes. Against it:

- every parent's saved payload equals the argument value the op actually read;
- a reader of a tensor whose elements were written (through any view) after the tensor
  was made has the writing op as parent, directly or through a ``refresh`` op;
- saved buffer payloads keep the value read (copy on write), and a finished trace never
  changes when the model runs again.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

import lens as tl
from lens.capture.records import ParamRef, Ref
from lens.errors import ReplayError
from lens.replay.interpreter import Interpreter
from tests.models import cases, get

VIEW_CASES = [c.name for c in cases(include=("view_write",))]
_QUERY = {"dim", "size", "shape", "dtype", "device", "numel", "stride", "is_contiguous",
          "storage_offset", "data_ptr", "untyped_storage", "_version", "__len__",
          "is_floating_point", "requires_grad", "__get__", "__bool__", "element_size"}


def _name(func: Any) -> str:
    name = getattr(func, "__name__", "")
    return getattr(getattr(func, "__self__", None), "__name__", name) if name == "__get__" \
        else name


def _elements(t: Tensor) -> set[int]:
    """Storage offsets of ``t``'s elements."""
    n = t.storage_offset() + sum((s - 1) * st for s, st in zip(t.shape, t.stride(),
                                                               strict=True)) + 1
    pos = torch.arange(max(n, 1)).as_strided(t.shape, t.stride(), t.storage_offset())
    return set(pos.reshape(-1).tolist())


class Witness(TorchFunctionMode):
    """Per tensor-returning call: its name, cloned tensor args, and for each arg the calls
    that wrote into that arg's elements after the arg was made."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []
        self.born: dict[int, int] = {}  # id(tensor) -> call that made it
        self.writes: list[tuple[int, int, set[int]]] = []  # (call, storage, elements)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _name(func)
        if name in _QUERY:
            return func(*args, **kwargs)
        tensors = [a for a in args if isinstance(a, Tensor)]
        seen = [(a.clone(), self._writers(a)) for a in tensors]
        out = func(*args, **kwargs)
        inplace = name == "__setitem__" or (name.endswith("_") and not name.endswith("__"))
        if not isinstance(out, Tensor) and not inplace:
            return out
        i = len(self.calls)
        result = args[0] if out is None else out
        self.calls.append({"name": name, "args": seen, "out": result.detach().clone()})
        if inplace:
            t = args[0]
            self.writes.append((i, t.untyped_storage().data_ptr(), _elements(t)))
        self.born[id(result)] = i
        return out

    def _writers(self, t: Tensor) -> list[int]:
        since = self.born.get(id(t), -1)
        mine, key = _elements(t), t.untyped_storage().data_ptr()
        return [c for c, k, els in self.writes if c > since and k == key and els & mine]


def _witness(model: nn.Module, args: tuple[Any, ...]) -> Witness:
    w = Witness()
    with torch.no_grad(), w:
        model(*args)
    return w


def _model_calls(tr: Any) -> list[Any]:
    """The trace's records of model calls (refresh ops are lens's own), one per call."""
    seen, out = set(), []
    for r in tr.record_table:
        if r.kind == "op" and r.func_name != "refresh" and r.call_id not in seen:
            seen.add(r.call_id)
            out.append(r)
    return out


def _ancestors_via_refresh(tr: Any, ci: int) -> set[int]:
    rec = tr.record_table[ci]
    found = {ci}
    while rec.func_name == "refresh":
        found |= set(rec.parent_idx)
        rec = tr.record_table[rec.parent_idx[0]]
    return found


@pytest.mark.parametrize("name", VIEW_CASES)
def test_parents_hold_what_each_op_read_and_follow_the_last_write(name: str) -> None:
    model, args, _ = get(name).build()
    witness = _witness(model, tuple(a.clone() for a in args))
    with torch.no_grad():
        tr = tl.trace(model, *[a.clone() for a in args])
    recs = tr.record_table
    calls = _model_calls(tr)
    assert [r.func_name for r in calls] == [c["name"] for c in witness.calls]
    wrote_through_view = 0
    for rec, call in zip(calls, witness.calls, strict=True):
        slots = [a for a in rec.args if isinstance(a, (Ref, ParamRef))]
        assert len(slots) == len(call["args"]), rec.func_name
        for slot, (value, writers) in zip(slots, call["args"], strict=True):
            if isinstance(slot, ParamRef):
                assert not writers and torch.equal(tr.param_values[slot.name], value)
                continue
            ref = slot.op
            assert torch.equal(recs[ref].payload, value), (rec.func_name, recs[ref].func_name)
            if writers:  # written since it was made: the graph must pass through the write
                wrote_through_view += 1
                writer_ops = {calls[c].call_index for c in writers}
                assert writer_ops <= _ancestors_via_refresh(tr, ref), rec.func_name
        out = rec.payload if rec.out_index == () else None
        if out is not None:
            assert torch.equal(out, call["out"]), rec.func_name
    assert wrote_through_view >= 1
    assert any(r.func_name == "refresh" for r in recs)


def test_a_write_that_misses_a_view_leaves_its_readers_alone() -> None:
    def f(x: Tensor) -> Tensor:
        h = x * 1.0
        left, right = h[:2], h[4:]
        left.zero_()
        return right + 1.0

    tr = tl.trace(f, torch.randn(6, 3))
    add = next(op for op in tr.ops if op.type == "add")
    (parent,) = add.parents
    assert parent.func_name == "__getitem__"  # not a refresh: the rows never met
    assert torch.equal(add.out, tr.ops[0].out[4:] + 1.0)


def test_a_write_through_a_view_of_another_dtype_is_captured_but_not_replayed() -> None:
    def f(x: Tensor) -> Tensor:
        h = x * 1.0
        h.view(torch.int32)[0].zero_()
        return h * 2.0

    x = torch.randn(3, 4)
    tr = tl.trace(f, x)
    expected = x * 1.0
    expected[0] = 0.0
    assert torch.equal(tr.output, expected * 2.0)
    refresh = next(op for op in tr.ops if op.func_name == "refresh")
    with pytest.raises(ReplayError, match="another dtype"):
        Interpreter(tr).run_op(refresh)


def test_inference_mode_tensors_have_no_version_yet_views_still_reach_the_base() -> None:
    model, args, _ = get("view_slice_zero").build()
    with torch.inference_mode():
        ref = model(*args)
        tr = tl.trace(model, *args)
    assert torch.equal(tr.output, ref)
    assert any(op.func_name == "refresh" for op in tr.ops)


def test_an_input_written_in_place_keeps_the_value_it_was_given() -> None:
    model, (x,), _ = get("input_incremented").build()
    original = x.clone()
    tr = tl.trace(model, x)
    assert torch.equal(x, original + 1.0)  # the model's own effect on the caller's tensor
    assert torch.equal(tr["input_1"].out, original)
    x.add_(100.0)  # the caller changes the tensor again: the finished trace does not
    assert torch.equal(tr["input_1"].out, original)
    add = next(op for op in tr.ops if op.func_name == "add_")
    assert torch.equal(add.out, original + 1.0)


def test_running_stats_payloads_are_the_values_read_and_never_change_afterwards() -> None:
    model, (x,), _ = get("bn_cnn_train").build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tr = tl.trace(model, x, keep_orphans=True)  # the step counter's add_ is an orphan
    bufs = {op.address: op for op in tr.ops if op.kind == "buffer"}
    assert {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"} <= set(bufs)
    for address, op in bufs.items():
        assert torch.equal(op.out, before[address]), address
    count = next(op for op in tr.ops if op.func_name == "add_")
    assert torch.equal(count.out, before["bn.num_batches_tracked"] + 1)
    bn = next(op for op in tr.ops if op.func_name == "batch_norm")
    assert not torch.equal(model.bn.running_mean, before["bn.running_mean"])  # it trained
    snapshot = [(op.label, op.out.clone()) for op in tr.ops if op.payload is not None]
    for _ in range(2):
        model(torch.randn(4, 3, 6, 6))  # runs again in train mode: buffers move on
    for label, value in snapshot:
        assert torch.equal(tr[label].out, value), label
    # and re-executing batch_norm from the trace writes into copies, never into the model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    again = Interpreter(tr).call_function(bn)
    assert torch.equal(again, bn.out)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    for label, value in snapshot:
        assert torch.equal(tr[label].out, value), label


def test_out_argument_writes_are_followed_and_copied_on_write() -> None:
    def f(x: Tensor) -> Tensor:
        buf = x * 2.0
        keep = buf[0]
        torch.mul(x, 3.0, out=buf)
        return keep + buf

    x = torch.randn(2, 3)
    tr = tl.trace(f, x)
    assert torch.equal(tr.output, (x * 3.0)[0] + x * 3.0)
    getitem = next(op for op in tr.ops if op.func_name == "__getitem__")
    assert torch.equal(getitem.out, (x * 2.0)[0])  # copied before the out= write
    add = next(op for op in tr.ops if op.type == "add")
    assert [p.func_name for p in add.parents] == ["refresh", "mul"]
