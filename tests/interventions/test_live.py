"""Live edits (tl.when in tl.trace / tl.run) equal the same edit made by hand: in an edited
copy of the model's forward, or with register_forward_hook for module outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lens as tl
import lens.interventions as li
from lens.errors import InterventionError
from tests.interventions._truth import run_with_hook
from tests.models import get
from tests.models.misc import InplaceOps, MultiOutput, SmallMLP
from tests.models.seeds import DemoNetwork, NetworkOrganizationDemo, RecurrentDemo


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return SmallMLP().eval(), torch.randn(5, 4)


def test_readme_zero_ablation_edits_the_op_and_everything_after() -> None:
    model, x = _mlp()
    tr = tl.trace(model, x, save=tl.func("relu"),
                  intervene=li.when(tl.func("relu"), li.zero_ablate()))
    relu = tr["relu_1_2"]
    assert relu.out.abs().max() == 0
    assert relu.intervention_names == ["tl.when(tl.func('relu'), tl.zero_ablate())"]
    assert [op.label for op in tr.ops if op.fired] == ["relu_1_2"]
    expected = model.fc2(torch.zeros(5, 8))  # the forward, edited by hand
    assert torch.equal(tr.output, expected)


# ------------------------------------------------------------ edited copies of forward
class _DemoScaledRelu(DemoNetwork):
    def forward(self, x):  # DemoNetwork.forward with the functional relu scaled
        x = x + 1
        x = self.relu_module(x)
        x = self.fc(x)
        x = nn.functional.relu(x)
        x = x * 0.5  # <- the edit
        x = x + torch.randn(x.shape)
        y = x**2
        x = x / y
        x = x * self.example_buffer
        return x


class _RecurrentSecondAddZeroed(RecurrentDemo):
    def forward(self, x):
        for i in range(self.n_loops):
            x = self.fc(x)
            x = x + 1
            if i == 1:
                x = x.clone()
                x[:, 2] = 0  # <- the edit: second pass of the add, position 2
            x = x * 2
        return x


class _InplaceEdited(InplaceOps):
    def forward(self, x):
        h = self.fc(x)
        h.add_(1)
        h.copy_(h.clamp(max=0.7))  # <- the edit, on the in-place op's tensor
        h.relu_()
        h[:, 0] = 0
        h.masked_fill_(h > 1.5, 1.5)
        z = torch.zeros(x.shape[0], 6)
        z[:, 1:4] = h[:, 1:4]
        z.mul_(2)
        z += h
        return self.act(z - 1.0)


class _NestedSinSteered(NetworkOrganizationDemo):
    def forward(self, x):
        x = x * 2 if torch.sum(x) > 0 else x + 1
        w = 1 / x
        y = torch.log(x)
        z = x**2
        x = w + y + z
        x = x + 1  # Submodule1
        x = x + 2  # Submodule2, with its sin steered
        x = torch.cos(x) + (torch.sin(x) + torch.arange(5.0)) + torch.tan(x)
        x = x * 4
        x = x + 1
        x = x * 2
        return x


class _ChunkEdited(MultiOutput):
    def forward(self, x):
        a, b = torch.split(x, 4, dim=1)
        c1, c2 = torch.chunk(self.fc(x), 2, dim=1)
        c2 = c2 * -3  # <- the edit: second output of chunk
        vals, idx = x.max(dim=1)
        rows = torch.unbind(a, dim=0)
        out = a * c1 + b * c2
        out = out + vals.unsqueeze(1) + idx.unsqueeze(1).float()
        out = out + torch.stack(rows[::-1], dim=0)
        return out


EDITED_FORWARDS = [
    ("demo_network", _DemoScaledRelu, "relu_2_4", li.scale(0.5)),
    ("recurrent_demo", _RecurrentSecondAddZeroed, "add_1_2:2", li.zero_ablate().at[:, 2]),
    ("inplace_ops", _InplaceEdited, "add_1_2", li.clamp(max=0.7)),
    ("nested_demo", _NestedSinSteered, tl.func("sin"), li.steer(torch.arange(5.0))),
    ("multi_output", _ChunkEdited, "chunk_2_5", li.scale(-3.0)),
]


@pytest.mark.parametrize("name, edited_cls, site, action", EDITED_FORWARDS,
                         ids=[e[0] for e in EDITED_FORWARDS])
def test_live_edit_equals_an_edited_forward(name, edited_cls, site, action) -> None:
    model, args, kwargs = get(name).build()
    edited = edited_cls().eval()
    edited.load_state_dict(model.state_dict())
    torch.manual_seed(0)
    expected = edited(*args)
    reference = tl.trace(model, *args)
    labels = reference.find_sites(site)
    assert len(labels) == 1
    torch.manual_seed(0)
    tr = tl.trace(model, *args, intervene=li.when(site, action))
    assert torch.equal(tr.output, expected)
    assert [op.label for op in tr.ops if op.fired] == labels
    torch.manual_seed(0)
    assert torch.equal(li.run(model, *args, intervene=li.when(site, action)), expected)


# ------------------------------------------------------------ module outputs
class _Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = self.fc(x)
        return h, h.relu() * 2  # h is also consumed inside the module


class _Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = _Inner()
        self.seq = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        a, b = self.inner(x)
        return self.out(self.seq(torch.relu(a) + b))


def _outer() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return _Outer().eval(), torch.randn(5, 4)


@pytest.mark.parametrize("address", ["inner", "seq", "seq.1", "inner.fc"])
def test_module_sites_edit_like_a_forward_hook(address: str) -> None:
    model, x = _outer()
    act = li.scale(-1.5)
    expected = run_with_hook(model, (x,), {}, address, lambda v: v * -1.5)
    tr = tl.trace(model, x, intervene=li.when(address, act))
    assert torch.equal(tr.output, expected)
    fired = [op for op in tr.ops if op.fired]
    assert fired and all(len(op.fired) == 1 for op in fired)  # once, also when nested


def test_module_site_with_call_number_and_restriction() -> None:
    model, args, _ = get("recurrent_demo").build()
    act = li.zero_ablate().at[:, 1]

    def edit(v: torch.Tensor) -> torch.Tensor:
        v = v.clone()
        v[:, 1] = 0
        return v

    expected = run_with_hook(model, args, {}, "fc", edit, call=2)
    assert torch.equal(li.run(model, *args, intervene=li.when("fc:2", act)), expected)
    by_label = li.run(model, *args, intervene=li.when(tl.label("linear_1_1:2"), act))
    assert torch.equal(by_label, expected)


def test_splice_module_runs_the_replacement_on_the_inputs() -> None:
    model, x = _outer()
    torch.manual_seed(1)
    other = nn.Linear(4, 4)
    expected = run_with_hook(model, (x,), {}, "seq.0", lambda v: other(torch.relu(
        model.inner.fc(x)) + model.inner.fc(x).relu() * 2))
    replace = li.when("seq.0", li.splice_module(other, on="inputs"))
    assert torch.equal(li.run(model, x, intervene=replace), expected)
    # at a function site: the op's activation inputs (the linear's x, not its weights)
    tr = tl.trace(model, x, intervene=li.when(tl.func("tanh"),
                                              li.splice_module(torch.sigmoid, on="inputs")))
    h = model.seq[0](torch.relu(model.inner.fc(x)) + model.inner.fc(x).relu() * 2)
    assert torch.equal(tr.output, model.out(torch.sigmoid(h)))


def test_selectors_mixing_module_exits_with_other_ops_are_refused() -> None:
    model, x = _outer()
    with pytest.raises(InterventionError, match="which no module returns"):
        tl.trace(model, x, intervene=li.when(tl.module("seq") | tl.func("relu"),
                                             li.scale(2.0)))


# ------------------------------------------------------------ final labels
def test_labels_resolve_through_a_reference_without_shifting_the_rng() -> None:
    model, args, _ = get("demo_network").build()  # draws torch.randn inside forward
    torch.manual_seed(5)
    expected = run_with_hook(model, args, {}, "fc", lambda v: v * 0.0, seed=5)
    torch.manual_seed(5)
    auto = li.run(model, *args, intervene=li.when("linear_1_3", li.zero_ablate()))
    assert torch.equal(auto, expected)  # the pre-pass restored the RNG state
    ref = tl.trace(model, *args, save=False)
    torch.manual_seed(5)
    given = li.run(model, *args, intervene=li.when("linear_1_3", li.zero_ablate(),
                                                   reference=ref))
    assert torch.equal(given, expected)


def test_a_changed_graph_is_reported_at_the_first_differing_op() -> None:
    model, (x,), _ = get("nested_demo").build()
    ref = tl.trace(model, x, save=False)  # takes the if-branch (sum > 0)
    site = ref.find_sites(tl.func("sin"))[0]
    with pytest.raises(InterventionError, match=r"differs from the reference trace at op #\d+"):
        li.run(model, -x, intervene=li.when(site, li.zero_ablate(), reference=ref))


# ------------------------------------------------------------ errors
def test_a_rule_matching_nothing_raises_or_warns() -> None:
    model, x = _mlp()
    with pytest.raises(InterventionError, match="matched no op.*Op types in this run"):
        tl.trace(model, x, intervene=li.when(tl.func("conv2d"), li.zero_ablate()))
    with pytest.warns(li.InterventionWarning, match="matched no op"):
        out = li.run(model, x, intervene=li.when(tl.func("conv2d"), li.zero_ablate(),
                                                 strict=False))
    assert torch.equal(out, model(x))


def test_a_wrong_shape_names_the_site_expected_and_got() -> None:
    model, x = _mlp()
    with pytest.raises(InterventionError,
                       match=r"op #\d+ \(relu\).*shape \(5,\) instead of \(5, 8\)"):
        tl.trace(model, x, intervene=li.when(tl.func("relu"), lambda v, op: v.sum(-1)))


def test_graph_sources_cannot_be_edited_live() -> None:
    model, x = _mlp()
    with pytest.raises(InterventionError, match="graph input op"):
        li.run(model, x, intervene=li.when("input_1", li.zero_ablate()))


def test_run_returns_only_the_output() -> None:
    model, x = _mlp()
    assert torch.equal(li.run(model, x), model(x))
    rule = li.when(tl.in_module("fc2"), li.scale(3.0))
    assert torch.equal(li.run(model, x, intervene=[rule]), model(x) * 3.0)
