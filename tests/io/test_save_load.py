"""tl.save / tl.load: a directory of JSON + safetensors that round-trips a trace exactly
and gives a fully usable trace (indexing, summary, pandas, replay without the model)."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lens as tl
from lens.io import load, replayable, save
from lens.io.names import name_of
from lens.io.schema import JSON_NAME, TENSORS_NAME
from lens.replay.interpreter import Interpreter, is_stochastic, tensors_equal
from tests.helpers import UNINITIALISED, build, regular_cases
from tests.io._compare import assert_same_trace, same_bits

CASES = regular_cases()


def _trace(case, **options):
    model, args, kwargs = build(case)
    torch.manual_seed(0)
    return tl.trace(model, *args, input_kwargs=kwargs, **options)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_round_trip_keeps_every_label_edge_field_and_payload_bit(case, tmp_path):
    tr = _trace(case, code_context=True)
    save(tr, tmp_path / "t")
    loaded = load(tmp_path / "t")
    assert_same_trace(tr, loaded)
    assert sorted(os.listdir(tmp_path / "t")) == sorted([JSON_NAME, TENSORS_NAME])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_loaded_trace_is_fully_usable(case, tmp_path):
    tr = _trace(case)
    save(tr, tmp_path / "t")
    loaded = load(tmp_path / "t")
    for op in tr.ops:  # every lookup key (labels, module addresses, ordinals) finds it
        for key in op.lookup_keys:
            hit, ref = loaded[key], tr[key]
            if isinstance(ref, tl.Op):
                assert hit.index == ref.index and same_bits(hit.out, ref.out)
            else:
                assert [o.index for o in hit] == [o.index for o in ref]
    assert loaded.summary() == tr.summary()
    assert str(loaded) == str(tr)
    assert loaded.to_pandas().equals(tr.to_pandas())
    assert loaded.modules.to_pandas().equals(tr.modules.to_pandas())
    assert loaded.params.to_pandas().equals(tr.params.to_pandas())
    # Replay from the file alone: each op recomputed from its parents' loaded payloads
    # with the loaded parameters gives the recorded payload, as it does on the original.
    live, again = Interpreter(tr), Interpreter(loaded)
    for op, lop in zip(tr.ops, loaded.ops, strict=True):
        if op.kind != "op" or is_stochastic(op):
            continue
        assert replayable(lop)
        if op.func_name in UNINITIALISED:
            continue
        assert tensors_equal(again.call_function(lop), lop.payload), op.label
        assert tensors_equal(again.call_function(lop), live.call_function(op)), op.label


def test_gradients_round_trip(tmp_path):
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    x = torch.randn(3, 4, requires_grad=True)
    tr = tl.trace(model, x, save_grads=True)
    tr.log_backward(tr[tr.output_layers[0]].out.sum())
    save(tr, tmp_path / "g")
    loaded = load(tmp_path / "g")
    assert sum(op.grad is not None for op in tr.ops) >= 4
    for op, lop in zip(tr.ops, loaded.ops, strict=True):
        assert same_bits(op.grad, lop.grad), op.label


class _Args(nn.Module):
    """Ops whose non-tensor arguments cover every supported type."""

    def forward(self, x):
        a = x[..., 1:3]                                   # Ellipsis, slice
        b = x[:, None, ::2]                               # None, step slice
        c = x.to(torch.float64, memory_format=torch.contiguous_format)  # dtype, format
        d = torch.zeros(2, 3, dtype=torch.float16, device="cpu", layout=torch.strided)
        e = x.reshape(torch.Size([x.shape[0], -1]))       # torch.Size, negative int
        f = torch.clamp(x, min=float("-inf"), max=0.25)   # inf and a float
        g = F.pad(x, [1, 2], mode="constant", value=0.5)  # list of ints, str
        h = torch.einsum("ij,kj->ik", x, x)               # str equation
        i = x.sum(dim=(0, 1), keepdim=True)               # tuple of ints, bool
        j = x.T                                           # property getter
        k = torch.linalg.vector_norm(x, ord=2.0, dim=-1)  # torch.linalg
        m = torch.fft.rfft(x, dim=-1).abs()               # torch.fft
        n = torch.special.expit(x)                        # torch.special
        return a, b, c, d, e, f, g, h, i, j, k, m, n


def test_every_supported_argument_type_decodes_exactly_and_replays(tmp_path):
    x = torch.randn(3, 4)
    tr = tl.trace(_Args(), x)
    save(tr, tmp_path / "a")
    loaded = load(tmp_path / "a")
    assert_same_trace(tr, loaded)
    it = Interpreter(loaded)
    for op in loaded.ops:
        if op.kind == "op":
            assert tensors_equal(it.call_function(op), op.payload), op.label
    saved_names = {name_of(op.func) for op in loaded.ops if op.func is not None}
    assert {"torch.Tensor.T.__get__", "torch.Tensor.__getitem__", "torch.einsum",
            "torch.nn.functional.pad"} <= saved_names
    for ns in ("torch.linalg.", "torch.fft.", "torch.special."):
        assert any(n.startswith(ns) for n in saved_names if n), ns


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_tied_parameters_are_stored_once_and_replay_without_the_model(tmp_path):
    tr = tl.trace(_Tied(), torch.randn(2, 4))
    save(tr, tmp_path / "t")
    doc = json.loads((tmp_path / "t" / JSON_NAME).read_text())
    assert "b.weight" not in doc["params"] and "a.weight" in doc["params"]
    keys = [p["tensor"] for p in doc["params"].values()]
    assert len(keys) == len(set(keys)) == 3
    loaded = load(tmp_path / "t")
    second = loaded["b"]
    assert second.args[1] == tl.capture.ParamRef("a.weight")
    assert tensors_equal(Interpreter(loaded).call_function(second), second.out)


def test_views_and_shared_payloads_come_back_as_views(tmp_path):
    x = torch.randn(4, 6)
    tr = tl.trace(nn.Sequential(nn.Identity()), x)  # one tensor, three ops
    assert tr["output_1"].out is tr["identity_1_1"].out is tr["input_1"].out
    save(tr, tmp_path / "v")
    loaded = load(tmp_path / "v")
    assert loaded["output_1"].out is loaded["identity_1_1"].out is loaded["input_1"].out
    assert same_bits(loaded["output_1"].out, x)

    class Slices(nn.Module):
        def forward(self, x):
            return x[:, 1] * 2, x[1:].T.contiguous()

    tr = tl.trace(Slices(), x)
    save(tr, tmp_path / "s")
    loaded = load(tmp_path / "s")
    sl = loaded["getitem_1_1"].out
    assert sl.stride() == tr["getitem_1_1"].out.stride()
    assert sl.untyped_storage().data_ptr() == loaded["input_1"].out.untyped_storage().data_ptr()
    assert_same_trace(tr, loaded)


def test_selective_and_halted_traces_round_trip(tmp_path):
    model, args, kwargs = build(next(c for c in CASES if c.name == "alexnet_small"))
    for i, options in enumerate([{"save": tl.func("relu")}, {"halt": tl.func("relu")},
                                 {"save": False}, {"detach": True, "dtype": torch.float16}]):
        tr = tl.trace(model, *args, **options)
        save(tr, tmp_path / str(i))
        loaded = load(tmp_path / str(i))
        assert_same_trace(tr, loaded)
        assert loaded.halted == tr.halted
        assert repr(loaded.save_spec) == repr(tr.save_spec)
        unsaved = [op for op in loaded.ops if op.payload is None]
        if unsaved:
            with pytest.raises(tl.PayloadError, match="not saved"):
                _ = unsaved[0].out


@pytest.mark.parametrize("name", ["tiny_transformer_2block", "rnn_cell_loop", "gpt2_tiny"])
def test_saving_twice_and_resaving_a_loaded_trace_give_identical_files(name, tmp_path):
    tr = _trace(next(c for c in CASES if c.name == name))
    save(tr, tmp_path / "a")
    save(tr, tmp_path / "b")
    save(load(tmp_path / "a"), tmp_path / "c")
    for file in (JSON_NAME, TENSORS_NAME):
        first = (tmp_path / "a" / file).read_bytes()
        assert (tmp_path / "b" / file).read_bytes() == first
        assert (tmp_path / "c" / file).read_bytes() == first


def test_load_reads_no_pickle(tmp_path, monkeypatch):
    tr = _trace(next(c for c in CASES if c.name == "demo_network"))
    save(tr, tmp_path / "t")
    import pickle

    def forbidden(*a, **k):
        raise AssertionError("pickle used while loading")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    assert load(tmp_path / "t").labels == tr.labels


def test_load_places_tensors_on_the_requested_device(tmp_path):
    tr = _trace(next(c for c in CASES if c.name == "alexnet_small"))
    save(tr, tmp_path / "t")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        loaded = load(tmp_path / "t", device=device)
        for op, lop in zip(tr.ops, loaded.ops, strict=True):
            assert lop.out.device.type == device
            assert same_bits(op.out, lop.out), op.label
        assert all(p.device.type == device for p in loaded.param_values.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_trace_saves_and_loads_on_cpu(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).cuda()
    tr = tl.trace(model, torch.randn(2, 4, device="cuda"))
    save(tr, tmp_path / "c")
    loaded = load(tmp_path / "c")
    assert loaded["0"].device == torch.device("cuda", 0)  # recorded metadata
    assert loaded["0"].out.device.type == "cpu"
    assert same_bits(tr["0"].out, loaded["0"].out)
