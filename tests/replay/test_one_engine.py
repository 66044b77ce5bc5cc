"""One replay engine: the same cell gives the same number by every route, on every run.

The cell: zero-ablate the first linear layer of a model with dropout in training mode
downstream of it. fork().replay(), fork().rerun(model, x), a live tl.run(intervene=...)
and tl.sweep.ablation must all equal a forward hook doing the same ablation from the
same seed (plain PyTorch, no lens involved), and give it again when run again.
"""

from __future__ import annotations

import torch
from torch import nn

import lens as tl
import lens.interventions as li

SEED = 5


def _model() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3),
                          nn.Dropout(0.3)).train()
    return model, torch.randn(4, 6)


def _metric(out: torch.Tensor) -> torch.Tensor:
    return out.detach().sum()


def _by_hook(model: nn.Module, x: torch.Tensor) -> float:
    h = model[0].register_forward_hook(lambda m, i, o: torch.zeros_like(o))
    try:
        torch.manual_seed(SEED)
        with torch.no_grad():
            return float(_metric(model(x)))
    finally:
        h.remove()


def _routes(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    torch.manual_seed(SEED)
    src = tl.trace(model, x, intervention_ready=True)
    label = next(op.label for op in src.ops if op.func_name == "linear")
    f = src.fork().intervene(label, li.zero_ablate()).replay()
    rerun = f.rerun(model, x)
    torch.manual_seed(SEED)
    live = li.run(model, x, intervene=li.when(label, li.zero_ablate(), reference=src))
    torch.manual_seed(SEED)
    swept = tl.sweep.ablation(model, x, tl.func("linear"), metric=_metric, progress=False)
    row = next(r for r in swept.rows if r["site"] == label)
    return {"replay": float(_metric(f.output)), "rerun": float(_metric(rerun.output)),
            "live": float(_metric(live)), "sweep": row["value"]}


def test_every_route_gives_the_hooked_value_on_every_run() -> None:
    model, x = _model()
    expected = _by_hook(model, x)
    first = _routes(model, x)
    assert first == dict.fromkeys(first, expected), first
    torch.rand(17)  # the caller's stream moved: nothing may depend on it
    assert _routes(model, x) == first
    torch.manual_seed(SEED)
    with torch.no_grad():
        plain = float(_metric(model(x)))
    assert plain != expected  # the ablation matters, so equality above is not vacuous


def test_every_sweep_cell_equals_its_hooked_run() -> None:
    model, x = _model()
    modules = {"linear_1_1": model[0], "relu_1_2": model[1], "linear_2_4": model[3]}
    expected = {}
    for label, module in modules.items():
        h = module.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
        try:
            torch.manual_seed(SEED)
            with torch.no_grad():
                expected[label] = float(_metric(model(x)))
        finally:
            h.remove()
    for _ in range(2):
        torch.manual_seed(SEED)
        res = tl.sweep.ablation(model, x, tl.func("linear", "relu"), metric=_metric,
                                progress=False)
        assert {r["site"]: r["value"] for r in res.rows} == expected
