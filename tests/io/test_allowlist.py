"""The function allow-list: a hand-kept table of pure tensor operations.

Every op the capture engine records for the model zoo (and for a model built from the
common layers) has a name on the list; nothing on the list reads or writes files, memory
maps, storages, foreign memory, processes, libraries or the network; and a saved trace
naming any I/O entry point, by any spelling or route, is refused at load time."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm, weight_norm
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import lens as tl
from lens.io import load, replayable, save
from lens.io.allowlist import listed_names
from lens.io.names import allowed, describe, name_of, resolve
from lens.io.schema import JSON_NAME
from lens.replay.interpreter import Interpreter, tensors_equal
from tests.helpers import build, regular_cases

CASES = regular_cases()  # the bench cases are larger copies of these (same op types)

# Hand-kept: words that mark reading/writing files, memory, storages, processes, libraries,
# the network, hooks, autograd drivers or global state. No allow-listed name may match.
DENY = re.compile(
    r"file|load|save|storage|mmap|share|librar|\bhub\b|jit|dlpack|numpy|buffer|blob|pin_memory|"
    r"pinned|ipc|pickle|__reduce|setstate|getstate|hook|backward|grad_|retain|"
    r"torch_function|torch_dispatch|data_ptr|\.set_$|\._C\b|\._VF\b|import|compile|script|"
    r"fork|wait|seed|rng|set_default|set_num|manual|tolist|\.item$|__array|cuda_array|"
    r"\.apply_$|\.map2?_$|module_load|subclass|\.new$|\.resize|\.ops\.|classes|asarray|"
    r"from_|autocast|print|thread|deterministic|anomaly|_foreach|fused|stream|\w\.torch\b")

# Hand-kept: known I/O entry points (and their neighbours: foreign memory, hooks, state).
KNOWN_IO = (
    "torch.from_file", "torch.load", "torch.save", "torch.frombuffer", "torch.from_numpy",
    "torch.from_dlpack", "torch.asarray", "torch._from_blob", "torch._nested_view_from_buffer",
    "torch.UntypedStorage.from_file", "torch.TypedStorage.from_file",
    "torch.ByteStorage.from_file", "torch.FloatStorage.from_file",
    "torch.UntypedStorage.from_buffer", "torch.UntypedStorage._new_shared_filename_cpu",
    "torch.UntypedStorage.share_memory_", "torch.serialization.load",
    "torch.serialization.save", "torch.utils.dlpack.from_dlpack",
    "torch.Tensor.set_", "torch.Tensor.storage", "torch.Tensor.untyped_storage",
    "torch.Tensor._typed_storage", "torch.Tensor.share_memory_", "torch.Tensor.is_shared",
    "torch.Tensor.pin_memory", "torch.Tensor.data_ptr", "torch.Tensor.numpy",
    "torch.Tensor.tolist", "torch.Tensor.item", "torch.Tensor.__reduce_ex__",
    "torch.Tensor.__setstate__", "torch.Tensor.__getstate__", "torch.Tensor.__dlpack__",
    "torch.Tensor.__array__", "torch.Tensor.__cuda_array_interface__",
    "torch.Tensor.register_hook", "torch.Tensor.register_post_accumulate_grad_hook",
    "torch.Tensor.backward", "torch.Tensor.retain_grad", "torch.Tensor.requires_grad_",
    "torch.Tensor.__torch_function__", "torch.Tensor.__torch_dispatch__",
    "torch.Tensor.module_load", "torch.Tensor.new", "torch.Tensor.as_subclass",
    "torch.Tensor._make_subclass", "torch.Tensor.resize_", "torch.Tensor.apply_",
    "torch.Tensor.map_", "torch.Tensor.map2_", "torch.Tensor.record_stream",
    "torch.ops.load_library", "torch.classes.load_library", "torch.hub.load",
    "torch.hub.load_state_dict_from_url", "torch.hub.download_url_to_file", "torch.jit.load",
    "torch.jit.save", "torch.jit.script", "torch.compile", "torch.import_ir_module",
    "torch.import_ir_module_from_buffer", "torch.get_file_path", "torch._load_global_deps",
    "torch.fork", "torch.wait", "torch.manual_seed", "torch.seed", "torch.set_rng_state",
    "torch.set_default_device", "torch.set_default_dtype", "torch.set_num_threads",
    "torch._C._VariableFunctions.from_file", "torch.nn.functional.torch",
)


def _dig(name: str) -> Any:
    """Test-side lookup of a fixed name (never file content); None if this torch lacks it."""
    obj: Any = torch
    for part in name.split(".")[1:]:
        try:
            obj = getattr(obj, part)
        except Exception:  # noqa: BLE001 - absent in this torch version
            return None
    return obj


def _namespaces() -> list[tuple[str, Any]]:
    return [("torch", torch), ("torch.Tensor", torch.Tensor), ("torch.nn.functional", F),
            ("torch.linalg", torch.linalg), ("torch.fft", torch.fft),
            ("torch.special", torch.special)]


def _callables() -> list[tuple[str, Any]]:
    """Every callable (and property getter) of the six namespaces, by qualified name."""
    out = []
    for ns_name, ns in _namespaces():
        for attr in sorted(dir(ns)):
            try:
                value = vars(ns)[attr] if isinstance(ns, types.ModuleType) else getattr(ns, attr)
            except Exception:  # noqa: BLE001 - lazily imported or unreadable: not a callable
                continue
            if callable(value):
                out.append((f"{ns_name}.{attr}", value))
            if isinstance(value, (property, types.GetSetDescriptorType)):
                out.append((f"{ns_name}.{attr}.__get__", value.__get__))
    return out


def _hashable(obj: Any) -> bool:
    try:
        hash(obj)
    except TypeError:
        return False
    return True


def test_the_deny_pattern_matches_every_known_io_entry_point():
    assert [n for n in KNOWN_IO if not DENY.search(n)] == []


def test_no_allow_listed_name_matches_the_deny_pattern_or_the_known_io_list():
    names = list(allowed())
    assert len(names) > 1000
    assert [n for n in names if DENY.search(n)] == []
    assert set(names).isdisjoint(KNOWN_IO)


def test_every_public_callable_on_the_allow_list_is_free_of_io():
    table = allowed()
    names_of: dict[Any, list[str]] = {}
    for name, obj in table.items():
        names_of.setdefault(obj, []).append(name)
    enumerated, on_list = set(), 0
    for qname, obj in _callables():
        enumerated.add(qname)
        if not _hashable(obj) or obj not in names_of:
            continue
        on_list += 1
        for n in (qname, *names_of[obj]):
            assert not DENY.search(n), (qname, n)
            assert n not in KNOWN_IO, (qname, n)
    assert len(enumerated) > 2000  # the enumeration really walked the namespaces
    assert on_list >= len(table)
    assert set(table) <= enumerated  # every listed entry is one of those callables


def test_no_known_io_object_is_on_the_allow_list_under_any_name():
    objs = {o for o in allowed().values()}
    found = [(n, _dig(n)) for n in KNOWN_IO]
    present = [(n, o) for n, o in found if o is not None and _hashable(o)]
    assert len(present) > 40
    assert [n for n, o in present if o in objs] == []
    assert all(name_of(o) is None for _, o in present)


def test_the_table_holds_exactly_the_listed_names_this_torch_has():
    table, listed = allowed(), listed_names()
    assert len(listed) == len(set(listed))
    assert set(table) <= set(listed)
    absent = [n for n in listed if n not in table]
    assert all(_dig(n.removesuffix(".__get__")) is None for n in absent), absent
    for name, obj in table.items():
        assert resolve(name) is obj
        assert resolve(name_of(obj)) == obj


# ------------------------------------------------------------- coverage of recorded ops
def _assert_nameable(trace: Any) -> int:
    checked = 0
    for op in trace.ops:
        if op.func is None:
            continue
        name = name_of(op.func)
        assert name is not None, f"{op.label}: {describe(op.func)} is not on the allow-list"
        assert resolve(name) == op.func
        checked += 1
    return checked


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_op_the_zoo_records_has_an_allow_listed_name(case):
    model, args, kwargs = build(case)
    torch.manual_seed(0)
    assert _assert_nameable(tl.trace(model, *args, input_kwargs=kwargs)) > 0


class _CommonLayers(nn.Module):
    """The building blocks of common CNNs, RNNs and transformers, plus tensor idioms."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1,
                                   groups=4), nn.GroupNorm(2, 4), nn.InstanceNorm2d(4, affine=True))
        self.c1, self.bn1 = nn.Conv1d(3, 4, 3, padding=1), nn.BatchNorm1d(4)
        self.c3, self.ct = nn.Conv3d(1, 2, (1, 2, 2)), nn.ConvTranspose2d(4, 3, 2, stride=2)
        self.maps = nn.ModuleList([
            nn.Upsample(scale_factor=2, mode="bilinear"), nn.Upsample(scale_factor=2),
            nn.PixelShuffle(2), nn.Dropout2d(0.1), nn.Hardswish(), nn.Hardsigmoid(), nn.SiLU(),
            nn.GELU("tanh"), nn.Mish(), nn.ELU(), nn.LeakyReLU(), nn.PReLU(), nn.Softplus(),
            nn.ReLU6(), nn.Sigmoid(), nn.Tanh(), nn.LogSoftmax(-1), nn.Softmax2d(), nn.GLU(),
            nn.Hardtanh(), nn.SELU(), nn.CELU(), nn.Softsign(), nn.Tanhshrink(),
            nn.Threshold(0.1, 0.0), nn.MaxPool2d(2), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1),
            nn.AdaptiveMaxPool2d(1), nn.LPPool2d(2, 2)])
        self.emb, self.bag = nn.Embedding(10, 4), nn.EmbeddingBag(10, 4)
        self.ln, self.rms = nn.LayerNorm(4), nn.RMSNorm(4)
        self.wn, self.sn = weight_norm(nn.Linear(4, 4)), spectral_norm(nn.Linear(4, 4))
        self.lstm, self.gru = nn.LSTM(4, 4, batch_first=True), nn.GRUCell(4, 4)
        self.rnn = nn.RNN(4, 4)
        self.bil = nn.Bilinear(4, 4, 2)

    def forward(self, img: torch.Tensor, seq: torch.Tensor, ids: torch.Tensor) -> list[Any]:
        h = self.convs(img)
        outs: list[Any] = [m(h) for m in self.maps]
        outs += [self.ct(h), self.c3(img[:, :1].unsqueeze(1)), self.bn1(self.c1(img.mean(-1)))]
        e = self.emb(ids)
        outs += [self.bag(ids), self.ln(e), self.rms(e), self.wn(e), self.sn(e), self.bil(e, e)]
        packed = pack_padded_sequence(seq, torch.tensor([5, 3]), batch_first=True)
        outs += [pad_packed_sequence(self.lstm(packed)[0], batch_first=True)[0],
                 self.gru(seq[:, 0]), self.rnn(seq)[0]]
        x = e
        outs += [x @ x.mT, x[0].T, x.data + 1, x.masked_fill(x > 0, 0.0), torch.where(x > 0, x, -x),
                 x.new_zeros(2), x.float().half().to(torch.float32), x.type_as(img),
                 torch.einsum("bij,bkj->bik", x, x), F.normalize(x, dim=-1), F.one_hot(ids, 10),
                 torch.cumsum(x, 1), torch.topk(x, 2).values, torch.triu(torch.ones(3, 3)),
                 torch.full((2,), 3.0), torch.linspace(0, 1, 5), torch.eye(3), torch.arange(4),
                 x.expand(2, 3, 4).contiguous().permute(0, 2, 1), x.repeat(1, 2, 1).flip(0),
                 torch.stack([x, x]).sum(0), x.std(-1), x.norm(dim=-1), x.chunk(2, -1)[0],
                 x.split(2, -1)[1], x.view(-1).view_as(x), torch.rand_like(x), x.max(-1).values,
                 F.cross_entropy(x[:, 0], ids[:, 0] % 4), F.pad(img, (1, 1, 1, 1), mode="reflect"),
                 F.interpolate(img, size=(5, 5), mode="bicubic"), torch.sort(x, -1).values,
                 F.scaled_dot_product_attention(x, x, x, is_causal=True)]
        y = x.clone()
        y[0] = 1.0
        y += 1
        y.add_(1).mul_(2).clamp_(0, 1).zero_()
        return [*outs, y]


def test_the_common_layers_record_only_allow_listed_functions():
    torch.manual_seed(0)
    args = (torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4), torch.randint(0, 10, (2, 3)))
    assert _assert_nameable(tl.trace(_CommonLayers().eval(), *args)) > 100


# ------------------------------------------------------------------- crafted trace files
@pytest.fixture
def saved(tmp_path: Path) -> Path:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    save(tl.trace(model, torch.randn(2, 3)), tmp_path / "t")
    return tmp_path / "t"


def _set_func(path: Path, func: Any, args: Any = None) -> None:
    doc = json.loads((path / JSON_NAME).read_text())
    op = next(op for op in doc["ops"] if op["func_name"] == "linear")
    op["func"] = func
    if args is not None:
        op["args"] = args
    (path / JSON_NAME).write_text(json.dumps(doc))


def test_the_crafted_file_harness_loads_an_allow_listed_name(saved):
    _set_func(saved, "torch.nn.functional.linear")  # positive control for the tests below
    loaded = load(saved)
    op = loaded["linear_1_1"]
    assert replayable(op) and tensors_equal(Interpreter(loaded).call_function(op), op.out)


@pytest.mark.parametrize("name", KNOWN_IO)
def test_a_trace_naming_an_io_function_is_refused_at_load(saved, name):
    _set_func(saved, name)
    with pytest.raises(tl.LoadError, match="Refusing to load function"):
        load(saved)
    with pytest.raises(tl.LoadError):
        resolve(name)


def test_a_trace_built_to_read_a_file_with_from_file_is_refused(saved, tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"secret!!")
    args = {"$": "tuple", "v": [str(secret), True, 8]}
    for name in ("torch.from_file", "torch.UntypedStorage.from_file",
                 "torch._C._VariableFunctions.from_file"):
        _set_func(saved, name, args)
        with pytest.raises(tl.LoadError, match="Refusing"):
            load(saved)
    assert secret.read_bytes() == b"secret!!"


_CYRILLIC_I = "\u0456"
OTHER_ROUTES = [
    "torch.Tensor.from_file", "torch._VF.from_file", "torch.storage.UntypedStorage.from_file",
    "torch.Tensor.set_", "torch.Tensor.set_.__get__", "torch.Tensor.storage.__get__",
    "torch.Tensor.add.__get__", "torch.Tensor.shape.__get__", "torch.Tensor.grad.__get__",
    "torch.Tensor.T.__get__.__self__", "torch.Tensor.T.__set__", "torch.Tensor.T",
    "torch.Tensor.__get__", "torch.nn.functional.torch.from_file",
    "torch.nn.functional.torch.Tensor.set_", "torch.linalg.torch.from_file",
    "torch.functional.torch.from_file", "torch.nn.functional.linear.__globals__",
    "torch.add.__self__.from_file", "torch..from_file", "torch.from_file.", ".torch.from_file",
    "torch.from_file.__call__", "torch.Tensor..add", "torch.Tensor.add.",
    f"torch.from_f{_CYRILLIC_I}le", "torch.\uff46rom_file",
    f"torch.nn.functional.l{_CYRILLIC_I}near",
    "torch.add\u200b", " torch.add", "torch.add ", "torch.add\x00", "TORCH.add", "torch.ADD",
    "torch/add", "torch:add", "torch.Tensor.add\n", "torch." + "a" * 100_000,
    "torch.Tensor." * 10_000 + "add", "torch.nn.functional.linear" * 3,
]


@pytest.mark.parametrize("name", OTHER_ROUTES, ids=lambda n: ascii(n)[:60])
def test_every_other_route_to_a_function_is_refused(saved, name):
    _set_func(saved, name)
    with pytest.raises(tl.LoadError, match="Refusing to load function"):
        load(saved)


@pytest.mark.parametrize("value", [42, 3.5, True, ["torch.add"], {"$": "str", "v": "torch.add"}])
def test_a_function_field_that_is_not_a_string_is_refused(saved, value):
    _set_func(saved, value)
    with pytest.raises(tl.LoadError):
        load(saved)
    with pytest.raises(tl.LoadError):
        resolve(value)


class _OffTheList(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.type(torch.float64) * 2  # Tensor.type takes type names: deliberately unlisted


def test_an_op_off_the_list_still_saves_and_loads_as_not_replayable(tmp_path):
    tr = tl.trace(_OffTheList(), torch.randn(2, 3))
    save(tr, tmp_path / "o")
    doc = json.loads((tmp_path / "o" / JSON_NAME).read_text())
    entry = next(op for op in doc["ops"] if op["func_name"] == "type")
    assert entry["func"] is None and "type" in entry["func_unresolved"]
    loaded = load(tmp_path / "o")
    op = loaded["type_1_1"]
    assert not replayable(op) and torch.equal(op.out, tr["type_1_1"].out)
    with pytest.raises(tl.ReplayError, match="cannot be replayed"):
        Interpreter(loaded).run_op(op)
    assert replayable(loaded["mul_1_2"])
