"""SIGKILL at any step of a sweep or an extraction, then resume: every cell / row exactly
once, bit-identical to an uninterrupted run.

One child process imports lens once and forks a grandchild per kill point (see
``_kill.py``); each grandchild dies by SIGKILL at its point; this process then resumes
each folder and compares it with an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lens import sweeps
from lens.io import load_dataset_activations
from tests.sweeps import _kill

ROOT = Path(__file__).resolve().parents[2]
CELLS = 8  # 2 sites x 4 positions, 4 appends of 2 rows
SHARDS = 4  # 8 rows in batches of 2; os.replace: 1 + 2 per shard + 1 = 10

SWEEP_KILLS = ([{"step": "replace", "n": 1, "when": w} for w in ("before", "after")]
               + [{"step": "append", "n": n, "cut": c} for n in (1, 2, 3, 4)
                  for c in (0.0, 0.3, 1.0)])
EXTRACT_KILLS = ([{"step": "replace", "n": n, "when": w} for n in range(1, 11)
                  for w in ("before", "after")]
                 + [{"step": "save", "n": n} for n in range(1, SHARDS + 1)])
PAIRED_KILLS = [{"step": "batch", "n": n} for n in (0, 1, 3)]  # mid-shard, 2 batches/shard


class _Counting(sweeps.LocalExecutor):
    def __init__(self) -> None:
        super().__init__(progress=False)
        self.cells = 0

    def map(self, job, batches):
        for rows in super().map(job, batches):
            self.cells += len(rows)
            yield rows


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _lines(path: Path) -> tuple[list[tuple], int]:
    """Cell keys of the parseable lines, and the number of unparseable (torn) ones."""
    keys, torn = [], 0
    for line in path.read_bytes().split(b"\n") if path.exists() else []:
        try:
            row = json.loads(line)
        except ValueError:
            torn += bool(line)
            continue
        keys.append((row["site"], row["position"]))
    return keys, torn


def _kill_all(tmp: Path) -> list[dict]:
    jobs = ([{"kind": "sweep", "dir": str(tmp / f"s{i}"), "kill": k}
             for i, k in enumerate(SWEEP_KILLS)]
            + [{"kind": "extract", "dir": str(tmp / f"e{i}"), "kill": k}
               for i, k in enumerate(EXTRACT_KILLS)]
            + [{"kind": "extract", "dir": str(tmp / f"p{i}"), "kill": k,
                "batches_per_shard": 2} for i, k in enumerate(PAIRED_KILLS)])
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "tests.sweeps._kill", str(tmp / "jobs.json")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome == {j["dir"]: "killed" for j in jobs}, outcome  # every kill point hit
    return jobs


def test_sigkill_at_every_step_then_resume_gives_each_row_once_bit_identical(tmp_path):
    jobs = _kill_all(tmp_path)
    assert len(jobs) == len(SWEEP_KILLS) + len(EXTRACT_KILLS) + len(PAIRED_KILLS) == 41
    ref = _kill.run_sweep_job(str(tmp_path / "ref_sweep"))
    ref_extract = {bps: tmp_path / f"ref_extract{bps}" for bps in (1, 2)}
    for bps, d in ref_extract.items():
        _kill.run_extract_job(str(d), bps)
    torn_total = 0
    for job in jobs:
        d = Path(job["dir"])
        if job["kind"] == "sweep":
            survived, torn = _lines(d / "rows.jsonl")
            counting = _Counting()
            resumed = _kill.run_sweep_job(str(d), executor=counting)
            assert resumed.rows == ref.rows, job  # exact floats, same order
            assert counting.cells == CELLS - len(survived), job  # only missing cells
            keys, torn_after = _lines(d / "rows.jsonl")
            assert sorted(keys) == sorted(set(keys)) and len(keys) == CELLS, job
            assert len(resumed.damaged) == torn == torn_after, (job, resumed.damaged)
            torn_total += torn
        else:
            bps = job.get("batches_per_shard", 1)
            _kill.run_extract_job(str(d), bps)
            assert _files(d) == _files(ref_extract[bps]), job
    assert torn_total >= 2  # some kills tore a row, and resuming skipped it
    acts = load_dataset_activations(ref_extract[1])
    assert acts["fc1"].shape[0] == 8
