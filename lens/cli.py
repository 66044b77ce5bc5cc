"""The ``lens`` command line: ``lens sweep SPEC.py --out DIR [--executor ray]``.

A sweep spec is a Python file (your own code, run as a script) that defines:
``model_fn`` (builds the model), ``sites``, ``metric``, and either ``clean`` and
``corrupted`` (patching, attribution) or ``inputs`` (ablation). Optional: ``kind``
('patching' default, 'ablation', 'attribution'), ``positions``, ``position_dim``,
``batch_size``, ``action``, ``output``, ``input_kwargs``.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from typing import Any

from .errors import LensError

_KINDS = ("patching", "ablation", "attribution")


def _need(ns: dict[str, Any], name: str, path: str) -> Any:
    if name not in ns:
        raise LensError(f"{path} must define `{name}` (see `lens sweep --help`).")
    return ns[name]


def run_spec(path: str, out: str | None, executor: Any, progress: bool = True) -> Any:
    from . import sweeps

    ns = runpy.run_path(path, run_name="lens_sweep_spec")
    kind = ns.get("kind", "patching")
    if kind not in _KINDS:
        raise LensError(f"{path}: kind={kind!r}; use one of {_KINDS}.")
    model_fn = _need(ns, "model_fn", path)
    common = {"metric": _need(ns, "metric", path),
              "input_kwargs": ns.get("input_kwargs"), "output": ns.get("output")}
    sites = _need(ns, "sites", path)
    if kind == "attribution":
        return sweeps.attribution_patching(
            model_fn(), _need(ns, "clean", path), _need(ns, "corrupted", path), sites,
            positions=ns.get("positions", "each"), position_dim=ns.get("position_dim", 1),
            **common)
    opts = {"batch_size": ns.get("batch_size", 32), "executor": executor, "out": out,
            "model_fn": model_fn, "position_dim": ns.get("position_dim", 1),
            "progress": progress, **common}
    if kind == "patching":
        return sweeps.patching(None, _need(ns, "clean", path), _need(ns, "corrupted", path),
                               sites, positions=ns.get("positions", "each"), **opts)
    return sweeps.ablation(None, _need(ns, "inputs", path), sites, action=ns.get("action"),
                           positions=ns.get("positions"), **opts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lens", description="lens command line")
    sub = parser.add_subparsers(dest="command", required=True)
    sw = sub.add_parser("sweep", help="run a sweep defined in a Python file",
                        description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sw.add_argument("spec", help="the sweep spec, a .py file")
    sw.add_argument("--out", default=None, help="result directory (resumable)")
    sw.add_argument("--executor", choices=("local", "ray"), default="local")
    sw.add_argument("--address", default=None, help="Ray cluster address, e.g. auto")
    sw.add_argument("--workers", type=int, default=None, help="Ray workers")
    sw.add_argument("--gpus-per-worker", type=float, default=0)
    sw.add_argument("--table", default=None, help="also write the table (.csv/.parquet)")
    args = parser.parse_args(argv)
    executor: Any = "local"
    if args.executor == "ray":
        from .sweeps import RayExecutor

        executor = RayExecutor(address=args.address, workers=args.workers,
                               num_gpus_per_worker=args.gpus_per_worker)
    try:
        result = run_spec(args.spec, args.out, executor)
    except LensError as e:
        print(f"lens: {e}", file=sys.stderr)
        return 2
    frame = result.to_pandas()
    print(frame.to_string(max_rows=40))
    if args.table:
        print(f"table written to {result.save(args.table)}")
    if args.out:
        print(f"rows stored in {args.out}")
    return 0
