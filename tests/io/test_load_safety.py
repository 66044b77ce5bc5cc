"""Loading an untrusted file can never run code: crafted function names, truncated tensor
files, wrong JSON types and newer schemas all raise LoadError and execute nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import lens as tl
from lens.io import load, replayable, save
from lens.io.names import name_of, resolve
from lens.io.schema import JSON_NAME, SCHEMA_VERSION, TENSORS_NAME
from lens.replay.interpreter import Interpreter

EXECUTED: list[str] = []


def evil(*args: Any, **kwargs: Any) -> torch.Tensor:
    """Would prove execution: records a call and writes a file."""
    EXECUTED.append("called")
    Path("EVIL_WAS_CALLED").write_text("x")
    return torch.zeros(1)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    save(tl.trace(model, torch.randn(2, 3)), tmp_path / "t")
    return tmp_path / "t"


def _edit(path: Path, change: Any) -> None:
    doc = json.loads((path / JSON_NAME).read_text())
    change(doc)
    (path / JSON_NAME).write_text(json.dumps(doc))


def _linear_op(doc: dict[str, Any]) -> dict[str, Any]:
    return next(op for op in doc["ops"] if op["func_name"] == "linear")


@pytest.mark.parametrize("name", [
    "os.system", "builtins.eval", "subprocess.run", f"{__name__}.evil", "tests.io.evil",
    "torch.load", "torch.save", "torch.os.system", "torch.hub.load", "torch.compile",
    "torch.Tensor.__reduce_ex__", "torch.Tensor.register_hook", "torch.__builtins__",
    "torch.nn.functional.importlib", "torch.Tensor.T.__set__", "torch.Tensor..add",
    "torch.Tensor.add.__call__", "torch._C._nn.__dict__", "", "torch", 42,
    "torch.from_file", "torch.frombuffer", "torch._from_blob", "torch.Tensor.set_",
    "torch._C._VariableFunctions.from_file", "torch._C._nn.linear",
])
def test_a_function_outside_the_allow_list_is_refused_and_never_run(saved, name, monkeypatch,
                                                                    tmp_path):
    monkeypatch.chdir(tmp_path)
    EXECUTED.clear()
    _edit(saved, lambda doc: _linear_op(doc).update(func=name))
    with pytest.raises(tl.LoadError):
        load(saved)
    with pytest.raises(tl.LoadError):
        resolve(name)
    assert not EXECUTED and not (tmp_path / "EVIL_WAS_CALLED").exists()


def test_the_allow_list_round_trips_the_recorded_functions():
    assert resolve("torch.nn.functional.linear") is torch.nn.functional.linear
    assert resolve("torch.Tensor.__getitem__") is torch.Tensor.__getitem__
    assert resolve("torch.Tensor.T.__get__") == torch.Tensor.T.__get__
    assert resolve(name_of(torch.zeros)) is torch.zeros
    assert resolve(name_of(torch.Tensor.__rsub__)) is torch.Tensor.__rsub__
    assert resolve(name_of(torch._VF.lstm)) is torch._VF.lstm
    assert name_of(evil) is None and name_of(torch.load) is None


def test_newer_schema_version_is_refused_with_a_clear_message(saved):
    _edit(saved, lambda doc: doc.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(tl.LoadError, match="newer.*Upgrade lens"):
        load(saved)


def test_truncated_tensor_file_is_refused(saved):
    data = (saved / TENSORS_NAME).read_bytes()
    for cut in (len(data) // 2, 12, 3):
        (saved / TENSORS_NAME).write_bytes(data[:cut])
        with pytest.raises(tl.LoadError, match="safetensors"):
            load(saved)


def test_tensor_file_disagreeing_with_the_json_is_refused(saved):
    def change(doc: dict[str, Any]) -> None:
        key = next(iter(k for k, v in doc["tensors"].items() if v["base"] is None))
        doc["tensors"][key]["shape"] = [999]
    _edit(saved, change)
    with pytest.raises(tl.LoadError):
        load(saved)


@pytest.mark.parametrize("change", [
    lambda d: _linear_op(d).update(shape="abc"),
    lambda d: _linear_op(d).update(call_index="3"),
    lambda d: _linear_op(d).update(parents=[999]),
    lambda d: _linear_op(d).update(children=[-1]),
    lambda d: _linear_op(d).update(args={"$": "tuple", "v": [{"$": "ref", "op": 999}]}),
    lambda d: _linear_op(d).update(args={"$": "code", "v": "__import__('os')"}),
    lambda d: _linear_op(d).update(args=[1, 2]),
    lambda d: _linear_op(d).update(kwargs={"x": {"$": "dtype", "v": "system"}}),
    lambda d: _linear_op(d).update(kwargs={"x": {"$": "float", "v": "1e999x"}}),
    lambda d: _linear_op(d).update(payload="t999"),
    lambda d: _linear_op(d).update(module_ctx=[77]),
    lambda d: _linear_op(d).pop("type"),
    lambda d: d.update(ops="not a list"),
    lambda d: d.update(layers=[]),
    lambda d: d["module_calls"][0].update(parent=5),
    lambda d: d.update(module_info={"x": "Linear"}),
    lambda d: d.update(format="something-else"),
    lambda d: d["params"]["0.weight"].update(dtype="os"),
    lambda d: d["tensors"].update(t0={"shape": [1], "dtype": "float32", "stride": [1],
                                      "offset": 10 ** 9, "base": "t1"}),
])
def test_json_with_wrong_types_or_dangling_references_is_refused(saved, change):
    _edit(saved, change)
    with pytest.raises(tl.LoadError):
        load(saved)


def test_invalid_json_and_missing_files_are_refused(saved, tmp_path):
    (saved / JSON_NAME).write_text("{not json")
    with pytest.raises(tl.LoadError, match="not valid JSON"):
        load(saved)
    with pytest.raises(tl.LoadError, match="missing"):
        load(tmp_path / "nowhere")


class _WithGenerator(nn.Module):
    def forward(self, x):
        g = torch.Generator().manual_seed(0)
        return x + torch.randn(x.shape, generator=g)


def test_unsupported_argument_is_opaque_and_its_op_refuses_replay(tmp_path):
    tr = tl.trace(_WithGenerator(), torch.randn(2, 3))
    save(tr, tmp_path / "g")
    loaded = load(tmp_path / "g")
    op = loaded["randn_1_1"]
    assert not replayable(op)
    assert "opaque" in repr(op.kwargs["generator"]) and "Generator" in repr(op.kwargs)
    assert loaded["add_1_2"].out.shape == (2, 3) and replayable(loaded["add_1_2"])
    with pytest.raises(tl.ReplayError, match="randn_1_1.*cannot be replayed"):
        Interpreter(loaded).run_op(op)
    assert loaded.summary() == tr.summary()


def test_every_torch_op_reachable_by_torch_function_has_a_name_that_resolves_back():
    checked = 0
    for funcs in torch.overrides.get_overridable_functions().values():
        for f in funcs:
            name = name_of(f)
            if name is None:  # not on lens.io.allowlist (I/O, hooks, metadata, sparse...)
                continue
            assert resolve(name) == f, name
            checked += 1
    assert checked > 1000
