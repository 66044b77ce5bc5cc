"""Actions compute what they promise (checked against hand-written formulas), restrict to
an index out of place, never touch the global RNG, and are immutable, picklable values."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch
from torch import nn

import lens as tl
import lens.interventions as li
from lens.errors import InterventionError


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(4, 3, 6, generator=torch.Generator().manual_seed(1))


def test_zero_scale_clamp_match_their_formulas(x: torch.Tensor) -> None:
    assert torch.equal(li.zero_ablate()(x), torch.zeros_like(x))
    assert torch.equal(li.scale(0.25)(x), x * 0.25)
    assert torch.equal(li.clamp(min=-0.5, max=0.5)(x), x.clamp(-0.5, 0.5))
    assert torch.equal(li.clamp(max=0.0)(x), torch.minimum(x, torch.zeros(())))


def test_steer_adds_a_direction_along_a_dimension(x: torch.Tensor) -> None:
    d = torch.arange(6.0)
    assert torch.equal(li.steer(d, alpha=2.0)(x), x + 2.0 * d.view(1, 1, 6))
    d3 = torch.tensor([1.0, -1.0, 0.5])
    assert torch.equal(li.steer(d3, dim=1)(x), x + 1.0 * d3.view(1, 3, 1))
    with pytest.raises(InterventionError, match="direction has 5 entries"):
        li.steer(torch.ones(5))(x)


def test_projections_split_the_value_into_span_and_complement(x: torch.Tensor) -> None:
    d = torch.randn(6, generator=torch.Generator().manual_seed(2))
    u = d / d.norm()
    onto = li.project_onto(d)(x)
    torch.testing.assert_close(onto, (x @ u)[..., None] * u)
    off = li.project_off(d)(x)
    torch.testing.assert_close(onto + off, x)
    torch.testing.assert_close(off @ u, torch.zeros(4, 3), atol=1e-6, rtol=0)
    two = torch.randn(2, 6, generator=torch.Generator().manual_seed(3))
    p = li.project_onto(two)
    torch.testing.assert_close(p(p(x)), p(x))  # a projection is idempotent
    torch.testing.assert_close(li.project_off(two)(x) @ two.T, torch.zeros(4, 3, 2),
                               atol=1e-5, rtol=0)


def test_mean_ablate_over_dims_or_from_a_given_mean(x: torch.Tensor) -> None:
    out = li.mean_ablate()(x)
    assert torch.equal(out, x.mean(0, keepdim=True).expand_as(x))
    out = li.mean_ablate(over=(0, 1))(x)
    assert torch.equal(out[2, 1], x.mean((0, 1)))
    m = torch.linspace(0, 1, 6)
    assert torch.equal(li.mean_ablate(source=m)(x), m.expand_as(x))
    with pytest.raises(InterventionError, match="floating-point"):
        li.mean_ablate()(torch.arange(6).view(2, 3))


def test_resample_ablate_draws_rows_of_the_pool_reproducibly(x: torch.Tensor) -> None:
    pool = torch.randn(10, 3, 6)
    a = li.resample_ablate(pool, seed=7)(x)
    assert all(any(torch.equal(row, p) for p in pool) for row in a)
    assert torch.equal(a, li.resample_ablate(pool, seed=7)(x))
    assert not torch.equal(a, li.resample_ablate(pool, seed=8)(x))
    with pytest.raises(InterventionError, match="every dimension but the first"):
        li.resample_ablate(torch.randn(10, 6))(x)


def test_noise_uses_a_private_generator(x: torch.Tensor) -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = li.noise(0.1, seed=3)(x)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a, li.noise(0.1, seed=3)(x))
    assert not torch.equal(a, li.noise(0.1, seed=4)(x))
    assert 0.05 < float((a - x).std()) < 0.2


def test_replacements_copy_never_alias(x: torch.Tensor) -> None:
    t = torch.randn(4, 3, 6)
    swapped = li.swap_with(t)(x)
    assert torch.equal(swapped, t) and swapped.data_ptr() != t.data_ptr()
    assert torch.equal(li.replace_with(1.5)(x), torch.full_like(x, 1.5))
    row = torch.arange(6.0)
    assert torch.equal(li.replace_with(row)(x), row.expand_as(x))
    assert torch.equal(li.replace_with(lambda v: v.flip(0))(x), x.flip(0))
    assert torch.equal(li.replace_with(lambda v, op: v + 1)(x), x + 1)
    with pytest.raises(InterventionError, match="dtype torch.float64"):
        li.swap_with(t.double())(x)


def test_any_callable_is_an_action_and_can_be_restricted(x: torch.Tensor) -> None:
    a = li.action(lambda v, op: v * 3)
    assert torch.equal(a(x), x * 3)
    out = a.at[1](x)
    assert torch.equal(out[1], x[1] * 3) and torch.equal(out[0], x[0])


def test_restriction_edits_only_the_index_out_of_place(x: torch.Tensor) -> None:
    keep = x.clone()
    out = li.zero_ablate().at[:, 1](x)
    assert torch.equal(x, keep)  # the input is never modified
    expected = x.clone()
    expected[:, 1] = 0
    assert torch.equal(out, expected)
    nested = li.scale(2.0).at[1:3].at[:, 0, 2:](x)
    expected = x.clone()
    expected[1:3, 0, 2:] = x[1:3, 0, 2:] * 2.0
    assert torch.equal(nested, expected)
    mean_row = li.mean_ablate(over=0).at[:, 2](x)
    assert torch.equal(mean_row[:, 2], x[:, 2].mean(0, keepdim=True).expand(4, 6))
    assert torch.equal(mean_row[:, :2], x[:, :2])


def test_restricted_sources_are_cut_like_the_value(x: torch.Tensor) -> None:
    t = torch.randn(4, 3, 6)
    out = li.swap_with(t).at[:, 2](x)
    assert torch.equal(out[:, 2], t[:, 2]) and torch.equal(out[:, :2], x[:, :2])
    small = torch.randn(4, 6)
    assert torch.equal(li.swap_with(small).at[:, 0](x)[:, 0], small)


def test_wrong_shape_dtype_or_index_is_explained(x: torch.Tensor) -> None:
    with pytest.raises(InterventionError, match=r"shape \(4, 3\) instead of \(4, 3, 6\)"):
        li.action(lambda v: v.sum(-1))(x)
    with pytest.raises(InterventionError, match="dtype torch.int64 instead of torch.float32"):
        li.action(lambda v: v.long())(x)
    with pytest.raises(InterventionError, match="returned list"):
        li.action(lambda v: [v])(x)
    with pytest.raises(InterventionError, match=r"index \[:, :, 9\]"):
        li.zero_ablate().at[:, :, 9](x)
    with pytest.raises(InterventionError, match="region"):
        li.action(lambda v: v.double()).at[0](x)


def test_actions_are_immutable_picklable_values() -> None:
    actions = [li.zero_ablate(), li.scale(0.5), li.clamp(min=0.0), li.noise(0.1, seed=2),
               li.steer(torch.ones(3), alpha=2.0), li.mean_ablate(over=(0, 1)),
               li.project_onto(torch.eye(3)[:2]), li.project_off(torch.ones(3)),
               li.swap_with(torch.zeros(2, 3)), li.replace_with(0.5),
               li.resample_ablate(torch.zeros(5, 3), seed=1), li.zero_ablate().at[:, 1:],
               li.splice_module(nn.Identity())]
    x = torch.randn(2, 3)
    for a in actions:
        with pytest.raises(dataclasses.FrozenInstanceError):
            a.seed = 3  # type: ignore[attr-defined]
        hash(a)
        b = pickle.loads(pickle.dumps(a))
        assert repr(b) == repr(a)
        if not isinstance(a, li.actions.SpliceModule):
            assert torch.equal(b(x), a(x))
    assert li.scale(0.5) == li.scale(0.5) and len({li.zero_ablate(), li.zero_ablate()}) == 1
    assert repr(li.zero_ablate().at[:, 5]) == "tl.zero_ablate().at[:, 5]"
    assert repr(li.scale(0.5).at[..., 1:3]) == "tl.scale(0.5).at[..., 1:3]"
    assert repr(li.clamp(min=0.0, max=1.0)) == "tl.clamp(min=0.0, max=1.0)"
    assert repr(li.steer(torch.tensor([1.0, 0.0]), alpha=3.0)) == \
        "tl.steer(tensor([1.0, 0.0]), alpha=3.0)"


def test_trace_ops_give_actions_their_context() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(5, 3)
    tr = tl.trace(model, x)
    op = tr["0"]  # the first Linear's output op
    spliced = li.splice_module(model[0], on="inputs")(op.out, op)
    assert torch.equal(spliced, model[0](x))  # run on the op's activation input
    other = tl.trace(model, x + 1)
    assert torch.equal(li.patch_from(other)(op.out, op), other["0"].out)
    with pytest.raises(InterventionError, match="needs the op"):
        li.patch_from(other)(op.out)
    a = li.noise(0.5, seed=1)
    assert torch.equal(a(op.out, op), a(op.out, op))
