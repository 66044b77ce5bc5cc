"""Sanity checks for the test model zoo itself."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.models import ZOO, ZooCase, cases, get, hf_available

REGULAR = cases(exclude=("bench", "mutates_input"))
BENCH = cases(include=("bench",), exclude=())


def _skip_if_hf(case: ZooCase) -> None:
    if "hf" in case.tags:
        pytest.importorskip("transformers")


def _flatten(obj, prefix="out"):
    """Flatten nested outputs (tensors, tuples, lists, dicts, ModelOutput)."""
    if isinstance(obj, torch.Tensor):
        return [(prefix, obj)]
    if isinstance(obj, dict):  # includes transformers ModelOutput
        return [p for k, v in obj.items() for p in _flatten(v, f"{prefix}.{k}")]
    if isinstance(obj, (tuple, list)):
        return [p for i, v in enumerate(obj) for p in _flatten(v, f"{prefix}[{i}]")]
    return [(prefix, obj)]


def _run(case: ZooCase, model: nn.Module, args, kwargs):
    if case.has("stateful"):  # the forward changes the model: run a copy of it
        model = copy.deepcopy(model)
    if case.has("mutates_input"):  # the forward writes into its input: give it a copy
        args, kwargs = copy.deepcopy((args, kwargs))
    torch.manual_seed(0)  # needed for 'random' cases; harmless for the rest
    with torch.no_grad():
        return model(*args, **kwargs)


def _assert_identical(a, b):
    fa, fb = _flatten(a), _flatten(b)
    assert [k for k, _ in fa] == [k for k, _ in fb]
    for (k, x), (_, y) in zip(fa, fb, strict=True):
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and x.shape == y.shape, k
            assert torch.equal(x, y), f"{k} differs between builds"
        else:
            assert x == y, k


def test_registry_shape():
    assert len(REGULAR) >= 20
    for name, case in ZOO.items():
        assert case.name == name
        assert isinstance(case.tags, frozenset)
        assert get(name) is case
    assert isinstance(hf_available(), bool)
    with pytest.raises(KeyError):
        get("no_such_model")
    # gpt2_small_shaped is bench-only and never in the regular iteration
    assert "gpt2_small_shaped" not in {c.name for c in REGULAR}
    assert {"cnn_bench", "lstm_bench", "gpt2_small_shaped"} <= {c.name for c in BENCH}


@pytest.mark.parametrize("case", REGULAR, ids=lambda c: c.name)
def test_case_deterministic(case: ZooCase):
    _skip_if_hf(case)
    m1, args1, kw1 = case.build()
    m2, args2, kw2 = case.build()

    for m in (m1, m2):
        assert isinstance(m, nn.Module)
        mode = "train" in case.tags  # train-mode cases are built in train mode, fully
        assert m.training == mode
        assert all(sub.training == mode for sub in m.modules())
    assert isinstance(args1, tuple) and isinstance(kw1, dict)

    # identical weights, buffers and inputs
    sd1, sd2 = m1.state_dict(), m2.state_dict()
    assert sd1.keys() == sd2.keys()
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), k
    _assert_identical((args1, kw1), (args2, kw2))

    out1 = _run(case, m1, args1, kw1)
    out2 = _run(case, m2, args2, kw2)
    _assert_identical(out1, out2)
    # the same model twice gives the same result (no hidden state) and
    # the inputs are not mutated by forward
    _assert_identical(out1, _run(case, m1, args1, kw1))
    _assert_identical((args1, kw1), (args2, kw2))

    for _, t in _flatten(out1):
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            assert torch.isfinite(t).all()


@pytest.mark.parametrize(
    "case", [c for c in REGULAR if "grad_mode_sensitive" not in c.tags], ids=lambda c: c.name
)
def test_grad_mode_insensitive(case: ZooCase):
    """Keeps the 'grad_mode_sensitive' tag honest: untagged cases give
    bit-identical outputs with and without grad."""
    _skip_if_hf(case)
    model, args, kwargs = case.build()
    ref = _run(case, model, args, kwargs)
    torch.manual_seed(0)
    if case.has("stateful"):
        model = copy.deepcopy(model)
    if case.has("mutates_input"):
        args, kwargs = copy.deepcopy((args, kwargs))
    with torch.enable_grad():
        out = model(*args, **kwargs)
    out = [(k, t.detach() if isinstance(t, torch.Tensor) else t) for k, t in _flatten(out)]
    _assert_identical(dict(_flatten(ref)), dict(out))


@pytest.mark.parametrize(
    "case", [c for c in BENCH if c.name != "gpt2_small_shaped"], ids=lambda c: c.name
)
def test_bench_case_runs(case: ZooCase):
    model, args, kwargs = case.build()
    out = _run(case, model, args, kwargs)
    assert isinstance(out, torch.Tensor) and out.shape[0] == 8


def test_conditional_branches():
    # nested_demo takes the if-branch, conditional_else the else-branch
    _, (x,), _ = get("nested_demo").build()
    assert torch.sum(x) > 0
    _, (x,), _ = get("conditional_else").build()
    assert not torch.sum(x) > 0


def test_random_case_depends_on_seed():
    model, args, _ = get("demo_network").build()
    torch.manual_seed(0)
    a = model(*args)
    torch.manual_seed(1)
    b = model(*args)
    assert not torch.equal(a, b)


def test_weight_sharing_structure():
    albert, _, _ = get("albert_shared").build()
    assert sum(1 for n, _ in albert.named_modules() if n.endswith("attn")) == 1
    tiny, _, _ = get("tiny_transformer_2block").build()
    b0, b1 = tiny.blocks
    assert b0 is not b1
    assert not torch.equal(b0.attn.q.weight, b1.attn.q.weight)


def test_dict_io_structure():
    model, args, kwargs = get("dict_io").build()
    assert set(args[0]) == {"a", "b"} and "mask" in kwargs
    out = model(*args, **kwargs)
    t1, (t2, t3) = out["pair"]
    assert isinstance(out["pair"], tuple) and isinstance(out["pair"][1], list)
    assert t3.shape == (3,)


def test_gpt2_small_shaped_builds():
    pytest.importorskip("transformers")
    from tests.models import gpt2_small_shaped

    model, (ids,), kwargs = gpt2_small_shaped()
    assert ids.shape == (1, 32) and kwargs == {}
    assert model.config.n_layer == 12 and model.config.n_embd == 768
    assert not model.training
