"""``make demo``: the quickstart on a small built-in model.

Traces a small CNN, prints the trace and its summary, validates the saved activations,
and writes the graph drawing to ``demo-out/``. Run with ``python -m lens.demo``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

import lens as tl


class SmallCNN(nn.Module):
    """An AlexNet-shaped toy: conv/relu/pool features, then a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 8 * 8, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x))
        return out


def main(out_dir: str = "demo-out") -> int:
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.randn(2, 3, 32, 32)
    trace = tl.trace(model, x)
    print(trace)
    print()
    print(trace.summary())
    print()
    print(trace["conv2d_3"])
    print()
    print(tl.validate(model, x))
    out = Path(out_dir)
    out.mkdir(exist_ok=True)
    try:
        path = trace.draw(str(out / "small_cnn"), format="svg")
    except tl.LensError as e:
        print(f"\n(no drawing: {e})")
    else:
        print(f"\nGraph written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
