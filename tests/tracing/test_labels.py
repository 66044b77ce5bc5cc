"""Labels and indexing follow the seeds' conventions."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import lens as tl
from tests.helpers import build
from tests.models import get

LABEL = re.compile(r"^([a-z0-9]+)_(\d+)_(\d+)(:\d+)?$")


def test_demo_network_labels_match_the_seed_legend():
    model, args, kwargs = build(get("demo_network"))
    tr = tl.trace(model, *args)
    # The legend of the reference system numbers these ops exactly so.
    for key in ("input_1", "add_1_1", "relu_1_2", "linear_1_3", "relu_2_4", "pow_1_7",
                "mul_1_10", "output_1"):
        assert key in tr, key
    assert tr["linear_1_3"] == tr["fc"] == tr["fc:1"] == tr[3] == tr["linear_1"]
    assert tr[-1].label == "output_1"
    assert tr[0].label == "input_1"
    assert tr["buffer_1"].is_buffer


def test_labels_number_types_and_totals_in_execution_order():
    model, args, _ = build(get("alexnet_small"))
    tr = tl.trace(model, *args)
    type_counts: dict[str, int] = {}
    for i, op in enumerate(tr.ops):
        assert op.index == i
        if op.kind in ("input", "output", "buffer"):
            continue
        m = LABEL.match(op.label)
        assert m, op.label
        type_counts[op.type] = type_counts.get(op.type, 0) + 1
        assert m.group(1) == op.type
        assert int(m.group(2)) == type_counts[op.type]
        assert int(m.group(3)) == i  # one input, no loops: total number == position
    conv3 = tr["conv2d_3"]
    assert conv3.module == "features.6" and tr["features.6"] == conv3


def test_every_lookup_key_finds_its_op():
    model, args, kwargs = build(get("tiny_transformer_2block"))
    tr = tl.trace(model, *args, input_kwargs=kwargs)
    n = len(tr)
    for op in tr.ops:
        for key in op.lookup_keys:
            hit = tr[key]
            assert hit == op or op in list(getattr(hit, "ops", [])), (key, op.label)
        assert tr[op.index - n] == op


def test_miss_raises_keyerror_with_close_matches():
    model, args, _ = build(get("alexnet_small"))
    tr = tl.trace(model, *args)
    with pytest.raises(KeyError) as info:
        tr["conv2d_3_8"]
    assert isinstance(info.value, tl.LookupKeyError)
    assert "conv2d_3_7" in str(info.value)
    with pytest.raises(tl.LookupKeyError, match="features.6"):
        tr["features.66"]
    with pytest.raises(tl.LookupKeyError, match="out of range"):
        tr[10_000]


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.other = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.other(self.fc(x)))


def test_module_called_twice_has_numbered_calls():
    model = _Twice()
    x = torch.randn(2, 4)
    tr = tl.trace(model, x)
    first, second = tr["fc:1"], tr["fc:2"]
    assert torch.equal(first.out, model.fc(x))
    assert torch.equal(second.out, model(x))
    group = tr["fc"]
    assert list(group) == [first, second]
    with pytest.raises(tl.PayloadError, match="fc:1"):
        _ = group.out
    assert [c.key for c in tr.modules["fc"].calls] == ["fc:1", "fc:2"]


def test_module_outputs_and_containment_for_nested_modules():
    model, args, _ = build(get("nested_demo"))
    tr = tl.trace(model, *args)
    last = tr["submodule1.submodule2"]
    inside = [op for op in tr.ops if "submodule1.submodule2" in op.module_addresses]
    assert last == inside[-1] and last.type == "add"
    assert last.module == "submodule1.submodule2"
    assert last.module_addresses == ("submodule1", "submodule1.submodule2")


def test_summary_print_and_tables():
    model, args, _ = build(get("alexnet_small"))
    tr = tl.trace(model, *args)
    text = tr.summary()
    assert "features (Sequential)" in text and "classifier (Sequential)" in text
    computed = [op for op in tr.ops if not (op.is_input or op.is_output or op.is_buffer)]
    assert f"Ops: {len(computed)} total" in text and len(computed) == len(tr) - 2
    assert "conv2d_1_1" in str(tr)
    assert "Layer conv2d_1_1" in str(tr["conv2d_1_1"])
    df = tr.to_pandas()
    assert len(df) == len(tr) and list(df["label"]) == tr.labels
    assert df.loc[df["label"] == "conv2d_1_1", "module"].item() == "features.0"
    mods = tr.modules.to_pandas()
    assert "features.0" in set(mods["address"])
    params = tr.params.to_pandas()
    assert params["numel"].sum() == sum(p.numel() for p in model.parameters())


def test_op_metadata():
    model, args, _ = build(get("alexnet_small"))
    tr = tl.trace(model, *args)
    conv = tr["conv2d_1_1"]
    weight = model.features[0].weight
    assert conv.out.shape == conv.shape and conv.nbytes == conv.out.numel() * 4
    assert conv.dtype == torch.float32 and conv.device.type == "cpu"
    assert conv.func_name == "conv2d"
    assert conv.func_config["kernel_size"] == tuple(weight.shape[2:])
    assert conv.func_config["out_channels"] == weight.shape[0]
    assert conv.num_params == sum(p.numel() for p in model.features[0].parameters())
    assert conv.params_used[0][1] == tuple(weight.shape)
    assert conv.parents[0].is_input and conv.children[0].type == "relu"
    assert conv.is_module_output and conv.module_call == "features.0:1"
    assert conv.elapsed > 0
    drop = next(op for op in tr.ops if op.type == "dropout")
    assert drop.func_config["p"] == model.classifier[0].p


@pytest.mark.parametrize("name", ["tiny_transformer_2block", "alexnet_small", "recurrent_demo"])
def test_a_module_address_finds_the_same_before_and_after_the_lookup_table(name):
    """The first lookup of a module address is answered from the module calls alone;
    the answer is the one the full lookup table gives."""
    model, args, kwargs = build(get(name))
    reference = tl.trace(model, *args, input_kwargs=kwargs)
    addresses = [a for a in reference.module_info if a and a in reference]
    assert addresses
    fresh = tl.trace(model, *args, input_kwargs=kwargs)
    early = {a: fresh[a] for a in addresses}
    assert "_lookup" not in fresh.__dict__  # answered without building the table
    fresh.keys()  # now build it
    for a, hit in early.items():
        late = fresh[a]
        if isinstance(hit, tl.Op):
            assert late == hit and a in hit.labels, a
        else:
            assert type(late) is type(hit) and list(late) == list(hit), a
        assert [o.label for o in (late if not isinstance(late, tl.Op) else [late])] == [
            o.label for o in (reference[a] if not isinstance(late, tl.Op) else [reference[a]])]


@pytest.mark.parametrize("name", ["tiny_transformer_2block", "recurrent_demo", "demo_network"])
def test_a_full_label_finds_the_same_before_and_after_the_lookup_table(name):
    model, args, kwargs = build(get(name))
    fresh = tl.trace(model, *args, input_kwargs=kwargs)
    keys = [op.label for op in fresh.ops] + [f"{layer.label}:{len(layer)}"
                                            for layer in fresh.layers]
    keys += [layer.label for layer in fresh.layers]
    keys = [k for k in keys if re.fullmatch(r"[a-z0-9]+_\d+_\d+(:\d+)?", k)]  # not input_1
    assert len(keys) > 5
    early = {k: fresh[k] for k in keys}
    assert "_lookup" not in fresh.__dict__  # answered without building the table
    fresh.keys()
    for k, hit in early.items():
        late = fresh[k]
        assert type(late) is type(hit) and late == hit, k
    assert any(isinstance(h, tl.Layer) for h in early.values()) or name != "recurrent_demo"


def test_an_ops_labels_do_not_depend_on_which_lookups_ran_before():
    """A bare module address is one of its sole output's labels from the start (it used
    to appear only once the trace's lookup table had been built)."""
    model, args, _ = build(get("demo_network"))
    fresh = tl.trace(model, *args)
    first = {op.label: op.labels for op in fresh.ops}  # before any lookup
    looked = tl.trace(model, *args)
    assert looked["fc"].label == "linear_1_3"
    looked.keys()  # builds the whole table
    assert {op.label: op.labels for op in looked.ops} == first
    assert "fc" in first["linear_1_3"] and "fc:1" in first["linear_1_3"]
    # and every label of every op finds it
    for op in fresh.ops:
        for key in op.labels:
            hit = fresh[key]
            assert op == hit or (not isinstance(hit, tl.Op) and op in list(hit)), key
