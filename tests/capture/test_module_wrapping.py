"""How a capture sees module calls: each module's ``forward`` is wrapped for the capture
and put back after it (``lens/capture/hooks.py``). Ground truth: the model's own
behaviour without lens, plain ``register_forward_hook`` and ``inspect.signature``."""

from __future__ import annotations

import copy
import inspect
import threading
from typing import Any

import torch
from torch import nn

import lens as tl
from lens.capture.hooks import ModuleHooks


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.b(self.a(x).relu() * scale)


def _calls(log: list[Any]) -> tuple[Any, Any]:
    def pre(m: nn.Module, args: Any, kwargs: Any) -> None:
        log.append(("in", m))

    def post(m: nn.Module, args: Any, kwargs: Any, out: Any) -> None:
        log.append(("out", m))
    return pre, post


def test_a_trace_sees_every_module_call_and_puts_forward_back():
    torch.manual_seed(0)
    net, x = _Net(), torch.randn(3, 4)
    t = tl.trace(net, x)
    assert {c.key for c in t.module_calls} == {"a:1", "b:1"}
    assert all("forward" not in vars(m) for m in net.modules())
    assert torch.equal(t["b"].out, net(x))


def test_a_forward_the_model_set_on_the_instance_is_used_and_kept():
    net, x = _Net(), torch.randn(3, 4)
    own = net.a.forward  # what a library like accelerate does: an instance forward

    def doubled(inp: torch.Tensor) -> torch.Tensor:
        return own(inp) * 2
    net.a.forward = doubled
    expected = net(x)
    t = tl.trace(net, x)
    assert torch.equal(t["b"].out, expected)
    assert vars(net.a)["forward"] is doubled
    assert "forward" not in vars(net.b)


def test_signature_of_a_wrapped_forward_is_the_modules_own():
    net, x = _Net(), torch.randn(3, 4)
    seen = {}

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen["sig"] = inspect.signature(self.net.forward)
            return self.net(x)

    tl.trace(Outer(), x)
    assert seen["sig"] == inspect.signature(_Net().forward)
    assert "scale" in seen["sig"].parameters


def test_a_copy_made_during_a_capture_runs_its_own_weights():
    torch.manual_seed(1)
    net, x = _Net(), torch.randn(3, 4)
    log: list[Any] = []
    hooks = ModuleHooks([net.a, net.b], *_calls(log))
    try:
        twin = copy.deepcopy(net)
        with torch.no_grad():
            twin.a.weight.zero_()
            twin.a.bias.zero_()
        got = twin(x)
    finally:
        hooks.remove()
    assert torch.equal(got, twin.b(torch.zeros(3, 4)))  # a is zero in the copy
    assert not log  # the copy's calls are not the captured model's
    assert all("forward" not in vars(m) for m in net.modules())


def test_user_hooks_still_run_and_see_the_modules_output():
    torch.manual_seed(2)
    net, x = _Net(), torch.randn(3, 4)
    got: list[torch.Tensor] = []
    h = net.a.register_forward_hook(lambda m, a, o: got.append(o.detach().clone()))
    try:
        t = tl.trace(net, x)
    finally:
        h.remove()
    assert len(got) == 1 and torch.equal(got[0], t["a"].out)


def test_nested_hooks_in_one_thread_each_see_calls_until_removed():
    net, x = _Net(), torch.randn(3, 4)
    outer_log: list[Any] = []
    inner_log: list[Any] = []
    outer = ModuleHooks([net.a], *_calls(outer_log))
    inner = ModuleHooks([net.a], *_calls(inner_log))
    net(x)
    inner.remove()
    net(x)
    outer.remove()
    net(x)
    assert outer_log == [("in", net.a), ("out", net.a)] * 2
    assert inner_log == [("in", net.a), ("out", net.a)]
    assert "forward" not in vars(net.a)


def test_another_threads_calls_are_not_seen_and_compute_the_same():
    torch.manual_seed(3)
    net, x = _Net(), torch.randn(3, 4)
    expected = net(x)
    log: list[Any] = []
    hooks = ModuleHooks([net.a, net.b], *_calls(log))
    out: list[torch.Tensor] = []
    try:
        th = threading.Thread(target=lambda: out.append(net(x)))
        th.start()
        th.join()
    finally:
        hooks.remove()
    assert not log and torch.equal(out[0], expected)


def test_a_post_returning_a_tensor_replaces_the_output():
    net, x = _Net(), torch.randn(3, 4)

    def post(m: nn.Module, args: Any, kwargs: Any, out: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(out)
    hooks = ModuleHooks([net.a], lambda *a: None, post)
    try:
        got = net(x)
    finally:
        hooks.remove()
    assert torch.equal(got, net.b(torch.zeros(3, 4)))


class _PropertyForward(nn.Module):
    """A module whose class makes ``forward`` a property: an instance cannot shadow it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    @property
    def forward(self) -> Any:  # type: ignore[override]
        return lambda x: self.fc(x) * 3


def test_a_forward_an_instance_cannot_shadow_gets_hooks_instead():
    torch.manual_seed(4)
    net = nn.Sequential(_PropertyForward(), nn.Linear(4, 2))
    x = torch.randn(3, 4)
    expected = net(x)
    t = tl.trace(net, x)
    assert {c.key for c in t.module_calls} == {"0:1", "0.fc:1", "1:1"}
    assert torch.equal(t["0"].out, net[0].fc(x) * 3) and torch.equal(t["1"].out, expected)
    assert not net[0]._forward_hooks and not net[0]._forward_pre_hooks
    assert all("forward" not in vars(m) for m in net.modules())
