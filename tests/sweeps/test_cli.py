"""`lens sweep SPEC.py --out DIR` runs a sweep from a file and resumes it."""

from __future__ import annotations

import json
import textwrap

import pytest

from lens.cli import main

SPEC = textwrap.dedent("""
    import torch
    from tests.sweeps.conftest import BLOCKS, gpt2_small_config_model, logit_diff

    model_fn = gpt2_small_config_model
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 50, (1, 6), generator=g)
    corrupted = clean.clone()
    corrupted[0, 2] = (clean[0, 2] + 7) % 50
    sites = BLOCKS
    metric = logit_diff
    batch_size = 3
""")


def test_cli_runs_a_spec_and_resumes(tmp_path, capsys):
    pytest.importorskip("transformers")
    spec = tmp_path / "spec.py"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    table = tmp_path / "rows.csv"
    assert main(["sweep", str(spec), "--out", str(out), "--table", str(table)]) == 0
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and table.stat().st_size > 0
    assert main(["sweep", str(spec), "--out", str(out)]) == 0  # nothing left to compute
    again = (out / "rows.jsonl").read_text().splitlines()
    assert len(again) == 12
    assert "add_" in capsys.readouterr().out


def test_cli_names_what_a_spec_is_missing(tmp_path, capsys):
    spec = tmp_path / "bad.py"
    spec.write_text("sites = ['x']\n")
    assert main(["sweep", str(spec)]) == 2
    assert "must define `model_fn`" in capsys.readouterr().err
