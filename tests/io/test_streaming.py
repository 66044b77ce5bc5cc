"""Streaming capture (``tl.trace(..., storage=tl.to_disk(path))``): payloads go to
safetensors shards as they are kept, read back lazily; the folder is a saved trace."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

import lens as tl
from lens.errors import LoadError
from tests.models.misc import ResidualMLP
from tests.models.mutation import InputClamp, ViewWrite, _masked_fill, _slice_zero


def _payload_bytes(trace: tl.Trace) -> int:
    return sum(op.payload.numel() * op.payload.element_size()
               for op in trace.ops if op.payload is not None)


def _assert_same_payloads(a: tl.Trace, b: tl.Trace) -> None:
    assert [op.label for op in a.ops] == [op.label for op in b.ops]
    for x, y in zip(a.ops, b.ops, strict=True):
        assert (x.payload is None) == (y.payload is None), x.label
        if x.payload is not None:
            assert x.payload.dtype == y.payload.dtype, x.label
            assert torch.equal(x.payload, y.payload), x.label


def _streamed(model: nn.Module, x: torch.Tensor, path: os.PathLike[str], shard: int,
              **kw: object) -> tl.Trace:
    return tl.trace(model, x, storage=tl.to_disk(path, shard_bytes=shard), **kw)


def test_capture_several_times_the_shard_size_reads_back_equal(tmp_path):
    torch.manual_seed(0)
    model, x = ResidualMLP().eval(), torch.randn(8, 64)
    ref = tl.trace(model, x)
    cap = 2048
    assert _payload_bytes(ref) > 4 * cap  # the capture saves several times the cap
    streamed = _streamed(model, x, tmp_path / "t", cap)
    shards = sorted(p.name for p in (tmp_path / "t").iterdir() if p.name.startswith("pay"))
    assert len(shards) >= 4
    # nothing resident: records hold handles, not tensors
    assert not any(isinstance(op.record._payload, torch.Tensor) for op in streamed.ops)
    _assert_same_payloads(streamed, ref)
    assert torch.equal(streamed.output, ref.output)


def test_folder_loads_eager_and_lazy_equal(tmp_path):
    torch.manual_seed(1)
    model, x = ResidualMLP(depth=3).eval(), torch.randn(4, 64)
    ref = tl.trace(model, x)
    _streamed(model, x, tmp_path / "t", 2048)
    eager = tl.load(tmp_path / "t")
    lazy = tl.load(tmp_path / "t", lazy=True)
    assert all(isinstance(op.record._payload, torch.Tensor) for op in eager.ops
               if op.has_payload)
    assert not any(isinstance(op.record._payload, torch.Tensor) for op in lazy.ops)
    _assert_same_payloads(eager, ref)
    _assert_same_payloads(lazy, eager)
    # re-saving a lazy trace elsewhere reads its payloads into an ordinary folder
    tl.save(lazy, tmp_path / "copy")
    assert not [p for p in (tmp_path / "copy").iterdir() if p.name.startswith("pay")]
    _assert_same_payloads(tl.load(tmp_path / "copy"), ref)


def test_save_options_apply_before_streaming(tmp_path):
    torch.manual_seed(2)
    model, x = ResidualMLP(depth=2).eval(), torch.randn(4, 64)
    ref = tl.trace(model, x, save=tl.module("layers.1"), dtype=torch.float16)
    streamed = tl.trace(model, x, save=tl.module("layers.1"), dtype=torch.float16,
                        storage=tl.to_disk(tmp_path / "t", shard_bytes=512))
    assert any(op.payload is not None for op in streamed.ops)
    _assert_same_payloads(streamed, ref)
    _assert_same_payloads(tl.load(tmp_path / "t", lazy=True), ref)


@pytest.mark.parametrize("write", [_slice_zero, _masked_fill])
def test_in_place_writes_stream_each_ops_own_value(tmp_path, write):
    torch.manual_seed(3)
    model, x = ViewWrite(write).eval(), torch.randn(4, 6)
    seen: list[torch.Tensor] = []  # independent route: fc's output before the write
    handle = model.fc.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    try:
        model(x)  # a plain run, not traced
    finally:
        handle.remove()
    streamed = _streamed(model, x, tmp_path / "t", 64)
    ref = tl.trace(model, x)
    fc_out = streamed["fc"]
    assert torch.equal(fc_out.payload, seen[0])
    hand = seen[0].clone()
    write(hand)  # the written tensor, recomputed by hand
    assert not torch.equal(hand, seen[0])
    tanh = next(op for op in streamed.ops if op.func_name == "tanh")
    assert torch.allclose(tanh.payload, torch.tanh(hand))  # read h after the write
    _assert_same_payloads(streamed, ref)
    _assert_same_payloads(tl.load(tmp_path / "t", lazy=True), ref)


def test_writes_into_the_input_stream_values_before_and_after(tmp_path):
    torch.manual_seed(4)
    model = InputClamp().eval()
    x = torch.randn(3, 6) * 3
    streamed = _streamed(model, x.clone(), tmp_path / "t", 32)
    ref = tl.trace(model, x.clone())
    _assert_same_payloads(streamed, ref)
    first = streamed.ops[0]
    assert first.kind == "input" and torch.equal(first.payload, x)  # before the clamp


def _stream_small(tmp_path):
    torch.manual_seed(5)
    _streamed(ResidualMLP(depth=2).eval(), torch.randn(2, 64), tmp_path / "t", 256)
    return tmp_path / "t"


def _shard(folder):
    return sorted(p for p in folder.iterdir() if p.name.startswith("payloads-"))[0]


def _truncate(folder):
    p = _shard(folder)
    p.write_bytes(p.read_bytes()[:-3])


def _bad_header_length(folder):
    p = _shard(folder)
    data = bytearray(p.read_bytes())
    data[:8] = (len(data) * 2).to_bytes(8, "little")
    p.write_bytes(bytes(data))


def _missing_shard(folder):
    _shard(folder).unlink()


def _shard_symlink(folder):
    p = _shard(folder)
    target = folder.parent / "elsewhere.safetensors"
    p.rename(target)
    p.symlink_to(target)


def _json_edit(edit):
    def go(folder):
        doc = json.loads((folder / "trace.json").read_text())
        key = next(k for k, m in doc["tensors"].items() if "file" in m)
        edit(doc["tensors"][key])
        (folder / "trace.json").write_text(json.dumps(doc))
    return go


@pytest.mark.parametrize("damage", [
    _truncate, _bad_header_length, _missing_shard, _shard_symlink,
    _json_edit(lambda m: m.update(file="../tensors.safetensors")),
    _json_edit(lambda m: m.update(file="tensors.safetensors")),
    _json_edit(lambda m: m.update(shape=[m["shape"][0] + 1, *m["shape"][1:]])),
    _json_edit(lambda m: m.update(dtype="float64")),
    _json_edit(lambda m: m.update(file=7)),
], ids=["truncated", "header-length", "missing", "symlink", "path", "not-a-shard",
        "shape", "dtype", "file-type"])
@pytest.mark.parametrize("lazy", [False, True])
def test_damaged_shards_raise_load_error(tmp_path, damage, lazy):
    folder = _stream_small(tmp_path)
    damage(folder)
    with pytest.raises(LoadError):
        tl.load(folder, lazy=lazy)


def test_shard_replaced_after_lazy_load_raises_on_access(tmp_path):
    folder = _stream_small(tmp_path)
    lazy = tl.load(folder, lazy=True)
    p = _shard(folder)
    p.write_bytes(p.read_bytes() + b"\0" * 8)
    with pytest.raises(LoadError):
        for op in lazy.ops:
            _ = op.payload


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError):
        tl.to_disk(tmp_path, shard_bytes=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        tl.to_disk(tmp_path, shard_bytes=0)
    with pytest.raises(TypeError):
        tl.trace(ResidualMLP(depth=1), torch.randn(1, 64), storage=str(tmp_path))
    with pytest.raises(LoadError):
        tl.load(tmp_path, lazy="yes")  # type: ignore[arg-type]
    (tmp_path / "other.txt").write_text("x")
    with pytest.raises(ValueError):  # a folder that is not a trace, as tl.save refuses
        tl.trace(ResidualMLP(depth=1), torch.randn(1, 64), storage=tl.to_disk(tmp_path))


def test_live_edit_streams_the_edited_value(tmp_path):
    torch.manual_seed(6)
    model, x = ResidualMLP(depth=2).eval(), torch.randn(4, 64)
    rule = tl.when(tl.func("relu"), tl.scale(0.5))
    ref = tl.trace(model, x, intervene=rule)
    streamed = tl.trace(model, x, intervene=rule,
                        storage=tl.to_disk(tmp_path / "t", shard_bytes=1024))
    relu = next(op for op in ref.ops if op.func_name == "relu")
    linear = relu.parents[0]
    assert torch.equal(relu.out, 0.5 * torch.relu(linear.out))  # the edit took effect
    _assert_same_payloads(streamed, ref)
    _assert_same_payloads(tl.load(tmp_path / "t"), ref)
    _assert_same_payloads(tl.load(tmp_path / "t", lazy=True), ref)


def test_a_streamed_trace_is_freed_by_refcount(tmp_path):
    import gc
    import weakref

    torch.manual_seed(7)
    model, x = ResidualMLP(depth=2).eval(), torch.randn(2, 64)
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        trace = _streamed(model, x, tmp_path / "t", 512)
        kept = [r for r in trace.record_table if r is not None and r.has_payload]
        handle = kept[0]._payload
        read = [r.payload for r in kept]  # fill the read cache
        assert len(read) == len(kept) > 1
        refs = [weakref.ref(trace), weakref.ref(handle.reader)]
        del trace, handle, kept, read
        assert [r() for r in refs] == [None, None]
    finally:
        if was:
            gc.enable()
