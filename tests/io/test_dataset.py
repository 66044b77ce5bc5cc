"""extract_dataset / load_dataset_activations: sharded safetensors + manifest, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import lens as tl
from lens.io import extract_dataset, load_dataset_activations
from lens.io.dataset import MANIFEST
from tests.helpers import build
from tests.models import get

SITES = ["relu_1_2", "features.6"]


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def setup():
    model, args, _ = build(get("alexnet_small"))
    torch.manual_seed(1)
    x = torch.randn(10, *args[0].shape[1:])
    return model, TensorDataset(x, torch.arange(10)), x


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _reference(model, x, batch_size):
    """Each batch traced on its own with plain forward hooks: the independent route."""
    got: dict[str, list[torch.Tensor]] = {"features.6": [], "relu_1_2": []}
    conv = dict(model.named_modules())["features.6"]
    relu = dict(model.named_modules())["features.1"]
    hooks = [conv.register_forward_hook(lambda m, i, o: got["features.6"].append(o.clone())),
             relu.register_forward_hook(lambda m, i, o: got["relu_1_2"].append(o.clone()))]
    try:
        with torch.no_grad():
            for s in range(0, len(x), batch_size):
                model(x[s:s + batch_size])
    finally:
        for h in hooks:
            h.remove()
    return {k: torch.cat(v) for k, v in got.items()}


def test_activations_equal_a_hook_run_batch_by_batch(setup, tmp_path):
    model, ds, x = setup
    full = tl.trace(model, x[:1])
    assert full["relu_1_2"].module == "features.1"  # the hook above watches the same op
    manifest = extract_dataset(model, ds, SITES, batch_size=3, output_dir=tmp_path,
                               progress=False)
    assert manifest["completed"] and len(manifest["shards"]) == 4
    assert [(s["start"], s["stop"]) for s in manifest["shards"]] == [(0, 3), (3, 6), (6, 9),
                                                                      (9, 10)]
    assert manifest["sites"]["relu_1_2"]["shape"] == list(full["relu_1_2"].shape[1:])
    acts = load_dataset_activations(tmp_path)
    ref = _reference(model, x, 3)
    for site in SITES:
        assert torch.equal(acts[site], ref[site]), site
    only = load_dataset_activations(tmp_path, sites=["features.6"])
    assert list(only) == ["features.6"]


@pytest.mark.parametrize("batches_per_shard,fail_at", [(1, 2), (2, 2), (2, 1), (1, 0)])
def test_interrupted_then_resumed_equals_an_uninterrupted_run(setup, tmp_path,
                                                              batches_per_shard, fail_at):
    model, ds, _ = setup
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    extract_dataset(model, ds, SITES, batch_size=3, output_dir=whole, progress=False,
                    batches_per_shard=batches_per_shard)

    def crash(b, acts):
        if b == fail_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        extract_dataset(model, ds, SITES, batch_size=3, output_dir=broken, progress=False,
                        batches_per_shard=batches_per_shard, on_batch=crash)
    partial = json.loads((broken / MANIFEST).read_text())
    assert not partial["completed"]
    kept = {s["file"]: (broken / s["file"]).read_bytes() for s in partial["shards"]}
    seen: list[int] = []
    extract_dataset(model, ds, SITES, batch_size=3, output_dir=broken, progress=False,
                    batches_per_shard=batches_per_shard, on_batch=lambda b, a: seen.append(b))
    first_missing = len(partial["shards"]) * batches_per_shard
    assert seen == list(range(first_missing, 4))  # completed shards were not recomputed
    for name, data in kept.items():  # nor rewritten
        assert (broken / name).read_bytes() == data
    assert _files(broken) == _files(whole)


def _resume_after_a_crash_with_shard_2_in_place(setup, tmp_path, shard=lambda data: data):
    """Extract once whole, once cut off at batch 2 with ``shard(whole's shard 2)`` left in
    the folder (a crash between the shard's rename and the manifest update), then resume:
    the batches the resume computed, and both folders."""
    model, ds, _ = setup
    extract_dataset(model, ds, SITES, batch_size=3, output_dir=tmp_path / "whole",
                    progress=False)
    d = tmp_path / "cut"
    with pytest.raises(Interrupt):
        extract_dataset(model, ds, SITES, batch_size=3, output_dir=d, progress=False,
                        on_batch=lambda b, a: _raise_at(b, 2))
    shard2 = (tmp_path / "whole" / "shard_000002.safetensors").read_bytes()
    (d / "shard_000002.safetensors").write_bytes(shard(shard2))
    seen: list[int] = []
    extract_dataset(model, ds, SITES, batch_size=3, output_dir=d, progress=False,
                    on_batch=lambda b, a: seen.append(b))
    return seen, d, tmp_path / "whole"


def test_a_shard_renamed_before_its_manifest_entry_is_adopted(setup, tmp_path):
    seen, cut, whole = _resume_after_a_crash_with_shard_2_in_place(setup, tmp_path)
    assert seen == [3]
    assert _files(cut) == _files(whole)


def _other_sites(data: bytes) -> bytes:
    from safetensors.torch import load, save

    return save({f"x{k}": v for k, v in load(data).items()})


@pytest.mark.parametrize("damage", [
    lambda data: data[:8] + data[8:].replace(b'"F32"', b'"F16"', 1),  # spans that lie
    _other_sites,  # a valid safetensors file, but not of this extraction
])
def test_a_bad_shard_in_place_is_computed_again_not_adopted(setup, tmp_path, damage):
    seen, cut, whole = _resume_after_a_crash_with_shard_2_in_place(setup, tmp_path, damage)
    assert seen == [2, 3]
    assert _files(cut) == _files(whole)


def _raise_at(b: int, n: int) -> None:
    if b == n:
        raise Interrupt


def test_a_different_spec_in_the_same_directory_is_refused(setup, tmp_path):
    model, ds, _ = setup
    extract_dataset(model, ds, SITES, batch_size=3, output_dir=tmp_path, progress=False)
    before = _files(tmp_path)
    for change in ({"sites": ["relu_1_2"]}, {"batch_size": 4}, {"batches_per_shard": 2}):
        kwargs = {"sites": SITES, "batch_size": 3, **change}
        with pytest.raises(tl.LensError, match="another spec"):
            extract_dataset(model, ds, output_dir=tmp_path, progress=False, **kwargs)
    assert _files(tmp_path) == before


def test_loaders_iterables_and_dict_sites(setup, tmp_path):
    model, ds, x = setup
    extract_dataset(model, DataLoader(ds, batch_size=4), SITES, output_dir=tmp_path / "dl",
                    progress=False)
    batches = [x[i:i + 5] for i in range(0, 10, 5)]
    extract_dataset(model, None, {"conv": "features.6", "first_relu": tl.func("relu")
                                           & tl.in_module("features.1")},
                    output_dir=tmp_path / "it", progress=False, batches=iter(batches))
    a = load_dataset_activations(tmp_path / "dl")
    b = load_dataset_activations(tmp_path / "it")
    ref4, ref5 = _reference(model, x, 4), _reference(model, x, 5)
    assert torch.equal(a["features.6"], ref4["features.6"])
    assert torch.equal(b["conv"], ref5["features.6"])
    assert torch.equal(b["first_relu"], ref5["relu_1_2"])


def test_site_naming_several_ops_and_partial_loads_are_errors(setup, tmp_path):
    model, ds, _ = setup
    with pytest.raises(tl.PayloadError, match="exactly one op"):
        extract_dataset(model, ds, {"r": tl.func("relu")}, output_dir=tmp_path / "a",
                        progress=False)
    with pytest.raises(Interrupt):
        extract_dataset(model, ds, SITES, batch_size=3, output_dir=tmp_path / "b",
                        progress=False, on_batch=lambda b, a: _raise_at(b, 1))
    with pytest.raises(tl.LoadError, match="did not finish"):
        load_dataset_activations(tmp_path / "b")
    part = load_dataset_activations(tmp_path / "b", allow_partial=True)
    assert part["features.6"].shape[0] == 3
    with pytest.raises(tl.LoadError, match="no site"):
        load_dataset_activations(tmp_path / "b", sites=["nope"], allow_partial=True)


def test_layers_is_the_reference_systems_name_for_sites(setup, tmp_path):
    model, ds, x = setup
    extract_dataset(model, ds, layers=SITES, batch_size=5, output_dir=tmp_path,
                    progress=False)
    acts = load_dataset_activations(tmp_path)
    assert torch.equal(acts["features.6"], _reference(model, x, 5)["features.6"])
    with pytest.raises(tl.LensError, match="sites="):
        extract_dataset(model, ds, output_dir=tmp_path / "x", progress=False)


def test_a_list_of_samples_is_collated_like_a_dataset(setup, tmp_path):
    model, _, x = setup
    samples = [x[i] for i in range(len(x))]  # unbatched: (3, H, W) each
    manifest = extract_dataset(model, samples, layers=["features.6"], batch_size=4,
                               output_dir=tmp_path / "list", progress=False)
    assert len(manifest["shards"]) == 3  # 10 samples in batches of 4
    got = load_dataset_activations(tmp_path / "list")
    assert torch.equal(got["features.6"], _reference(model, x, 4)["features.6"])
    extract_dataset(model, tuple(samples), layers=["features.6"], batch_size=4,
                    output_dir=tmp_path / "tuple", progress=False)
    assert torch.equal(load_dataset_activations(tmp_path / "tuple")["features.6"],
                       got["features.6"])


def test_batches_come_only_from_a_dataloader_or_batches(setup, tmp_path):
    model, _, x = setup
    with pytest.raises(tl.ArgumentTypeError, match="batches="):
        extract_dataset(model, iter([x[:5], x[5:]]), SITES, output_dir=tmp_path / "a",
                        progress=False)
    with pytest.raises(tl.LensError, match="once"):
        extract_dataset(model, x, SITES, batches=[x], output_dir=tmp_path / "b",
                        progress=False)
    assert not (tmp_path / "a").exists()
