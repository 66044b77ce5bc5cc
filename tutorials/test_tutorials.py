"""Each tutorial runs top to bottom as a script, asserts its own findings, and writes its
figures. Run in a subprocess, as a user would: ``python tutorials/NN_name.py``.

The tutorials share the induction model's cache (``$LENS_CACHE``, else the repository's
``.lens-cache/``), so it is trained once per checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = Path(__file__).resolve().parent

# tutorial -> files it must write under $LENS_TUTORIAL_OUT/<tutorial>/
FIGURES: dict[str, list[str]] = {
    "01_quickstart": ["ops.csv", "cnn.svg", "rnn_unrolled.svg", "rnn_rolled.svg",
                      "rnn_rolled.png"],
    "02_extraction": ["mean_layer1_pattern.png", "saved_trace/trace.json",
                      "saved_trace/tensors.safetensors"],
    "03_activation_patching": ["residual_patching.png", "head_patching.png",
                               "attention_patterns.png", "residual_patching_matched.png",
                               "attribution_vs_patching.png"],
    "04_facets_and_rnns": ["gpt2_patterns.png", "llama_patterns.png", "lstm_gates.png"],
    "05_bundles_and_sweeps": ["bundle_differences.png", "bundle_graph.svg",
                              "head_ablation.png", "head_ablation.csv"],
    "06_steering": ["steering_curve.png", "projection_effects.png"],
}


def test_every_tutorial_is_listed() -> None:
    scripts = {p.stem for p in TUTORIALS.glob("[0-9][0-9]_*.py")}
    assert scripts == set(FIGURES), scripts ^ set(FIGURES)


def _run(name: str, out: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["LENS_TUTORIAL_OUT"] = str(out)
    env.setdefault("LENS_CACHE", str(ROOT / ".lens-cache"))
    env["MPLBACKEND"] = "Agg"
    return subprocess.run([sys.executable, str(TUTORIALS / f"{name}.py")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_tutorial_runs_and_writes_its_figures(name: str, tmp_path: Path) -> None:
    if not (TUTORIALS / f"{name}.py").exists():
        pytest.fail(f"tutorials/{name}.py is missing")
    proc = _run(name, tmp_path)
    assert proc.returncode == 0, (
        f"{name} exited with {proc.returncode}\n--- stdout (tail)\n{proc.stdout[-4000:]}"
        f"\n--- stderr (tail)\n{proc.stderr[-4000:]}")
    assert f"{name}: all checks passed" in proc.stdout
    for rel in FIGURES[name]:
        path = tmp_path / name / rel
        assert path.is_file(), f"{name} did not write {rel}"
        assert path.stat().st_size > 0, f"{name} wrote an empty {rel}"
