"""``make demo`` (``python -m lens.demo``): find the induction circuit of a tiny transformer.

1. Loads a 2-layer attention-only transformer trained on repeated random tokens (trained
   on first use, in well under a minute on a CPU, then cached in ``$LENS_CACHE`` or
   ``.lens-cache/``; see :mod:`lens.examples.induction`).
2. Traces it on prompts ``[BOS, A1 .. An, A1 .. Ak]`` and draws the graph.
3. Activation patching, clean into corrupted (``A(k+1)`` replaced in the first copy), at
   each (residual-stream depth, position), then per attention head.
4. Writes ``demo-out/``: the graph (SVG), the heatmap (PNG) and the tables (CSV).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

import lens as tl
from lens.examples import induction

RESIDUAL = ["embed", "blocks.0", "blocks.1"]  # module addresses: the stream at each depth
HEAD_OUTPUTS = tl.func("matmul") & tl.preceded_by(tl.func("softmax"))  # z = pattern @ v


def main(out_dir: str | None = None) -> int:
    t0 = time.perf_counter()
    out = Path(out_dir or os.environ.get("LENS_DEMO_OUT", "demo-out"))
    out.mkdir(parents=True, exist_ok=True)
    model, config = induction.load_or_train()
    clean, corrupted, answers = induction.prompts(config, batch=8)
    metric = induction.LogitDiff(answers)
    k = clean.shape[1] - 1 - config.max_period  # the second copy holds A1 .. Ak
    print(f"\nPrompts of {clean.shape[1]} tokens: [BOS, A1..A{config.max_period}, A1..A{k}]; "
          f"corrupted: A{k + 1} at position {k + 1} replaced by an unseen token.")

    trace = tl.trace(model, clean)
    print(f"\n{trace!r}")
    print(trace.summary(depth=3))
    patterns = [op for op in trace.ops if tl.func("softmax")(op)]
    print("attention patterns (softmax ops): "
          + ", ".join(f"{op.label} in {op.module}" for op in patterns))
    written = [_draw(trace, out / "induction_graph.svg")]

    with torch.no_grad():
        print(f"\nlogit difference (correct - distractor) at the last position: "
              f"clean {float(metric(model(clean))):+.2f}, "
              f"corrupted {float(metric(model(corrupted))):+.2f}")

    res = tl.sweep.patching(model, clean, corrupted, RESIDUAL, metric=metric,
                            progress=False)
    table = res.pivot()  # rows name the sites as given: 'embed', 'blocks.0', ...
    print("\nPatching the residual stream, one (depth, position) at a time "
          "(metric after patching):")
    print(table.round(1).to_string())
    fig = res.heatmap(title="patching clean -> corrupted: logit difference")
    written.append(_save_fig(fig, out / "patching_heatmap.png"))
    written.append(res.save(str(out / "patching_residual.csv")))

    heads = tl.sweep.patching(model, clean, corrupted, HEAD_OUTPUTS, metric=metric,
                              position_dim=1, progress=False)  # dim 1 of z is the head
    frame = heads.to_pandas()
    frame["layer"] = frame["site"].map({s: i for i, s in enumerate(dict.fromkeys(
        frame["site"]))})
    frame["restored"] = (frame["value"] - frame["baseline"]) / (frame["clean"]
                                                                - frame["baseline"])
    print("\nPatching one head's output (z) at every position: fraction of the clean "
          "logit difference restored")
    print(frame.pivot(index="layer", columns="position", values="restored").round(2)
          .rename_axis(columns="head").to_string())
    path = out / "patching_heads.csv"
    frame.to_csv(path, index=False)
    written.append(str(path))

    best = frame.loc[frame["restored"].idxmax()]
    layer, head = int(best["layer"]), int(best["position"])
    stripe = induction.stripe_scores(patterns[layer].out.detach(), clean, offset=1)
    print(f"\nFinding: the corrupted token matters at position {k + 1} up to layer 0 and "
          f"at the last position after layer 1. The most important head is layer {layer} "
          f"head {head} ({best['restored']:.0%} restored alone); it puts "
          f"{float(stripe[head]):.0%} of its attention on the induction stripe (the "
          "token after the previous occurrence of the current one).")
    print(f"\nWrote ({time.perf_counter() - t0:.1f}s):")
    for p in written:
        if p:
            print(f"  {p}")
    return 0


def _draw(trace: tl.Trace, path: Path) -> str | None:
    try:
        return trace.draw(str(path))
    except tl.LensError as e:  # e.g. Graphviz's `dot` program is not installed
        print(f"\n(no graph drawing: {e})")
        return None


def _save_fig(fig: object, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=120, bbox_inches="tight")  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return str(path)


if __name__ == "__main__":  # pragma: no cover - run as ``python -m lens.demo``
    sys.exit(main())
