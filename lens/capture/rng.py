"""Random ops: which calls draw, the generator state they drew from, and replaying it.

Capture snapshots the generator state just before each op that draws (a table of names,
so ops that never draw cost nothing): the default CPU generator, the current CUDA
device's generator once CUDA is initialised (never initialised here), and a generator
passed as ``generator=``. Replay re-enters that state for the op alone
(:func:`restored`), so it redraws the recorded numbers, ops downstream of an edit draw
what they drew at capture, and the caller's generators are left as they were.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import Tensor

# Calls that always draw (factories, in-place samplers, samplers over a tensor).
_ALWAYS = frozenset({
    "rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like",
    "bernoulli", "bernoulli_", "multinomial", "normal", "normal_", "uniform_", "poisson",
    "exponential_", "geometric_", "log_normal_", "cauchy_", "random_", "gumbel_softmax",
    "binomial", "_standard_gamma", "_sample_dirichlet",
})
# Calls that draw only in training mode: name -> (position of `training`, its default).
_TRAINING = {"rrelu": (3, False), "rrelu_": (3, False)}
_DROPOUT_P = {"scaled_dot_product_attention": 4, "multi_head_attention_forward": 10}


def may_draw(name: str) -> bool:
    """Whether calls named ``name`` can draw random numbers (cached per function)."""
    return name in _ALWAYS or name in _TRAINING or name in _DROPOUT_P or "dropout" in name


def _arg(args: tuple[Any, ...], kwargs: Mapping[str, Any], key: str, pos: int,
         default: Any) -> Any:
    if key in kwargs:
        return kwargs[key]
    return args[pos] if len(args) > pos else default


def draws(name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
    """Whether this call of a :func:`may_draw` function draws (dropout in eval mode, or
    with ``p=0``, does not). Works on live arguments and on recorded templates alike."""
    if name in _ALWAYS:
        return True
    if name in _TRAINING:
        pos, default = _TRAINING[name]
        return bool(_arg(args, kwargs, "training", pos, default))
    if name == "multi_head_attention_forward":
        return bool(_arg(args, kwargs, "training", 99, True)) and bool(
            _arg(args, kwargs, "dropout_p", 10, 0.0))
    if name in _DROPOUT_P:
        return bool(_arg(args, kwargs, "dropout_p", _DROPOUT_P[name], 0.0))
    if name.startswith("native_") or name == "feature_dropout":
        train = _arg(args, kwargs, "train", 2, True)
    else:
        train = _arg(args, kwargs, "training", 2, _arg(args, kwargs, "train", 2, True))
    return bool(train) and _arg(args, kwargs, "p", 1, 0.5) != 0


class RngState(NamedTuple):
    """Generator states before one random op: CPU, the current CUDA device's (index,
    state) when CUDA was initialised, and an explicit ``generator=``'s (device, state)."""

    cpu: Tensor
    cuda: tuple[int, Tensor] | None
    generator: tuple[str, Tensor] | None


def snapshot(kwargs: Mapping[str, Any]) -> RngState:
    """The state a random op is about to draw from (call just before it runs)."""
    cuda = None
    if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        dev = torch.cuda.current_device()
        cuda = (dev, torch.cuda.get_rng_state(dev))
    gen = kwargs.get("generator")
    explicit = None
    if isinstance(gen, torch.Generator):
        explicit = (str(gen.device), gen.get_state())
    return RngState(torch.get_rng_state(), cuda, explicit)


@contextmanager
def restored(state: RngState, kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Generators set to ``state`` for one call, the caller's put back afterwards.

    Yields the keyword arguments to call with: a recorded ``generator=`` is replaced by
    a fresh generator in the recorded state (the user's generator is never touched)."""
    devices = [state.cuda[0]] if state.cuda is not None else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(state.cpu)
        if state.cuda is not None:
            torch.cuda.set_rng_state(state.cuda[1], state.cuda[0])
        if state.generator is not None:
            device, gstate = state.generator
            fresh = torch.Generator(device=device)
            fresh.set_state(gstate)
            kwargs = {**kwargs, "generator": fresh}
        yield kwargs
