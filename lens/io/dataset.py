"""Activations of a whole dataset, written as sharded safetensors plus a JSON manifest.

``extract_dataset(model, data, sites, output_dir=...)`` traces each batch with
``save=<sites>`` and appends the sites' payloads (batch dimension first) to shards of
``batches_per_shard`` batches. Each shard is written to a temporary file and renamed
into place, then the manifest is rewritten the same way, so an interrupted run (a crash,
Ctrl-C) leaves only complete shards behind. Run it again with ``resume=True`` (the
default): shards the manifest lists are skipped, a shard renamed into place just before
the interruption is adopted, and the rest is computed. Nothing is written twice and the
files are the same bytes as an uninterrupted run's. A run with a different spec (sites,
batch size, shard size, model class, dtype) aimed at the same directory is refused.

Samples or batches: ``data`` is a ``torch.utils.data.Dataset`` or a list/tuple of samples
(both collated here, ``batch_size`` at a time), a tensor (split along dim 0), or a
``DataLoader`` (its own batching); any other iterable of ready batches goes to
``batches=`` (so a list of samples is never mistaken for batches). A batch that is a
tensor is the model's input; a tuple or list gives its first element as the input (the
rest, such as labels, is ignored); a dict is passed as keyword arguments. Pass
``inputs=fn`` (batch -> (args, kwargs)) for anything else. Batches run under
``torch.no_grad()``.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from ..errors import ArgumentTypeError, LensError, LoadError, PayloadError
from ..selectors import Selector
from ..tracing import Op, trace
from ._dataset_files import FORMAT, VERSION, check_manifest, read_manifest_json, read_shard
from ._fingerprint import batch_fingerprint, model_fingerprint
from ._lock import FolderLock

MANIFEST = "manifest.json"


def extract_dataset(model: Any, data: Any = None, sites: Any = None, *,
                    output_dir: str | os.PathLike[str], layers: Any = None,
                    batches: Iterable[Any] | None = None,
                    batch_size: int = 32, batches_per_shard: int = 1,
                    resume: bool | Literal["force"] = True,
                    on_batch: Callable[[int, dict[str, torch.Tensor]], Any] | None = None,
                    inputs: Callable[[Any], tuple[tuple[Any, ...], dict[str, Any]]] | None = None,
                    dtype: torch.dtype | None = None, progress: bool = True) -> dict[str, Any]:
    """Save ``sites``' activations over ``data`` to ``output_dir``; returns the manifest.

    ``sites``: labels and module addresses (``['relu_1_2', 'features.6']``), or a dict
    name -> label, address or selector. Each site must name one op per batch.
    ``layers=`` is accepted as another name for ``sites`` (the reference system's).
    ``on_batch(batch_index, {name: tensor})`` is called after each batch is traced.
    ``resume``: True continues an interrupted run of the same spec, model and data;
    False starts over; 'force' continues even though the model or data fingerprint differs.
    """
    if (sites is None) == (layers is None):
        raise LensError("extract_dataset needs the sites to save: pass sites=[...] (or "
                        "layers=[...]), e.g. sites=['relu_1_2', 'features.6'].")
    if (data is None) == (batches is None):
        raise LensError("extract_dataset needs the data once: samples as data= (a Dataset, "
                        "a list or tuple of samples, a tensor, or a DataLoader), or ready "
                        "batches as batches=[...].")
    if resume not in (True, False, "force"):
        raise LensError(f"resume={resume!r}: use True, False or 'force'.")
    named = _named_sites(sites if sites is not None else layers)
    source = _samples(data, batch_size) if batches is None else (batches, _len(batches))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with FolderLock(out, "extraction"):
        return _extract(model, source, named, out, batch_size, batches_per_shard, resume,
                        on_batch, inputs, dtype, progress)


def _extract(model: Any, source: tuple[Iterable[Any], int | None], named: dict[str, Any],
             out: Path, batch_size: int,
             batches_per_shard: int, resume: bool | str, on_batch: Any, inputs: Any,
             dtype: torch.dtype | None, progress: bool) -> dict[str, Any]:
    spec = {"sites": {k: repr(v) for k, v in named.items()}, "batch_size": int(batch_size),
            "batches_per_shard": int(batches_per_shard),
            "model": type(model).__name__, "dtype": None if dtype is None else str(dtype)}
    spec_hash = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    batches, total = source
    batches, first = _peek(batches)
    prints = {"model": model_fingerprint(model),
              "data": f"{total} batches, first {batch_fingerprint(first)}"}
    manifest = _start(out, spec, spec_hash, resume, prints)
    if manifest["completed"]:
        return manifest
    done = {s["index"]: s for s in manifest["shards"]}
    n_shards = None if total is None else -(-total // batches_per_shard)
    bar = _progress(total, progress)
    buffer: list[dict[str, torch.Tensor]] = []
    shard = b = 0
    try:
        for b, batch in enumerate(batches):
            shard = b // batches_per_shard
            if shard in done or (shard not in done and _adopt(out, manifest, shard, done)):
                bar.update(1)
                continue
            acts = _activations(model, batch, named, inputs, dtype)
            if on_batch is not None:
                on_batch(b, acts)
            buffer.append(acts)
            bar.update(1)
            if len(buffer) == batches_per_shard:
                _write_shard(out, manifest, shard, buffer, b)
                done[shard] = manifest["shards"][-1]
                buffer = []
        if buffer:
            _write_shard(out, manifest, shard, buffer, b)
    finally:
        bar.close()
    if n_shards is not None and len(manifest["shards"]) != n_shards:
        raise LensError(f"Expected {n_shards} shards but have {len(manifest['shards'])}; the "
                        "data yielded fewer batches than its length says.")
    manifest["completed"] = True
    _write_json(out / MANIFEST, manifest)
    return manifest


def load_dataset_activations(output_dir: str | os.PathLike[str],
                             sites: Sequence[str] | None = None,
                             allow_partial: bool = False) -> dict[str, torch.Tensor]:
    """``{site: tensor}`` with every shard concatenated along the sample dimension.

    The folder is untrusted: the manifest and every shard header are checked (see
    ``_dataset_files`` and ``_safe``), and shards must tile the rows exactly, or a
    ``LoadError`` names the shard and the field."""
    out = Path(output_dir)
    manifest = _read_manifest(out)
    if not manifest["completed"] and not allow_partial:
        raise LoadError(f"The extraction in {out} did not finish (completed is false; "
                        f"{len(manifest['shards'])} "
                        "shards written). Resume it with extract_dataset(..., resume=True), "
                        "or pass allow_partial=True to read the shards that exist.")
    names = list(manifest["sites"]) if sites is None else list(sites)
    missing = [n for n in names if n not in manifest["sites"]]
    if missing:
        raise LoadError(f"{out} has no site(s) {missing}; it holds {list(manifest['sites'])}.")
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for s in manifest["shards"]:
        rows = s["stop"] - s["start"]
        site = manifest["sites"]
        expect: dict[str, tuple[str, Sequence[int]]] = {
            n: (site[n]["dtype"], [rows, *site[n]["shape"]]) for n in names}
        tensors = read_shard(out, s["file"], expect, list(site))
        for n in names:
            parts[n].append(tensors[n])
    return {n: torch.cat(p) if p else torch.empty(0) for n, p in parts.items()}


# ---------------------------------------------------------------------------- helpers
def _named_sites(sites: Any) -> dict[str, Any]:
    if isinstance(sites, str):
        sites = [sites]
    if isinstance(sites, Mapping):
        named = {str(k): v for k, v in sites.items()}
    elif isinstance(sites, (list, tuple)) and all(isinstance(s, str) for s in sites):
        named = {s: s for s in sites}
    else:
        raise LensError("sites= takes a list of labels/module addresses, e.g. ['relu_1_2', "
                        "'features.6'], or a dict {name: label, address or selector}.")
    if not named:
        raise LensError("sites= is empty: name at least one label or module address.")
    return named


def _start(out: Path, spec: dict[str, Any], spec_hash: str, resume: bool | str,
           prints: dict[str, str]) -> dict[str, Any]:
    path = out / MANIFEST
    if path.exists():
        old = _read_manifest(out)
        if old["spec_hash"] != spec_hash:
            raise LensError(
                f"{out} holds activations extracted with another spec ({old['spec']}); this "
                f"run's spec is {spec}. Use another output_dir, or delete that one.")
        if resume:
            differ = [k for k in ("model", "data") if old.get("fingerprints", {}).get(k)
                      != prints[k]]
            if differ and resume != "force":
                raise LensError(
                    f"{out} was extracted from another {' and '.join(differ)} (fingerprints "
                    f"{old.get('fingerprints')}; this run's are {prints}). Use another "
                    "output_dir, pass resume=False to start over there, or resume='force' "
                    "if the change cannot alter the activations. (A shuffling DataLoader "
                    "changes the first batch on every run: pass shuffle=False.)")
            if differ:
                old["fingerprints"] = prints
                _write_json(path, old)
            return old
        for s in old["shards"]:
            (out / s["file"]).unlink(missing_ok=True)
    manifest = {"format": FORMAT, "version": VERSION, "spec": spec, "spec_hash": spec_hash,
                "fingerprints": prints, "sites": {}, "shards": [], "rows": 0,
                "completed": False}
    _write_json(path, manifest)
    return manifest


def _read_manifest(out: Path) -> dict[str, Any]:
    if not (out / MANIFEST).exists() and not (out / MANIFEST).is_symlink():
        raise LoadError(f"No activation manifest in {out} ({MANIFEST} is missing).")
    return check_manifest(read_manifest_json(out, MANIFEST), str(out / MANIFEST))


def _peek(batches: Iterable[Any]) -> tuple[Iterator[Any], Any]:
    """The first batch (built, if lazy) and an iterator that still yields it."""
    it = iter(batches)
    try:
        first = next(it)
    except StopIteration:
        return iter(()), None
    if isinstance(first, _Lazy):
        first = first.make()
    return itertools.chain([first], it), first


def _samples(data: Any, batch_size: int) -> tuple[Iterable[Any], int | None]:
    """Batches from ``data=``: a DataLoader's own, or ``batch_size`` samples collated."""
    from torch.utils.data import DataLoader, Dataset, default_collate

    if isinstance(data, DataLoader):
        return data, _len(data)
    if isinstance(data, (list, tuple)) or (isinstance(data, Dataset)
                                            and _len(data) is not None):
        n = len(data)  # type: ignore[arg-type]

        def collate(start: int) -> Any:
            return default_collate([data[i] for i in range(start, min(start + batch_size, n))])

        def gen() -> Iterator[Any]:
            for start in range(0, n, batch_size):
                yield _Lazy(functools.partial(collate, start))
        return gen(), -(-n // batch_size)
    if isinstance(data, torch.Tensor):
        n = data.shape[0]
        return (data[s:s + batch_size] for s in range(0, n, batch_size)), -(-n // batch_size)
    raise ArgumentTypeError(
        f"extract_dataset(data=...) takes samples (a Dataset, a list or tuple of samples, a "
        f"tensor) or a DataLoader; got {type(data).__name__}. Pass an iterable of ready "
        "batches as batches=... instead.")


class _Lazy:
    """A batch built only when needed (skipped shards of a Dataset cost nothing)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def _len(x: Any) -> int | None:
    try:
        return len(x)
    except TypeError:
        return None


def _activations(model: Any, batch: Any, named: dict[str, Any], inputs: Any,
                 dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    if isinstance(batch, _Lazy):
        batch = batch.make()
    if inputs is not None:
        args, kwargs = inputs(batch)
    elif isinstance(batch, torch.Tensor):
        args, kwargs = (batch,), {}
    elif isinstance(batch, (tuple, list)) and batch:
        args, kwargs = (batch[0],), {}
    elif isinstance(batch, Mapping):
        args, kwargs = (), dict(batch)
    else:
        raise LensError(f"Cannot feed a batch of type {type(batch).__name__} to the model; "
                        "pass inputs=lambda batch: ((x,), {}) to say how.")
    with torch.no_grad():
        t = trace(model, *args, input_kwargs=kwargs, save=list(named.values()),
                  detach=True, device="cpu", dtype=dtype)
    return {name: _one(t, name, site).contiguous() for name, site in named.items()}


def _one(t: Any, name: str, site: Any) -> torch.Tensor:
    if isinstance(site, Selector):
        bound = site.bind_ordinals(t.ops)
        found = [op for op in t.ops if bound(op)]
        if len(found) != 1:
            raise PayloadError(f"Site {name!r} ({site!r}) matched {len(found)} ops in a batch; "
                               "each site must name exactly one op.")
        out: torch.Tensor = found[0].out
        return out
    hit = t[site]
    if not isinstance(hit, Op):
        raise PayloadError(f"Site {name!r} names {len(hit)} ops ({hit!r}); name one, e.g. "
                           f"'{hit[0].label}'.")
    return hit.out


def _write_shard(out: Path, manifest: dict[str, Any], shard: int,
                 buffer: list[dict[str, torch.Tensor]], last_batch: int) -> None:
    from safetensors.torch import save_file

    tensors = {n: torch.cat([acts[n] for acts in buffer]) for n in buffer[0]}
    name = f"shard_{shard:06d}.safetensors"
    tmp = out / (name + ".tmp")
    # One metadata key: safetensors writes several in no fixed order, and shards must
    # come out byte-identical whether or not the run was interrupted.
    save_file(tensors, str(tmp), metadata={"format": f"{FORMAT}/{VERSION}"})
    os.replace(tmp, out / name)
    _record_shard(out, manifest, shard, name, tensors)


def _record_shard(out: Path, manifest: dict[str, Any], shard: int, name: str,
                  tensors: dict[str, torch.Tensor]) -> None:
    n = next(iter(tensors.values())).shape[0]
    start = max((s["stop"] for s in manifest["shards"]), default=0)
    if not manifest["sites"]:
        manifest["sites"] = {k: {"shape": list(v.shape[1:]), "dtype": str(v.dtype)}
                             for k, v in tensors.items()}
    manifest["shards"].append({"index": shard, "file": name, "start": start,
                               "stop": start + n})
    manifest["rows"] = start + n
    _write_json(out / MANIFEST, manifest)


def _adopt(out: Path, manifest: dict[str, Any], shard: int, done: dict[int, Any]) -> bool:
    """A shard file renamed into place before its manifest entry was written (interrupted
    between the two): check it and list it instead of computing it again. It is read like
    any shard (``read_shard``) and must hold the manifest's sites, dtypes and row shapes."""
    name = f"shard_{shard:06d}.safetensors"
    if not (out / name).exists() or shard != len(manifest["shards"]):
        return False
    sites = manifest["sites"] or None
    try:
        tensors = read_shard(out, name, None, None if sites is None else list(sites))
    except LoadError:
        return False  # torn, unreadable or not a regular file: computed again
    if not _adoptable(tensors, sites):
        return False  # not this extraction's shard: computed again
    _record_shard(out, manifest, shard, name, tensors)
    done[shard] = manifest["shards"][-1]
    return True


def _adoptable(tensors: dict[str, torch.Tensor], sites: dict[str, Any] | None) -> bool:
    """Sites with one row count (>= 1), of the manifest's dtypes and row shapes if known."""
    rows = {t.shape[0] if t.dim() else 0 for t in tensors.values()}
    if len(rows) != 1 or 0 in rows:
        return False
    return sites is None or all({"shape": list(t.shape[1:]), "dtype": str(t.dtype)} == sites[k]
                                for k, t in tensors.items())


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _progress(total: int | None, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="extract_dataset", unit="batch", disable=not enabled)
