"""What the engine records: every op, once, with the right payloads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lens as tl
from tests.helpers import build
from tests.models import get


class _Ops(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.split(2, dim=1)
        c = torch.ones(x.shape[0], 2) * 3  # a factory call inside the model
        vals, idx = x.max(dim=1)
        d = a + b + c
        d[:, 0] = vals  # setitem: in place
        return d * idx.float().unsqueeze(1)


def test_multi_output_factory_and_setitem_are_recorded():
    x = torch.randn(3, 4)
    tr = tl.trace(_Ops(), x)
    types = [op.type for op in tr.ops]
    assert types.count("split") == 2 and types.count("max") == 2
    assert "ones" in types and "setitem" in types
    a, b = x.split(2, dim=1)
    splits = [op for op in tr.ops if op.type == "split"]
    assert torch.equal(splits[0].out, a) and torch.equal(splits[1].out, b)
    vals = [op for op in tr.ops if op.type == "max"]
    assert torch.equal(vals[0].out, x.max(dim=1).values)
    assert torch.equal(vals[1].out, x.max(dim=1).indices)
    add2 = [op for op in tr.ops if op.type == "add"][-1]
    setitem = tr["setitem_1"]
    # copy on write: the add's payload is its value before setitem overwrote column 0
    assert torch.equal(add2.out, a + b + 3)
    expected = a + b + 3
    expected[:, 0] = x.max(dim=1).values
    assert torch.equal(setitem.out, expected)
    assert setitem.parents[0] == add2


def test_inplace_ops_keep_values_at_the_time_they_ran():
    model, args, _ = build(get("inplace_ops"))
    (x,) = args
    tr = tl.trace(model, *args)
    report = tl.validate(model, *args)
    assert report, str(report)
    assert [op for op in tr.ops if op.mutates is not None], "the model must record in-place ops"
    # Ground truth: the model's forward written out of place, every stage kept.
    with torch.no_grad():
        h0 = model.fc(x)
        h1 = h0 + 1
        h2 = torch.relu(h1)
        h3 = h2.clone()
        h3[:, 0] = 0
        h4 = h3.masked_fill(h3 > 1.5, 1.5)
        z0 = torch.zeros(x.shape[0], 6)
        z1 = z0.clone()
        z1[:, 1:4] = h4[:, 1:4]
        z2 = z1 * 2
        z3 = z2 + h4
    expected = {"linear_1_1": h0, "add_1_2": h1, "relu_1_3": h2, "setitem_1_4": h3,
                "maskedfill_1_6": h4, "zeros_1_7": z0, "setitem_2_9": z1, "mul_1_10": z2,
                "add_2_11": z3}
    for label, value in expected.items():
        assert torch.equal(tr[label].out, value), f"{label} does not hold its value at the time"


def test_only_the_outermost_torch_call_is_an_op():
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(1, 3, 8)
    tr = tl.trace(mha, x, x, x)
    names = [op.func_name for op in tr.ops if op.kind == "op"]
    # two outputs (attention output and weights) of one call; nothing from inside it
    assert names.count("multi_head_attention_forward") == 2
    assert not {"linear", "softmax", "baddbmm", "bmm", "_in_projection_packed"} & set(names)
    ln = tl.trace(nn.LayerNorm(8), x)
    assert [op.func_name for op in ln.ops if op.kind == "op"] == ["layer_norm"]


def test_nested_dict_inputs_kwargs_and_outputs():
    model, args, kwargs = build(get("dict_io"))
    tr = tl.trace(model, *args, input_kwargs=kwargs)
    addresses = sorted(op.address for op in tr.ops if op.is_input)
    assert addresses == ["inputs.a", "inputs.b", "mask"]
    out = model(*args, **kwargs)
    outs = [op for op in tr.ops if op.is_output]
    assert len(outs) == 4
    assert torch.equal(outs[0].out, out["sum"])
    assert tr["input.inputs.a"].out is args[0]["a"]


def test_lstm_is_one_op_with_several_outputs():
    model, args, _ = build(get("lstm"))
    tr = tl.trace(model, *args)
    lstm_ops = [op for op in tr.ops if op.type == "lstm"]
    assert len(lstm_ops) == 3  # output, h_n, c_n of one call
    assert len({op.call_id for op in lstm_ops}) == 1
    out, (h, c) = model.lstm(*args)
    assert torch.equal(lstm_ops[0].out, out) and torch.equal(lstm_ops[2].out, c)


def test_parameters_and_buffers():
    model, args, _ = build(get("resnet_block"))
    tr = tl.trace(model, *args)
    bufs = [tr[label] for label in tr.buffer_layers]
    assert bufs and all(op.address for op in bufs)
    names = {n for n, _ in model.named_buffers()}
    assert {op.address for op in bufs} <= names
    bn = next(op for op in tr.ops if op.type == "batchnorm")
    assert any(p.is_buffer for p in bn.parents)
    assert len(tr.params) == len(list(model.parameters()))


def test_identity_modules_get_an_output_op():
    model, args, _ = build(get("identity_module"))
    tr = tl.trace(model, *args)
    idents = [n for n, m in model.named_modules() if isinstance(m, nn.Identity)]
    assert idents
    for address in idents:
        for call in tr.modules[address].calls:
            (op,) = call.outputs
            assert op.kind == "identity" and torch.equal(op.out, op.parents[0].out)
            assert op.module_call == call.key


def test_functions_and_inplace_flag_functions():
    def fn(x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        F.relu(y, inplace=True)
        return y + 1

    x = torch.randn(4) - 0.5
    tr = tl.trace(fn, x)
    mul, relu = tr["mul_1_1"], tr["relu_1_2"]
    assert torch.equal(mul.out, x * 2)  # cloned before relu overwrote it
    assert torch.equal(relu.out, torch.relu(x * 2))
    assert relu.mutates == 0


@pytest.mark.parametrize("detach", [False, True])
def test_payloads_are_references_not_copies(detach):
    lin = nn.Linear(3, 3)
    x = torch.randn(2, 3)
    tr = tl.trace(lin, x, detach=detach)
    if not detach:
        assert tr["input_1"].out is x
    else:
        assert tr["input_1"].out.data_ptr() == x.data_ptr()
    assert tr["linear_1_1"].out.requires_grad is (not detach)
