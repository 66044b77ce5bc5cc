"""The recurrence of a fused ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` call, step by step.

:func:`unroll` recomputes every state and gate from the call's input, initial state and
weights (the layout of the recurrent facets: ``[layer, direction, batch, time, hidden]``);
a hook sees each gate and state as it is made and may replace it, which is how a per-step
edit runs the rest of the recurrence with the edit applied.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ._registry import Owner

GATES = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n"), "rnn_tanh": (),
         "rnn_relu": ()}
OUTPUTS = ("output", "h_n", "c_n")


@dataclass(frozen=True)
class RnnSpec:
    owner: Owner
    mode: str
    x: int
    hx: tuple[int, ...]
    params: tuple[str, ...]
    biases: bool
    layers: int
    bidirectional: bool
    batch_first: bool
    outputs: tuple[int, ...]  # output, h_n (, c_n)
    unrollable: bool


Hook = Callable[..., Tensor]  # hook(name, value, layer=, direction=, t=) -> value


def _same(name: str, value: Tensor, layer: int, direction: int, t: int) -> Tensor:
    return value


def unroll(s: RnnSpec, x: Tensor, hx: list[Tensor], params: list[Tensor],
           hook: Hook = _same) -> dict[str, Tensor]:
    """Run the recurrence step by step; every state and gate, and the fused outputs.
    ``hook(name, value, layer=, direction=, t=)`` may replace each state or gate as it is
    computed: the rest of the recurrence uses what it returns."""
    dirs = 2 if s.bidirectional else 1
    per = len(params) // (s.layers * dirs)
    seq = x.transpose(0, 1) if s.batch_first else x  # [T, B, F]
    steps = seq.shape[0]
    record: dict[str, list[Tensor]] = {}
    finals: dict[str, list[Tensor]] = {"h_n": [], "c_n": []}
    for layer in range(s.layers):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            w = params[k * per:(k + 1) * per]
            w_ih, w_hh = w[0], w[1]
            b_ih, b_hh = (w[2], w[3]) if s.biases else (None, None)
            w_hr = w[-1] if per in (3, 5) else None
            state = {"h": hx[0][k], "c": hx[1][k] if len(hx) > 1 else hx[0][k]}
            pre = seq @ w_ih.t() + (b_ih if b_ih is not None else 0)
            order = range(steps) if d == 0 else range(steps - 1, -1, -1)
            trail: dict[str, list[Tensor | None]] = {}
            for t in order:
                got = _step(s.mode, pre[t], state, w_hh, b_hh, w_hr,
                            functools.partial(hook, layer=layer, direction=d, t=t))
                for name, val in got.items():
                    trail.setdefault(name, [None] * steps)[t] = val
                state = {"h": got["h"], "c": got.get("c", state["c"])}
            for name, vals in trail.items():
                record.setdefault(name, []).append(torch.stack(vals, dim=1))  # type: ignore[arg-type]
            finals["h_n"].append(state["h"])
            finals["c_n"].append(state["c"])
            outs.append(torch.stack(trail["h"], dim=0))  # type: ignore[arg-type]
        seq = torch.cat(outs, dim=-1)
    found = {name: torch.stack(vals).reshape(s.layers, dirs, *vals[0].shape)
             for name, vals in record.items()}
    found["output"] = seq.transpose(0, 1) if s.batch_first else seq
    found["h_n"] = torch.stack(finals["h_n"])
    if s.mode == "lstm":
        found["c_n"] = torch.stack(finals["c_n"])
    return found


def _step(mode: str, pre: Tensor, state: dict[str, Tensor], w_hh: Tensor,
          b_hh: Tensor | None, w_hr: Tensor | None, hk: Callable[..., Tensor]
          ) -> dict[str, Tensor]:
    """One time step; ``hk(name, value)`` sees each gate and state as it is made."""
    h = state["h"]
    rec = h @ w_hh.t() + (b_hh if b_hh is not None else 0)
    if mode == "lstm":
        i, f, g, o = (pre + rec).chunk(4, dim=-1)
        i, f = hk("i", i.sigmoid()), hk("f", f.sigmoid())
        g, o = hk("g", g.tanh()), hk("o", o.sigmoid())
        c = hk("c", f * state["c"] + i * g)
        h = o * c.tanh()
        if w_hr is not None:
            h = h @ w_hr.t()
        return {"h": hk("h", h), "c": c, "i": i, "f": f, "g": g, "o": o}
    if mode == "gru":
        r_i, z_i, n_i = pre.chunk(3, dim=-1)
        r_h, z_h, n_h = rec.chunk(3, dim=-1)
        r, z = hk("r", (r_i + r_h).sigmoid()), hk("z", (z_i + z_h).sigmoid())
        n = hk("n", (n_i + r * n_h).tanh())
        return {"h": hk("h", (1 - z) * n + z * h), "r": r, "z": z, "n": n}
    act = torch.tanh if mode == "rnn_tanh" else torch.relu
    return {"h": hk("h", act(pre + rec))}
