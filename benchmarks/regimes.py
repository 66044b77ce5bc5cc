"""Issue 13: every figure of the targets table, in both regimes, as ratios to the raw
forward of the same model in the same process (median of interleaved runs).

* ``dispatch``: GPT-2-shaped, ``n_layer=12, n_embd=64, n_head=4``, batch 1, 8 tokens, one
  thread. Tensors are tiny, so each torch call costs a few microseconds of dispatch, as
  kernel launches do on a GPU: lens's per-op Python is the whole bill here.
* ``small``: GPT-2-small-shaped, ``n_embd=768, n_head=12``, batch 1, 32 tokens, two
  threads: compute-bound on a CPU, so per-op bookkeeping hides behind the matmuls.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import lens as tl

from . import inplace
from .common import Section, interleaved, raw_forward
from .floor import (
    FloorRecorder,
    bare_mode,
    hooks_batched_patching,
    hooks_every_module,
    hooks_one_module,
)
from .memory import peak_rss_in_subprocess, peak_rss_over_payload

BLOCK = "transformer.h.5"
GELU = tl.func("gelu", "tanh")  # HF GPT-2's NewGELU is written with torch.tanh

# key, figure, unit, target (dispatch), target (small); "(x)" is a reference, not a target.
TARGETS: list[tuple[str, str, str, str, str]] = [
    ("full_seen", "full capture, all payloads, one label lookup (graph seen)", "x raw",
     "<= 2.0", "<= 1.10"),
    ("full_new", "the same, first trace of a new graph", "x raw", "<= 3.0", "<= 1.15"),
    ("trace_save_false", "tl.trace(save=False)", "x raw", "<= 1.8", "<= 1.08"),
    ("record_all", "tl.record, every op", "x raw", "<= 1.8", "<= 1.08"),
    ("module_save", f"save=tl.module('{BLOCK}')", "x raw", "<= 1.10", "<= 1.03"),
    ("module_record", "tl.record(save=) at one module", "x raw", "<= 1.10", "<= 1.03"),
    ("module_record_sparse", "tl.record(save=, sparse=True) at one module", "x raw",
     "<= 1.10", "<= 1.03"),
    ("module_halt", "halt= at one module (saving it)", "x raw", "<= 1.10", "<= 1.03"),
    ("module_run", "tl.run(intervene=) at one module", "x raw", "<= 1.10", "<= 1.03"),
    ("in_module_func", "save=tl.in_module(block) & tl.func('gelu','tanh')", "x raw",
     "<= 1.3", "<= 1.05"),
    ("in_module_func_sparse", "the same, tl.record(save=, sparse=True): mode inside block",
     "x raw", "<= 1.3", "<= 1.05"),
    ("per_op_us", "per-op overhead, (full capture - raw) / recorded ops", "us/op",
     "<= 4", ""),
    ("floor", "floor: bare TorchFunctionMode + pre/post hooks", "x raw", "(1.66)", ""),
    ("floor_per_op_us", "floor per op, (floor - raw) / lens's recorded ops", "us/op",
     "(2.7)", ""),
    ("floor_mode", "a bare TorchFunctionMode alone (no module hooks)", "x raw", "", ""),
    ("hooks_all", "forward hooks on every module, outputs stored", "x raw", "(1.06)", ""),
    ("hooks_one", "forward hook on one module, output stored", "x raw", "", ""),
    ("sweep_cell", "residual patching sweep, 12 blocks x every position, per cell",
     "ratio", "<= 0.10", "<= 0.30"),
    ("sweep_hooks_cell", "the same with forward hooks batched per block, per cell",
     "ratio", "(0.20)", "(0.59)"),
    ("inplace", "8,000 ops half in place / out of place (capture)", "ratio", "<= 1.5", ""),
    ("rss_over_payload", "peak RSS above saved payload bytes, full capture", "%",
     "<= 20", "<= 20"),
]
TIMED = [k for k, *_ in TARGETS]


@dataclass
class Regime:
    """One model setting: its GPT-2 shape (the arguments of :func:`gpt2`) and how hard
    to measure it."""

    name: str
    title: str
    shape: dict[str, int]
    threads: int
    repeats: int
    warmup: int = 2
    sweep_repeats: int = 1
    hook_blocks: int | None = None  # blocks the hook sweep samples (None: all)
    inplace_ops: int = inplace.N_OPS
    rss_in_subprocess: bool = True  # False: in this process (a lower bound; for tests)

    def build(self) -> tuple[nn.Module, torch.Tensor]:
        return gpt2(**self.shape)()


def gpt2(n_embd: int, n_head: int, tokens: int, n_layer: int = 12,
         vocab: int | None = None) -> Callable[[], tuple[nn.Module, torch.Tensor]]:
    def build() -> tuple[nn.Module, torch.Tensor]:
        from transformers import GPT2Config, GPT2LMHeadModel

        extra = {} if vocab is None else {"vocab_size": vocab, "bos_token_id": 0,
                                          "eos_token_id": 0}
        cfg = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, use_cache=False,
                         **extra)
        torch.manual_seed(0)
        model = GPT2LMHeadModel(cfg).eval()
        ids = torch.randint(0, cfg.vocab_size, (1, tokens),
                            generator=torch.Generator().manual_seed(1))
        return model, ids
    return build


# The dispatch-bound model keeps a 512-token vocabulary so that its LM head (which is one
# kernel on a GPU) does not make it compute-bound on a CPU: every figure measures dispatch.
REGIMES = {
    "dispatch": Regime("dispatch", "dispatch-bound, n_embd 64, 8 tokens",
                       {"n_embd": 64, "n_head": 4, "tokens": 8, "vocab": 512},
                       threads=1, repeats=15, sweep_repeats=3),
    "small": Regime("small", "GPT-2-small-shaped, n_embd 768, 32 tokens",
                    {"n_embd": 768, "n_head": 12, "tokens": 32},
                    threads=2, repeats=5, hook_blocks=3),
}


class _Fresh(nn.Module):
    """A new top module around the same weights: a graph no earlier trace has seen."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any) -> Any:
        return self.inner(*args)


def _no_grad(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        with torch.no_grad():
            return fn()
    return run


def _forward_fns(model: nn.Module, x: torch.Tensor, block: str) -> dict[str, Callable[[], Any]]:
    """Every timed call on the same model and input, keyed as in :data:`TARGETS`."""
    with torch.no_grad():
        warm = tl.trace(model, x)
    label = warm.ops[len(warm.ops) // 2].label
    rule = tl.when(tl.module(block), tl.scale(1.0))
    floor = FloorRecorder(model)
    every, one = hooks_every_module(model), hooks_one_module(model, block)
    fns: dict[str, Callable[[], Any]] = {
        "raw": raw_forward(model, (x,), {}),
        "full_seen": lambda: tl.trace(model, x)[label].out,
        "full_new": lambda: tl.trace(_Fresh(model), x)[label].out,
        "trace_save_false": lambda: tl.trace(model, x, save=False),
        "record_all": lambda: tl.record(model, x),
        "module_save": lambda: tl.trace(model, x, save=tl.module(block)),
        "module_record": lambda: tl.record(model, x, save=tl.module(block)),
        "module_record_sparse": lambda: tl.record(model, x, save=tl.module(block),
                                                  sparse=True),
        "module_halt": lambda: tl.trace(model, x, save=tl.module(block),
                                        halt=tl.module(block)),
        "module_run": lambda: tl.run(model, x, intervene=rule),
        "in_module_func": lambda: tl.trace(model, x, save=tl.in_module(block) & GELU),
        "in_module_func_sparse": lambda: tl.record(model, x, save=tl.in_module(block) & GELU,
                                                   sparse=True),
        "floor": lambda: floor(x),
        "floor_mode": lambda: bare_mode(model, x),
        "hooks_all": lambda: every(x),
        "hooks_one": lambda: one(x),
    }
    return {k: _no_grad(f) for k, f in fns.items()}


def _metric(logits: torch.Tensor) -> torch.Tensor:
    return logits[0, -1, 11] - logits[0, -1, 7]


def _sweeps(model: Any, x: torch.Tensor, reg: Regime) -> dict[str, float]:
    """Seconds per cell of the lens sweep (every block x every position) and of the hook
    sweep batched per block (on ``reg.hook_blocks`` blocks: the cost per cell is the
    same for every block)."""
    from lens import sweeps

    corrupted = torch.roll(x, 1, dims=1)
    blocks = [f"transformer.h.{i}" for i in range(model.config.n_layer)]
    hook_blocks = blocks[:reg.hook_blocks] if reg.hook_blocks else blocks
    positions = x.shape[1]

    def lens_sweep() -> Any:
        return sweeps.patching(model, x, corrupted, blocks, metric=_metric, batch_size=32,
                               progress=False)

    def hook_sweep() -> Any:
        with torch.no_grad():
            return hooks_batched_patching(model, x, corrupted, hook_blocks, _metric)

    warm = min(1, reg.warmup) if reg.sweep_repeats > 1 else 0
    t = interleaved({"lens": lens_sweep, "hooks": hook_sweep}, repeats=reg.sweep_repeats,
                    warmup=warm)
    return {"sweep_cell": t["lens"] / (len(blocks) * positions),
            "sweep_hooks_cell": t["hooks"] / (len(hook_blocks) * positions)}


def _inplace_ratio(reg: Regime) -> float:
    old = inplace.N_OPS
    inplace.N_OPS = reg.inplace_ops  # the chain reads it as it runs
    try:
        x = torch.randn(4, 4)
        chains = {"out": inplace._Chain(False), "in": inplace._Chain(True)}
        fns = {k: _no_grad(lambda m=m: tl.trace(m, x)) for k, m in chains.items()}
        t = interleaved(fns, repeats=max(min(3, reg.repeats), reg.repeats // 3),
                        warmup=min(1, reg.warmup))
    finally:
        inplace.N_OPS = old
    return t["in"] / t["out"]


def measure(reg: Regime, block: str = BLOCK) -> dict[str, float]:
    """Every figure of :data:`TARGETS` for one regime (``inplace`` only for ``dispatch``:
    it compares two captures, not a capture with a model)."""
    torch.set_num_threads(reg.threads)
    model, x = reg.build()
    # Objects alive now (torch, transformers, the model) move to a permanent generation,
    # so the gc.collect() before each timed call (outside the timing) stays cheap.
    gc.collect()
    gc.freeze()
    try:
        return _measure(reg, model, x, block)
    finally:
        gc.unfreeze()


def _measure(reg: Regime, model: Any, x: torch.Tensor, block: str) -> dict[str, float]:
    fns = _forward_fns(model, x, block)
    t = interleaved(fns, repeats=reg.repeats, warmup=reg.warmup)
    raw = t["raw"]
    with torch.no_grad():
        n_ops = len(tl.trace(model, x).ops)
    fig = {k: v / raw for k, v in t.items() if k != "raw"}
    fig["per_op_us"] = (t["full_seen"] - raw) / n_ops * 1e6
    fig["floor_per_op_us"] = (t["floor"] - raw) / n_ops * 1e6
    fig.update({k: v / raw for k, v in _sweeps(model, x, reg).items()})
    if reg.name == "dispatch":
        fig["inplace"] = _inplace_ratio(reg)
    if reg.rss_in_subprocess:
        fig["rss_over_payload"] = peak_rss_in_subprocess(reg.shape, reg.threads) * 100
    else:
        fig["rss_over_payload"] = peak_rss_over_payload(lambda: tl.trace(model, x)) * 100
    fig["raw_ms"] = raw * 1e3
    fig["ops"] = float(n_ops)
    return fig


def run(regimes: list[str] | None = None, overrides: dict[str, Any] | None = None
        ) -> tuple[Section, dict[str, dict[str, float]]]:
    """Measure the named regimes (default: both); print each figure as it comes and then
    the table side by side. ``overrides`` replace :class:`Regime` fields (e.g. repeats)."""
    sec = Section("regimes (issue 13)")
    results: dict[str, dict[str, float]] = {}
    for name in regimes or list(REGIMES):
        reg = REGIMES[name]
        if overrides:
            reg = Regime(**{**reg.__dict__, **overrides})
        print(f"  -- {name}: {reg.title}, {reg.threads} thread(s), median of {reg.repeats}")
        fig = results[name] = measure(reg)
        col = 3 if name == "dispatch" else 4
        for row in TARGETS:
            if row[0] in fig:
                sec.add(f"{name}: {row[1]}", fig[row[0]], unit=row[2], target=row[col],
                        note=f"raw {fig['raw_ms']:.2f} ms, {fig['ops']:.0f} ops"
                        if row[0] == "full_seen" else "")
    print_table(results)
    return sec, results


def print_table(results: dict[str, dict[str, float]]) -> None:
    def cell(name: str, key: str) -> str:
        v = results.get(name, {}).get(key)
        return "" if v is None or math.isnan(v) else f"{v:.3f}"

    print(f"\n  {'figure':<62} {'unit':<6} {'dispatch':>9} {'target':<8} "
          f"{'small':>9} {'target':<8}")
    for key, title, unit, t_d, t_s in TARGETS:
        print(f"  {title:<62} {unit:<6} {cell('dispatch', key):>9} {t_d:<8} "
              f"{cell('small', key):>9} {t_s:<8}")
