"""``python -m lens.demo`` (``make demo``) runs from any directory and writes its outputs."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_writes_graph_heatmap_and_tables(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    # The shared cache: the model is trained once per checkout, not once per test run.
    env.setdefault("LENS_CACHE", str(ROOT / ".lens-cache"))
    env["MPLBACKEND"] = "Agg"
    env.pop("LENS_DEMO_OUT", None)
    proc = subprocess.run([sys.executable, "-m", "lens.demo"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "demo-out"
    for name in ("induction_graph.svg", "patching_heatmap.png", "patching_residual.csv",
                 "patching_heads.csv"):
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, name
        assert str(Path("demo-out") / name) in proc.stdout  # the demo says where it is
    assert "<svg" in (out / "induction_graph.svg").read_text()
    with open(out / "patching_residual.csv") as f:
        rows = list(csv.DictReader(f))
    sites = {r["site"] for r in rows}
    positions = {int(r["position"]) for r in rows}
    assert len(sites) == 3 and len(rows) == 3 * len(positions)
    assert all(r["value"] not in ("", "nan") for r in rows)
