"""``make bench``: print every benchmark figure as a ratio to the raw forward pass.

Each section measures its own raw forward in the same process, with a fixed thread
count, the median of interleaved runs after warm-up. The ``regimes`` section prints the
targets table of issue 13 in both regimes (dispatch-bound and GPT-2-small-shaped).
Results are also written to ``bench-out/results.json``.

    python -m benchmarks.run                       # everything (make bench)
    python -m benchmarks.run --only regimes --regime dispatch --quick   # make bench-quick
"""

from __future__ import annotations

import argparse
import json
import math
import platform
from pathlib import Path
from typing import Any

import torch

from . import capture, extraction, interventions, regimes, sweeps
from .common import THREADS, Section, bench_models

SECTIONS = {
    "capture": capture.run,
    "postprocess": capture.postprocess,
    "extraction": extraction.run,
    "interventions": interventions.run,
    "sweeps": sweeps.run,
}
ALL = ["regimes", *SECTIONS]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None, choices=ALL,
                        help="sections to run (default: all)")
    parser.add_argument("--regime", nargs="*", default=None, choices=sorted(regimes.REGIMES),
                        help="regimes of the 'regimes' section (default: both)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats per figure in the 'regimes' section")
    parser.add_argument("--quick", action="store_true",
                        help="regimes: 5 repeats, one sweep run, a 1,000-op in-place chain")
    opts = parser.parse_args(argv)
    torch.manual_seed(0)
    print(f"lens benchmarks: torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}")
    results: list[Section] = []
    table: dict[str, Any] = {}
    wanted = [s for s in ALL if not opts.only or s in opts.only]
    if "regimes" in wanted:
        print("\n[regimes]")
        overrides: dict[str, Any] = ({"repeats": 5, "sweep_repeats": 1, "inplace_ops": 1000}
                                     if opts.quick else {})
        if opts.repeats:
            overrides["repeats"] = opts.repeats
        sec, table = regimes.run(opts.regime, overrides)
        results.append(sec)
    rest = [s for s in wanted if s != "regimes"]
    if rest:
        torch.set_num_threads(THREADS)
        print(f"\n({THREADS} threads from here on)")
        models = bench_models()
        for name in rest:
            print(f"\n[{name}]")
            results.append(SECTIONS[name](models))
    write(results, table)


def write(results: list[Section], table: dict[str, Any]) -> None:
    out = Path("bench-out")
    out.mkdir(exist_ok=True)
    keys = ("name", "value", "unit", "target", "note")
    payload = {
        "torch": torch.__version__,
        "sections": [{"section": s.title, "rows": [dict(zip(keys, r, strict=True))
                                                   for r in s.rows]} for s in results],
        "regimes": {name: {key: {"value": fig[key], "unit": unit,
                                 "target": t_d if name == "dispatch" else t_s}
                           for key, _, unit, t_d, t_s in regimes.TARGETS if key in fig}
                    | {"raw_ms": fig["raw_ms"], "ops": fig["ops"]}
                    for name, fig in table.items()},
    }
    (out / "results.json").write_text(json.dumps(_finite(payload), indent=2,
                                                 allow_nan=False))
    print(f"\nwrote {out / 'results.json'}")


def _finite(obj: Any) -> Any:
    """``obj`` with NaN and infinities as null (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


if __name__ == "__main__":
    main()
