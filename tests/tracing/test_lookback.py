"""``lookback`` with ``lookback_payload_policy``: a ``tl.followed_by`` save decided a few
ops after each candidate, holding at most ``lookback`` candidate payloads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lens as tl
from lens.capture import Interceptor


class _Mixed(nn.Module):
    """Convs followed by an in-place relu, by a pool, and by nothing but the output."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3, self.c4 = (nn.Conv2d(3 if i == 0 else 4, 4, 3, padding=1)
                                              for i in range(4))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.act(self.c1(x))
        x = nn.functional.max_pool2d(self.c2(x), 2)
        x = torch.relu(self.c3(x))
        return self.c4(x)


def _conv_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Ground truth by plain forward hooks (cloned before the in-place relu runs)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [getattr(model, n).register_forward_hook(
        lambda m, i, o, n=n: seen.__setitem__(n, o.detach().clone())) for n in ("c1", "c2",
                                                                               "c3", "c4")]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def test_detached_raw_saves_exactly_the_convs_followed_by_relu():
    torch.manual_seed(0)
    model, x = _Mixed(), torch.rand(1, 3, 8, 8)
    truth = _conv_outputs(model, x)
    sel = tl.func("conv2d") & tl.followed_by(tl.func("relu"))
    tr = tl.trace(model, x, save=sel, lookback=4, lookback_payload_policy="detached_raw")
    saved = {op.module: op.out for op in tr.ops if op.type == "conv2d" and op.has_payload}
    assert sorted(saved) == ["c1", "c3"]
    for name, value in saved.items():  # c1's payload predates the in-place relu
        assert torch.equal(value, truth[name])
        assert not value.requires_grad
    exact = tl.trace(model, x, save=sel)  # decided on the finished pass: the same ops
    assert sorted(op.module for op in exact.ops if op.has_payload and op.type == "conv2d") \
        == ["c1", "c3"]


class _PendingProbe(Interceptor):
    """An interceptor that records how many undecided payloads the recorder holds."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.rec = None

    def attach(self, rec) -> None:
        self.rec = rec

    def __call__(self, op, value):
        self.sizes.append(len(self.rec.pending))
        return value


def test_detached_raw_holds_at_most_lookback_candidates():
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(12)])
    probe = _PendingProbe()
    sel = tl.func("linear") & tl.followed_by(tl.func("linear"))
    tr = tl.trace(model, torch.rand(2, 4), save=sel, lookback=2,
                  lookback_payload_policy="detached_raw", intervene=probe)
    assert max(probe.sizes) <= 2
    assert sum(op.has_payload for op in tr.ops if op.type == "linear") == 11
    unbounded = _PendingProbe()
    tl.trace(model, torch.rand(2, 4), save=tl.func("linear") & tl.followed_by(
        tl.func("sigmoid")), intervene=unbounded)
    assert max(unbounded.sizes) == 12  # no window: every candidate waits for the end


def test_metadata_only_window_cannot_save_a_lookahead_match_and_says_what_to_pass():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    sel = tl.func("linear") & tl.followed_by(tl.func("relu"))
    with pytest.raises(tl.SelectorError, match="detached_raw"):
        tl.trace(model, torch.rand(2, 4), save=sel, lookback=4)
    with pytest.raises(tl.SelectorError, match="metadata_only"):
        tl.trace(model, torch.rand(2, 4), save=sel, lookback=4,
                 lookback_payload_policy="detached")
    with pytest.raises(tl.ArgumentTypeError):
        tl.trace(model, torch.rand(2, 4), save=sel, lookback_payload_policy=1)
    live = tl.trace(model, torch.rand(2, 4), save=tl.func("relu"), lookback=4)
    assert [op.type for op in live.ops if op.kind == "op" and op.has_payload] == ["relu"]


def test_record_takes_the_same_policy():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    sel = tl.func("linear") & tl.followed_by(tl.func("relu"))
    rec = tl.record(model, torch.rand(2, 4), save=sel, lookback=1,
                    lookback_payload_policy="detached_raw")
    tr = rec.to_trace()
    assert [op.label for op in tr.ops if op.type == "linear" and op.has_payload] \
        == ["linear_1_1"]
