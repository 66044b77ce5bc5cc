"""Activation datasets on disk are untrusted, and resuming checks it is fed the same job.

Shards must tile the rows exactly (none twice, no gap or overlap, one dtype and shape per
site, none missing), and a resumed extraction refuses another model or other data."""

from __future__ import annotations

import json
import os
import shutil
import struct

import pytest
import torch

import lens as tl
from lens.io import extract_dataset, load_dataset_activations
from lens.io.dataset import MANIFEST
from tests.sweeps._kill import SITES, extract_data, run_extract_job, toy

SHARD = "shard_{:06d}.safetensors"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    run_extract_job(str(d))
    return d


def copy(good, tmp_path):
    d = tmp_path / "d"
    shutil.copytree(good, d)
    return d


def edit_manifest(d, fn):
    m = json.loads((d / MANIFEST).read_text())
    fn(m)
    (d / MANIFEST).write_text(json.dumps(m))


def test_the_reference_folder_loads_and_equals_a_hook_run(good):
    acts = load_dataset_activations(good)
    model, x = toy(), extract_data()
    with torch.no_grad():
        want = model.fc2(torch.relu(model.fc1(model.emb(x).cumsum(1))))
    assert torch.equal(acts["fc2"], want)


def _swap_first_two(m):
    m["shards"][0], m["shards"][1] = m["shards"][1], m["shards"][0]


CASES = {
    "listed twice": (lambda m: m["shards"].insert(1, dict(m["shards"][0])),
                     r"shards\[1\]\.file: shard shard_000000\.safetensors is listed twice"),
    "same file twice": (lambda m: m["shards"][2].update(file=SHARD.format(1)),
                        r"shards\[2\]\.file: shard shard_000001.* listed twice"),
    "gap": (lambda m: [s.update(start=s["start"] + 1, stop=s["stop"] + 1)
                       for s in m["shards"][2:]],
            r"shards\[2\]\.start of shard shard_000002.*a gap"),
    "overlap": (lambda m: m["shards"][1].update(start=1),
                r"shards\[1\]\.start of shard shard_000001.*an overlap"),
    "out of order": (_swap_first_two, r"shards\[0\]\.index of shard shard_000001"),
    "missing entry": (lambda m: m["shards"].pop(1), r"shards\[1\]\.index of shard"),
    "empty range": (lambda m: m["shards"][3].update(stop=6), r"shards\[3\]\.stop"),
    "declared too many rows": (lambda m: (m["shards"][3].update(stop=9), m.update(rows=9)),
                               r"shard_000003\.safetensors: site 'fc1' is F32 \[2, 4, 8\]"),
    "last entry dropped": (lambda m: m["shards"].pop(),
                           r"rows is 8 but the listed shards end at row 6"),
    "site shape": (lambda m: m["sites"]["fc2"].update(shape=[4, 5]),
                   r"shard_000000\.safetensors: site 'fc2' is F32 \[2, 4, 4\], but the "
                   r"manifest says torch.float32 \[2, 4, 5\]"),
    "site dtype": (lambda m: m["sites"]["fc2"].update(dtype="torch.float64"),
                   r"shard_000000\.safetensors: site 'fc2' is F32"),
}


@pytest.mark.parametrize("case", CASES)
def test_shards_must_tile_the_rows_exactly(good, tmp_path, case):
    fn, match = CASES[case]
    d = copy(good, tmp_path)
    edit_manifest(d, fn)
    with pytest.raises(tl.LoadError, match=match):
        load_dataset_activations(d)


def _resave(path, **tensors):
    from safetensors.torch import save_file

    save_file(tensors, str(path))


def test_a_shard_of_another_dtype_or_shape_or_a_missing_shard_is_named(good, tmp_path):
    d = copy(good, tmp_path)
    _resave(d / SHARD.format(2), fc1=torch.zeros(2, 4, 8, dtype=torch.float64),
            fc2=torch.zeros(2, 4, 4))
    with pytest.raises(tl.LoadError, match=r"shard_000002.safetensors: site 'fc1' is F64"):
        load_dataset_activations(d)
    _resave(d / SHARD.format(2), fc1=torch.zeros(2, 4, 7), fc2=torch.zeros(2, 4, 4))
    with pytest.raises(tl.LoadError, match=r"shard_000002.safetensors: site 'fc1' is F32 "
                                           r"\[2, 4, 7\]"):
        load_dataset_activations(d)
    _resave(d / SHARD.format(2), fc2=torch.zeros(2, 4, 4))
    with pytest.raises(tl.LoadError, match=r"shard_000002.safetensors: holds sites \['fc2'\] "
                                           r"but the manifest lists \['fc1', 'fc2'\]"):
        load_dataset_activations(d)
    (d / SHARD.format(2)).unlink()
    with pytest.raises(tl.LoadError, match=r"shard_000002.safetensors is missing"):
        load_dataset_activations(d)
    assert load_dataset_activations(good)["fc1"].shape[0] == 8


def test_links_fifos_and_folders_in_place_of_files_are_refused(good, tmp_path):
    outside = tmp_path / "outside.safetensors"
    shutil.copy(good / SHARD.format(1), outside)
    makers = {"link out": (lambda p: p.symlink_to(outside), "a symbolic link"),
              "link in": (lambda p: p.symlink_to(p.parent / SHARD.format(0)),
                          "a symbolic link"),
              "fifo": (lambda p: os.mkfifo(p), "a FIFO"), "folder": (lambda p: p.mkdir(),
                                                                      "a folder")}
    for name, (make, kind) in makers.items():
        d = copy(good, tmp_path / name)
        (d / SHARD.format(1)).unlink()
        make(d / SHARD.format(1))
        with pytest.raises(tl.LoadError, match=f"shard_000001.safetensors is {kind}, so it "
                                               "cannot be opened as a plain file"):
            load_dataset_activations(d)
    d = copy(good, tmp_path / "manifest")
    shutil.move(d / MANIFEST, tmp_path / "elsewhere.json")
    (d / MANIFEST).symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(tl.LoadError, match="manifest.json is a symbolic link, so it cannot be "
                                           "opened as a plain file"):
        load_dataset_activations(d)


def test_a_lying_header_length_is_refused_before_reading_on(good, tmp_path):
    d = copy(good, tmp_path)
    data = (d / SHARD.format(0)).read_bytes()
    (d / SHARD.format(0)).write_bytes(struct.pack("<Q", 2**60) + data[8:])
    with pytest.raises(tl.LoadError, match="shard_000000.safetensors: header length"):
        load_dataset_activations(d)


def test_resume_refuses_another_model_or_other_data_unless_forced(tmp_path):
    data = extract_data()
    with pytest.raises(RuntimeError):
        extract_dataset(toy(), data, SITES, output_dir=tmp_path, batch_size=2,
                        progress=False, on_batch=lambda b, a: _stop(b))
    other = toy()
    with torch.no_grad():
        other.fc2.weight[0, 0] += 1.0
    with pytest.raises(tl.LensError, match="another model.*resume='force'"):
        extract_dataset(other, data, SITES, output_dir=tmp_path, batch_size=2,
                        progress=False)
    with pytest.raises(tl.LensError, match="another data"):
        extract_dataset(toy(), (data + 1) % 10, SITES, output_dir=tmp_path, batch_size=2,
                        progress=False)
    with pytest.raises(tl.LensError, match="another data"):
        extract_dataset(toy(), data[:6], SITES, output_dir=tmp_path, batch_size=2,
                        progress=False)
    seen: list[int] = []
    extract_dataset(other, data, SITES, output_dir=tmp_path, batch_size=2, progress=False,
                    resume="force", on_batch=lambda b, a: seen.append(b))
    assert seen == [2, 3]  # the forced run kept the shards the first model wrote
    fresh = tmp_path / "fresh"
    extract_dataset(toy(), data, SITES, output_dir=fresh, batch_size=2, progress=False)
    mixed, clean = load_dataset_activations(tmp_path), load_dataset_activations(fresh)
    assert torch.equal(mixed["fc2"][:4], clean["fc2"][:4])
    assert not torch.equal(mixed["fc2"][4:], clean["fc2"][4:])
    extract_dataset(toy(), data, SITES, output_dir=tmp_path, batch_size=2, progress=False,
                    resume=False)  # start over with the first model
    assert torch.equal(load_dataset_activations(tmp_path)["fc2"], clean["fc2"])


def _stop(b):
    if b == 2:
        raise RuntimeError("interrupted")
