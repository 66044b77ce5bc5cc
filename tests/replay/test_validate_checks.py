"""tl.validate's perturbations change every parent, and its exemptions say why."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lens as tl
from lens.replay.perturb import perturbed, scale_of
from tests.models import get


@pytest.mark.parametrize("value", [0.0, 1.0, -3.5, 1e20, -1e30, 1e-30])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_perturbed_changes_every_finite_element_and_stays_finite(value: float,
                                                                 dtype: torch.dtype) -> None:
    p = torch.full((64,), value).to(dtype)  # constant: a permutation would not change it
    p = p.nan_to_num(posinf=float(torch.finfo(dtype).max))
    new = perturbed(p, scale_of([p]), torch.Generator().manual_seed(0))
    assert new.dtype == dtype and torch.isfinite(new).all()
    assert (new != p).all()


def test_a_small_parent_beside_a_huge_operand_still_moves_the_output() -> None:
    class Absorb(nn.Module):
        def forward(self, x):
            return (x + 1e20) * 2

    report = tl.validate(Absorb(), torch.randn(3))
    assert report and not report.exempt and report.perturbed >= 2, str(report)


def _exempt(report: tl.ValidationReport, word: str) -> list[tuple[str, str]]:
    return [e for e in report.exempt if word in e[1]]


def test_exemptions_name_their_reason() -> None:
    model, args, _ = get("huge_and_nan").build()
    report = tl.validate(model, *args)
    assert report, str(report)
    assert _exempt(report, "NaN") and _exempt(report, "zero-weighted")
    model, args, _ = get("empty_filled").build()
    report = tl.validate(model, *args)
    assert report and len(_exempt(report, "uninitialised memory")) == 2, str(report)


def test_train_mode_batch_norm_running_stats_are_exempt_and_left_alone() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=True))
    model[1].num_batches_tracked = None  # keep the in-place counter out of this test
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = tl.validate(model, torch.randn(6, 4))
    assert report, str(report)
    assert len(_exempt(report, "train-mode batch_norm")) == 2
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_forward_needing_grad_validates_with_a_note_or_under_its_own_enable_grad() -> None:
    class NeedsGrad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 1)

        def forward(self, x):
            x = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(self.fc(x).sum(), x)
            return g * x

    report = tl.validate(NeedsGrad(), torch.randn(2, 3))
    assert report, str(report)
    assert any("grad enabled" in n for n in report.notes)
    assert _exempt(report, "autograd")
