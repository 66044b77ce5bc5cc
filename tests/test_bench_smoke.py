"""`make bench` cannot rot: its issue-13 table runs end to end on a tiny GPT-2 (1 repeat)
and writes every figure of the targets table, finite, to bench-out/results.json.
Structure only: nothing here asserts a time."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("transformers")

from benchmarks import regimes, run  # noqa: E402

TINY = regimes.Regime("dispatch", "tiny GPT-2 (smoke test)",
                      {"n_embd": 16, "n_head": 2, "tokens": 4, "n_layer": 6, "vocab": 64},
                      threads=1, repeats=1, warmup=0, sweep_repeats=1, inplace_ops=40,
                      rss_in_subprocess=False)


def test_bench_regimes_table_runs_and_writes_every_figure(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(regimes.REGIMES, "dispatch", TINY)
    monkeypatch.chdir(tmp_path)
    run.main(["--only", "regimes", "--regime", "dispatch"])
    printed = capsys.readouterr().out
    data = json.loads((tmp_path / "bench-out" / "results.json").read_text())
    figures = data["regimes"]["dispatch"]
    assert set(figures) == {key for key, *_ in regimes.TARGETS} | {"raw_ms", "ops"}
    for key, title, unit, target, _ in regimes.TARGETS:
        value = figures[key]["value"]
        assert isinstance(value, float) and math.isfinite(value), (key, value)
        if unit in ("x raw", "ratio"):
            assert value > 0, (key, value)
        assert figures[key]["unit"] == unit and figures[key]["target"] == target
        assert title in printed  # the side-by-side table names every figure
    assert figures["ops"] > 100 and figures["raw_ms"] > 0
    rows = data["sections"][0]["rows"]
    assert len(rows) == len(regimes.TARGETS)


def test_every_other_bench_section_runs_on_a_tiny_model(monkeypatch):
    """The sections beside the regimes table (capture, postprocessing, extraction,
    interventions, sweeps) run end to end on a tiny GPT-2, each giving finite figures:
    an API change that breaks one fails here, not in the next `make bench`."""
    import torch
    import transformers

    from benchmarks import capture, common, extraction, interventions, sweeps

    monkeypatch.setattr(capture, "LOOP_SIZES", (50,))
    once = {"interleaved": lambda fns, *a, **k: common.interleaved(fns, repeats=1, warmup=0),
            "median_time": lambda fn, *a, **k: common.median_time(fn, repeats=1, warmup=0)}
    for mod in (capture, extraction, interventions, sweeps):
        for name, fn in once.items():
            if hasattr(mod, name):
                monkeypatch.setattr(mod, name, fn)
    config = transformers.GPT2Config(n_layer=12, n_embd=16, n_head=2, n_positions=16,
                                     vocab_size=64)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    models = {"gpt2_small_shaped": (model, (torch.randint(0, 64, (1, 8)),), {})}
    for name, section in run.SECTIONS.items():
        sec = section(models)
        assert sec.rows, name
        for row in sec.rows:
            value = row[1]
            assert isinstance(value, float) and math.isfinite(value), (name, row)
