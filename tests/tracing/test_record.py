"""tl.record (capture without postprocessing) and tl.pluck (one activation, one call)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lens as tl
from lens.tracing.record import Recording, pluck, record
from tests.helpers import build, hook_outputs, regular_cases
from tests.models import get

CASES = [c for c in regular_cases() if "hf" not in c.tags]


def _run(case, fn, *extra, **options):
    model, args, kwargs = build(case)
    torch.manual_seed(0)
    return fn(model, *args, *extra, input_kwargs=kwargs, **options)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_recording_to_trace_equals_tl_trace(case):
    sel = tl.func("relu", "linear", "add") | tl.in_module("fc")
    model, *_ = build(case)
    addresses = {n for n, _ in model.named_modules()}
    if "fc" not in addresses:
        sel = tl.func("relu", "linear", "add")
    full = _run(case, tl.trace, save=sel)
    rec = _run(case, record, save=sel)
    assert isinstance(rec, Recording) and not rec.halted
    # Before postprocessing: payloads by call index are the trace's kept payloads.
    kept = {op.call_index: op.payload for op in full.ops if op.payload is not None}
    assert rec.payloads.keys() >= kept.keys()
    for i, t in kept.items():
        assert torch.equal(rec[i], t)
    tr = rec.to_trace()
    assert tr is rec.to_trace()
    assert tr.labels == full.labels
    for a, b in zip(tr.ops, full.ops, strict=True):
        assert (a.payload is None) == (b.payload is None), a.label
        if a.payload is not None:
            assert torch.equal(a.payload, b.payload), a.label


def test_recording_indexes_by_function_and_explains_missing_payloads():
    model, args, _ = build(get("alexnet_small"))
    rec = record(model, *args, save=tl.func("relu"))
    relus = rec["relu"]
    found, _ = hook_outputs(model, args, {})
    assert len(relus) == 7
    # The first relu is features.1 (in place): its output is what the hook saw.
    assert torch.equal(relus[0], found["features.1"][0][0])
    conv = next(op for op in rec.ops if op.func_name == "conv2d")
    with pytest.raises(tl.PayloadError, match="without its payload"):
        rec[conv.call_index]
    assert rec["conv2d"] == []
    with pytest.raises(tl.LookupKeyError, match="function or type"):
        rec["nonexistent"]
    with pytest.raises(tl.LookupKeyError, match="out of range"):
        rec[10_000]
    assert "payloads kept" in repr(rec)


def test_record_with_halt_stops_and_to_trace_marks_it():
    model, args, _ = build(get("alexnet_small"))
    rec = record(model, *args, save=tl.func("conv2d"), halt=tl.func("conv2d"))
    assert rec.halted and rec.output is None
    assert [op.func_name for op in rec.ops if op.kind == "op"] == ["conv2d"]
    assert rec.to_trace().halted


def test_final_label_payloads_are_decided_by_to_trace():
    model, args, _ = build(get("alexnet_small"))
    full = tl.trace(model, *args)
    rec = record(model, *args, save="conv2d_3_7")
    tr = rec.to_trace()
    assert [op.label for op in tr.ops if op.payload is not None] == ["input_1", "conv2d_3_7"]
    assert torch.equal(tr["conv2d_3_7"].out, full["conv2d_3_7"].out)


SITE_CASES = ["alexnet_small", "recurrent_demo", "demo_network", "multi_output",
              "tiny_transformer_2block", "nested_demo"]


@pytest.mark.parametrize("name", SITE_CASES)
def test_pluck_equals_the_full_trace_payload(name):
    case = get(name)
    full = _run(case, tl.trace)
    model, *_ = build(case)
    modules = [n for n, _ in model.named_modules() if n]
    sites: list = [op.label for op in full.ops[1::3]] + modules[:4]
    sites += [tl.func("add"), tl.func("linear", "conv2d"), -2, "input_1", full.ops[-1].label]
    for site in sites:
        if isinstance(site, str) and site in modules and site not in full:
            continue  # a module that returns nothing recorded
        if isinstance(site, (tl.selectors.Selector, int)):
            sel = tl.selectors.coerce(site).bind_ordinals(full.ops)
            expected = [op for op in full.ops if sel(op)]
            if not expected:
                continue
            want = expected[0]
        else:
            hit = full[site]
            want = hit if isinstance(hit, tl.Op) else hit[0]  # first call / first pass
        got = _run(case, pluck, site)
        assert torch.equal(got, want.out), site
        got = _run(case, pluck, site=site)
        assert torch.equal(got, want.out), site


def test_pluck_halts_for_module_sites_and_reads_labels_in_one_pass():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(2, 3)
    calls = []
    model[2].register_forward_hook(lambda *a: calls.append("last"))
    pluck(model, x, "0")
    pluck(model, x, tl.func("relu"))
    assert calls == []  # halted before the last layer ran
    got = pluck(model, x, "relu_1_2")
    assert torch.equal(got, torch.relu(model[0](x)))
    assert calls == ["last"]  # a label needs the whole pass: exactly one forward


def test_pluck_errors_name_the_site():
    model, args, _ = build(get("alexnet_small"))
    with pytest.raises(tl.LookupKeyError, match="matched no op"):
        pluck(model, *args, tl.func("lstm"))
    with pytest.raises(tl.LookupKeyError, match="'conv2d_9_9' names no op.*conv2d_"):
        pluck(model, *args, "conv2d_9_9")
    with pytest.raises(tl.LookupKeyError, match="name the site"):
        pluck(model)


def test_pluck_options_detach_and_dtype():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    x = torch.randn(2, 3)
    plain = pluck(model, x, "0")
    assert plain.requires_grad
    cheap = pluck(model, x, "0", detach=True, dtype=torch.float16)
    assert not cheap.requires_grad and cheap.dtype == torch.float16
    assert torch.equal(cheap, plain.detach().half())


def test_a_recording_made_for_replay_reruns_random_ops_as_tl_trace_does():
    """tl.record shares tl.trace's capture: intervention_ready snapshots the random state,
    so a fork of the recording's trace reruns dropout with the recorded masks."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Dropout(0.5),
                                torch.nn.Linear(8, 3)).train()
    x = torch.randn(4, 6)
    torch.manual_seed(1)
    via_record = tl.record(model, x, intervention_ready=True).to_trace()
    torch.manual_seed(1)
    via_trace = tl.trace(model, x, intervention_ready=True)
    assert via_record.options.but(rng_state=None) == via_trace.options.but(rng_state=None)
    assert torch.equal(via_record.options.rng_state["cpu"], via_trace.options.rng_state["cpu"])
    edit = ("0", tl.scale(2.0))
    replayed = via_record.fork().intervene(*edit).replay().output
    rerun = via_record.fork().intervene(*edit).rerun(model, x).output
    assert torch.equal(replayed, rerun)
    assert torch.equal(replayed, via_trace.fork().intervene(*edit).replay().output)
