"""Issue 4: selective save, halting early and sparse recording, as ratios to raw."""

from __future__ import annotations

from typing import Any

import torch

import lens as tl

from .common import Section, interleaved, raw_forward


def run(models: dict[str, Any]) -> Section:
    sec = Section("extraction (issue 4)")
    model, args, kwargs = models["gpt2_small_shaped"]
    gelu = tl.func("gelu", "tanh")  # HF GPT-2's NewGELU is written with torch.tanh

    def traced(**opts: Any) -> Any:
        def run() -> Any:
            with torch.no_grad():
                return tl.trace(model, *args, input_kwargs=kwargs, **opts)
        return run

    def recorded() -> Any:
        with torch.no_grad():
            return tl.record(model, *args, input_kwargs=kwargs, save=tl.func("tanh"))

    t = interleaved({
        "raw": raw_forward(model, args, kwargs),
        "gelu": traced(save=gelu),
        "module": traced(save=tl.module("transformer.h.5.mlp")),
        "halt": traced(save=tl.in_module("transformer.h.0"),
                       halt=tl.module("transformer.h.0")),
        "record": recorded,
    })
    raw = t["raw"]
    sec.add("gpt2_small_shaped: save=tl.func('gelu'/'tanh')", t["gelu"] / raw,
            target="<= 1.15")
    sec.add("gpt2_small_shaped: save=tl.module('transformer.h.5.mlp')", t["module"] / raw,
            target="<= 1.15")
    sec.add("gpt2_small_shaped: halt after the first block", t["halt"] / raw,
            target="<= 0.3")
    sec.add("gpt2_small_shaped: tl.record, sparse selector", t["record"] / raw,
            target="<= 1.1")
    return sec
