"""Loading an untrusted file can never run code: crafted function names, truncated tensor
files, wrong JSON types and newer schemas all raise LoadError and execute nothing."""

from __future__ import annotations

import json
import os
import threading
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


# ---------------------------------------------------------------- paths, links, FIFOs
@pytest.mark.parametrize("bad", [None, 5, b"bytes/path", ["a"], 1.5])
def test_load_of_something_that_is_not_a_path_says_what_it_needs(bad):
    with pytest.raises(tl.LoadError, match=r"needs the path \(str or os.PathLike\)"):
        load(bad)


def test_load_of_a_file_says_a_folder_is_expected(saved):
    with pytest.raises(tl.LoadError, match="is a file, not a folder.*pass that folder"):
        load(saved / JSON_NAME)


@pytest.mark.parametrize("name", [JSON_NAME, TENSORS_NAME])
def test_a_link_in_place_of_a_trace_file_is_refused_not_followed(saved, tmp_path, name):
    # The link points at a perfectly valid file of another trace, outside the folder.
    other = tmp_path / "other"
    save(tl.trace(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)),
                  torch.randn(2, 3)), other)
    (saved / name).unlink()
    (saved / name).symlink_to(other / name)
    with pytest.raises(tl.LoadError, match=f"{name} is a symbolic link.*refuses to follow"):
        load(saved)


@pytest.mark.parametrize("name", [JSON_NAME, TENSORS_NAME])
def test_a_fifo_in_place_of_a_trace_file_is_refused_without_blocking(saved, name):
    (saved / name).unlink()
    os.mkfifo(saved / name)  # opening it for reading would wait for a writer forever
    errors: list[BaseException] = []
    reader = threading.Thread(target=lambda: errors.append(_load_error(saved)), daemon=True)
    reader.start()
    reader.join(timeout=60)  # a hang guard, not a timing check
    assert not reader.is_alive(), "tl.load blocked on a FIFO"
    assert isinstance(errors[0], tl.LoadError) and "is a FIFO" in str(errors[0])


def _load_error(path: Path) -> BaseException | None:
    try:
        load(path)
    except BaseException as e:  # noqa: BLE001 - handed to the test thread
        return e
    return None


@pytest.mark.parametrize("make", [lambda p: p.mkdir(), lambda p: p.symlink_to("/dev/zero")])
def test_a_folder_or_device_link_in_place_of_the_json_is_refused(saved, make):
    (saved / JSON_NAME).unlink()
    make(saved / JSON_NAME)
    with pytest.raises(tl.LoadError, match="a folder|a symbolic link"):
        load(saved)


def test_the_trace_folder_itself_may_be_a_link(saved, tmp_path):
    (tmp_path / "alias").symlink_to(saved, target_is_directory=True)
    assert [op.label for op in load(tmp_path / "alias").ops] == \
        [op.label for op in load(saved).ops]


@pytest.mark.parametrize("depth", [65, 900, 100_000])
def test_deep_nesting_is_refused_before_parsing_never_a_recursion_error(saved, depth):
    text = (saved / JSON_NAME).read_text()
    nested = "[" * depth + "]" * depth
    (saved / JSON_NAME).write_text(text.replace('"args": ', f'"args": {{"$": "tuple", "v": '
                                                f'[{nested}]}}, "_": ', 1))
    # around the nest: the document, "ops", the op, the tuple and its "v" list
    with pytest.raises(tl.LoadError, match=f"nests {depth + 5} levels deep.*at most 64"):
        load(saved)


@pytest.mark.parametrize("literal, why", [
    ("NaN", "NaN is not JSON"), ("-Infinity", "Infinity is not JSON"),
    ("1e999", "overflows a float"), ("123456789012345678901234567890", "64 bits"),
])
def test_non_finite_and_huge_numbers_are_refused_naming_the_field(saved, literal, why):
    text = (saved / JSON_NAME).read_text()
    (saved / JSON_NAME).write_text(text.replace('"elapsed": ', f'"elapsed": {literal}, "x": ', 1))
    with pytest.raises(tl.LoadError, match=f"trace.json.elapsed: .*{why}"):
        load(saved)


def test_a_duplicated_key_is_refused_naming_it(saved):
    text = (saved / JSON_NAME).read_text()
    (saved / JSON_NAME).write_text(text.replace('"format": ', '"format": "x", "format": ', 1))
    with pytest.raises(tl.LoadError, match="'format' appears twice"):
        load(saved)


def test_a_huge_declared_op_count_is_refused_before_allocating(saved):
    _edit(saved, lambda doc: doc.update(num_recorded=2 ** 62))
    with pytest.raises(tl.LoadError, match="num_recorded: 4611686018427387904 is out of range"):
        load(saved)


def _header(path: Path) -> tuple[dict[str, Any], bytes]:
    data = (path / TENSORS_NAME).read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def _write_header(path: Path, head: dict[str, Any], body: bytes) -> None:
    raw = json.dumps(head).encode()
    (path / TENSORS_NAME).write_bytes(len(raw).to_bytes(8, "little") + raw + body)


@pytest.mark.parametrize("lie, match", [
    (lambda e: e.update(shape=[2 ** 40, 2 ** 40]), "needs .* bytes, but its span is"),
    (lambda e: e.update(dtype="F64"), "needs .* bytes, but its span is"),
    (lambda e: e.update(dtype="PICKLE"), "unknown dtype 'PICKLE'"),
    (lambda e: e.update(data_offsets=[e["data_offsets"][0], 2 ** 62]), "needs|tile|cover"),
    (lambda e: e.update(data_offsets=e["data_offsets"][::-1]), "start <= end|needs"),
])
def test_safetensors_headers_that_lie_are_refused_before_any_tensor_is_made(saved, lie, match):
    head, body = _header(saved)
    lie(head[max(k for k in head if k != "__metadata__")])
    _write_header(saved, head, body)
    with pytest.raises(tl.LoadError, match=match):
        load(saved)


def test_a_header_length_beyond_the_file_is_refused(saved):
    data = (saved / TENSORS_NAME).read_bytes()
    (saved / TENSORS_NAME).write_bytes((2 ** 63).to_bytes(8, "little") + data[8:])
    with pytest.raises(tl.LoadError, match="header length .* exceeds the file"):
        load(saved)


# ---------------------------------------------------------------- saving over things
def _small_trace() -> tl.Trace:
    return tl.trace(nn.Sequential(nn.Linear(3, 2)), torch.randn(1, 3))


@pytest.mark.parametrize("bad", [None, 5, b"p"])
def test_save_to_something_that_is_not_a_path_says_what_it_needs(bad):
    with pytest.raises(tl.SaveError, match="needs a folder path"):
        save(_small_trace(), bad)


def test_save_of_something_that_is_not_a_trace_is_refused(tmp_path):
    with pytest.raises(tl.SaveError, match="needs a Trace"):
        save("trace", tmp_path / "t")  # type: ignore[arg-type]


def test_save_refuses_to_replace_a_file_unless_told(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("precious")
    with pytest.raises(tl.SaveError, match="is a file.*overwrite=True"):
        save(_small_trace(), target)
    assert target.read_text() == "precious"
    save(_small_trace(), target, overwrite=True)
    assert load(target).ops


def test_save_refuses_a_folder_with_other_content_and_overwrite_deletes_nothing(tmp_path):
    (tmp_path / "data.csv").write_text("1,2")
    with pytest.raises(tl.SaveError, match=r"not a lens trace \(it holds \['data.csv'\]\)"):
        save(_small_trace(), tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["data.csv"]
    save(_small_trace(), tmp_path, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == sorted(["data.csv", JSON_NAME, TENSORS_NAME])
    assert load(tmp_path).ops


def test_save_replaces_a_previous_trace_and_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    save(_small_trace(), tmp_path / "empty")
    first = load(tmp_path / "empty")
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    save(tl.trace(model, torch.randn(1, 3)), tmp_path / "empty")
    again = load(tmp_path / "empty")
    assert len(again.ops) != len(first.ops) and "relu" in str(again)


def test_save_refuses_a_foreign_trace_json_and_a_planted_link(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / JSON_NAME).write_text('{"format": "someone-else"}')
    with pytest.raises(tl.SaveError, match="trace.json is not a lens trace"):
        save(_small_trace(), tmp_path / "a")
    outside = tmp_path / "outside.json"
    outside.write_text("keep me")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / JSON_NAME).symlink_to(outside)
    with pytest.raises(tl.SaveError, match="symbolic link"):
        save(_small_trace(), tmp_path / "b")
    save(_small_trace(), tmp_path / "b", overwrite=True)  # replaces the link, not its target
    assert outside.read_text() == "keep me" and not (tmp_path / "b" / JSON_NAME).is_symlink()


@pytest.mark.parametrize("name", ["../trace.json", "/etc/passwd", "..", ".", "", "a/b",
                                  "a\\b", "C:x", "x\0y", 5, None])
def test_file_names_from_a_file_must_be_plain_names_inside_the_folder(saved, name):
    from lens.io._safe import read_regular

    with pytest.raises(tl.LoadError, match="not a plain file name"):
        read_regular(saved, name, "manifest.shards[0]")  # type: ignore[arg-type]
