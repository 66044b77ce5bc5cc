"""Cells of different sites share one batched replay; every cell still equals the same
patch made with plain forward hooks on a copy of the model, one forward per cell."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lens as tl
from lens import sweeps
from lens.sweeps.batched import BatchedReplay
from tests.sweeps.conftest import gpt2_small_config_model
from tests.sweeps.test_sweep_sites import (
    N_HEAD,
    _close,
    _first,
    _metric_with,
    _saved,
    _with_first,
    _z_hook_route,
    batch_diff,
)


@pytest.fixture(scope="module")
def gpt2c():
    pytest.importorskip("transformers")
    model = gpt2_small_config_model()
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(0, 50, (2, 5), generator=g)
    corrupted = clean.clone()
    corrupted[:, 0] = (clean[:, 0] + 13) % 50
    return model, clean, corrupted


@pytest.fixture
def replays(monkeypatch):
    """The call indices of the site ops of each vmapped replay the sweep ran."""
    seen: list[set[int]] = []
    real = BatchedReplay._vmapped

    def spy(self, at, values):
        out = real(self, at, values)
        seen.append(set(at))
        return out

    monkeypatch.setattr(BatchedReplay, "_vmapped", spy)
    return seen


def _module_route(model, clean, corrupted, address, position, zero=False):
    """Patch (or zero) ``address``'s output at ``position`` with a forward hook."""
    module = model.get_submodule(address)
    src = _saved(model, clean, module)

    def hook(m, args, out):
        new = _first(out).clone()
        new[:, position] = 0 if zero else src[:, position]
        return _with_first(out, new)

    return _metric_with(model, corrupted, module, hook)


def _truth(model, clean, corrupted, row, zero=False):
    if row["head"] is not None:
        return _z_hook_route(model, clean, corrupted, row["layer"], row["head"],
                             row["position"], zero=zero)
    return _module_route(model, clean, corrupted, row["site"], row["position"], zero=zero)


SITES = (tl.module("transformer.h.0") | tl.module("transformer.h.1.mlp")
         | tl.facet("z", module="transformer.h.1.attn", head="each"))


@pytest.mark.parametrize("batch_size", [1000, 7])
def test_grid_of_blocks_and_heads_shares_replays_and_equals_hooks(gpt2c, replays,
                                                                  batch_size):
    model, clean, corrupted = gpt2c
    res = sweeps.patching(model, clean, corrupted, SITES, metric=batch_diff,
                          positions="each", batch_size=batch_size, progress=False)
    n_pos = clean.shape[1]
    assert len(res) == (2 + N_HEAD) * n_pos
    assert {r["site"] for r in res.rows} == {"transformer.h.0", "transformer.h.1.mlp",
                                            "transformer.h.1.attn.z"}
    cells = len(res)
    assert len(replays) == -(-cells // batch_size)  # one replay per batch, no fallback
    assert max(len(s) for s in replays) >= 2  # cells of different sites shared a replay
    other = copy.deepcopy(model)  # the hook route never touches the swept model
    for row in res.rows:
        assert _close(row["value"], _truth(other, clean, corrupted, row)), row


def test_ablation_grid_across_blocks_equals_hooks(gpt2c, replays):
    model, clean, corrupted = gpt2c
    sites = ["transformer.h.0", "transformer.h.1"]
    res = sweeps.ablation(model, corrupted, sites, metric=batch_diff, positions=[0, 3],
                          batch_size=3, progress=False)
    assert [(r["site"], r["position"]) for r in res.rows] == [
        (s, p) for s in sites for p in (0, 3)]
    # the first batch spans both blocks; the last (one cell) needs no vmap
    assert [len(s) for s in replays] == [2]
    other = copy.deepcopy(model)
    for row in res.rows:
        want = _module_route(other, corrupted, corrupted, row["site"], row["position"],
                             zero=True)
        assert _close(row["value"], want), row


class _NoVmapRule(nn.Module):
    """``nonzero`` has a data-dependent shape, so vmap refuses it: the sweep must fall
    back to one replay per cell."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.b(torch.relu(self.a(x)))
        return h + torch.nonzero(h > 0).float().sum()


def test_ops_without_a_vmap_rule_fall_back_to_one_replay_per_cell(replays):
    model = _NoVmapRule().eval()
    clean, corrupted = torch.randn(1, 3, 4), torch.randn(1, 3, 4)

    def metric(out):
        return out[0, -1].sum()

    res = sweeps.patching(model, clean, corrupted, ["a", "b"], metric=metric,
                          batch_size=100, progress=False)
    assert replays == []  # the batched replay raised before returning
    other = copy.deepcopy(model)
    for row in res.rows:
        module, p = other.get_submodule(row["site"]), row["position"]
        with torch.no_grad():
            src = module(clean if row["site"] == "a" else
                         torch.relu(other.a(clean)))
        want = _patched(other, module, src, p, metric, corrupted)
        assert _close(row["value"], want), row


def _patched(model, module, src, p, metric, x):
    """``metric(model(x))`` with ``module``'s output at position ``p`` set from ``src``."""

    def hook(m, args, out):
        new = out.clone()
        new[:, p] = src[:, p]
        return new

    h = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return float(metric(model(x)))
    finally:
        h.remove()


class _Branches(nn.Module):
    """Two parallel branches (``b`` does not depend on ``a``) joined before ``c``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.a(x)) * self.b(x))


def test_sites_on_parallel_branches_share_a_replay_and_equal_hooks(replays):
    model = _Branches().eval()
    g = torch.Generator().manual_seed(6)
    clean, corrupted = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)

    def metric(out):
        return out[:, -1].sum()

    res = sweeps.patching(model, clean, corrupted, ["a", "b", "c"], metric=metric,
                          batch_size=100, progress=False)
    assert len(replays) == 1 and len(replays[0]) == 3
    other = copy.deepcopy(model)
    with torch.no_grad():
        src = {"a": other.a(clean), "b": other.b(clean),
               "c": other.c(torch.relu(other.a(clean)) * other.b(clean))}
    for row in res.rows:
        module = other.get_submodule(row["site"])
        want = _patched(other, module, src[row["site"]], row["position"], metric, corrupted)
        assert _close(row["value"], want), row
