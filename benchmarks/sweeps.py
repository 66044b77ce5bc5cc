"""Issue 7: residual-stream patching sweep vs a forward-hook loop; Ray overhead per cell."""

from __future__ import annotations

import time
from typing import Any

import torch

from lens import sweeps

from .common import Section, interleaved, raw_forward


def _metric(logits: torch.Tensor) -> torch.Tensor:
    return logits[0, -1, 11] - logits[0, -1, 7]


def _main(o: Any) -> torch.Tensor:
    """A block's hidden states, whether it returns a tensor or a tuple."""
    return o[0] if isinstance(o, tuple) else o


def _gpt2_small_shaped() -> Any:
    from tests.models import gpt2_small_shaped

    return gpt2_small_shaped()[0]


def run(models: dict[str, Any]) -> Section:
    sec = Section("sweeps (issue 7)")
    model, args, _ = models["gpt2_small_shaped"]
    clean = args[0]
    corrupted = torch.roll(clean, 1, dims=1)
    layers = [f"transformer.h.{i}" for i in range(model.config.n_layer)]
    positions = clean.shape[1]
    raw = interleaved({"raw": raw_forward(model, (corrupted,), {})})["raw"]

    t0 = time.perf_counter()
    res = sweeps.patching(model, clean, corrupted, layers, metric=_metric, batch_size=32,
                          progress=False)
    lens_total = time.perf_counter() - t0
    cells = len(res)
    sec.add(f"residual patching, {cells} cells: total / (cells x raw)",
            lens_total / (cells * raw), unit="ratio", target="<= 0.35",
            note=f"{lens_total:.1f} s total, raw {raw * 1e3:.1f} ms")

    # The loop researchers write today: one hooked forward per cell (a sample of cells).
    saved: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(m).register_forward_hook(
        lambda mod, i, o, m=m: saved.__setitem__(m, _main(o).detach().clone()))
        for m in layers]
    with torch.no_grad():
        model(clean)
    for h in handles:
        h.remove()
    sample = [(m, p) for m in layers[:2] for p in range(positions)]
    t0 = time.perf_counter()
    for m, p in sample:
        def patch(mod: Any, i: Any, o: Any, m: str = m, p: int = p) -> Any:
            h = _main(o).clone()
            h[:, p] = saved[m][:, p]
            return (h, *o[1:]) if isinstance(o, tuple) else h

        handle = model.get_submodule(m).register_forward_hook(patch)
        with torch.no_grad():
            float(_metric(model(corrupted).logits))
        handle.remove()
    loop = (time.perf_counter() - t0) / len(sample)
    sec.add(f"hook loop ({len(sample)} cells sampled): per cell / raw", loop / raw,
            unit="ratio", note="one forward per cell")
    sec.add("speed-up of the lens sweep over the hook loop", loop / (lens_total / cells),
            unit="x")
    sec.rows.extend(_ray_overhead(clean, corrupted, layers[:2], raw))
    return sec


def _ray_overhead(clean: torch.Tensor, corrupted: torch.Tensor, layers: list[str],
                  raw: float) -> list[tuple[str, float, str, str, str]]:
    try:
        import ray
    except ImportError:
        print("  (ray not installed: skipping the Ray figure)")
        return []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        kw = {"metric": _metric, "batch_size": 8, "model_fn": _gpt2_small_shaped,
              "progress": False}
        t0 = time.perf_counter()
        local = sweeps.patching(None, clean, corrupted, layers, **kw)
        t_local = time.perf_counter() - t0
        t0 = time.perf_counter()
        remote = sweeps.patching(None, clean, corrupted, layers,
                                 executor=sweeps.RayExecutor(workers=2), **kw)
        t_ray = time.perf_counter() - t0
        assert remote.rows == local.rows, "Ray and local results differ"
        n = len(local)
        line = ("Ray (2 workers, 2-CPU local cluster): overhead per cell", (t_ray - t_local)
                / n * 1e3, "ms/cell", "", f"{n} cells; local {t_local:.1f} s, ray "
                f"{t_ray:.1f} s incl. worker start-up; raw {raw * 1e3:.0f} ms")
        print(f"  {line[0]:<58} {line[1]:>9.3f} {line[2]:<8} {line[3]:<10} {line[4]}")
        rows.append(line)
    finally:
        ray.shutdown()
    return rows
