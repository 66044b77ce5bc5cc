"""``make bench``: print every benchmark figure as a ratio to the raw forward pass.

Each section measures its own raw forward in the same process, with a fixed thread
count, the median of >= 7 runs after warm-up. Results are also written to
``bench-out/results.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from . import capture, extraction, inplace, interventions, sweeps
from .common import THREADS, Section, bench_models

SECTIONS = {
    "capture": capture.run,
    "postprocess": capture.postprocess,
    "inplace": inplace.run,
    "extraction": extraction.run,
    "interventions": interventions.run,
    "sweeps": sweeps.run,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", default=None, choices=sorted(SECTIONS))
    opts = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    print(f"lens benchmarks: torch {torch.__version__}, {THREADS} threads, "
          f"{platform.processor() or platform.machine()}")
    models = bench_models()
    results: list[Section] = []
    for name, fn in SECTIONS.items():
        if opts.only and name not in opts.only:
            continue
        print(f"\n[{name}]")
        results.append(fn(models))
    out = Path("bench-out")
    out.mkdir(exist_ok=True)
    payload = [{"section": s.title, "rows": [dict(zip(("name", "value", "unit", "target",
                                                       "note"), r, strict=True)) for r in s.rows]}
               for s in results]
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
