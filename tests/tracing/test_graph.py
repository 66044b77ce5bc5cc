"""Graph facts: distances, ancestry, conditional branches, generated tensors, orphans."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

import lens as tl
from tests.helpers import build
from tests.models import ZooCase, cases, get
from tests.models.attention import Mixer


def _all_path_lengths(tr: tl.Trace, sources: list[tl.Op], forward: bool) -> dict[int, list[int]]:
    """Every path length from the sources to each op, by exhaustive enumeration."""
    found: dict[int, list[int]] = {}

    def walk(op: tl.Op, depth: int) -> None:
        found.setdefault(op.index, []).append(depth)
        for nxt in (op.children if forward else op.parents):
            walk(nxt, depth + 1)

    for s in sources:
        walk(s, 0)
    return found


@pytest.mark.parametrize("name", ["demo_network", "nested_demo", "resnet_block",
                                  "tiny_transformer_2block", "rnn_cell_loop"])
def test_distances_match_exhaustive_path_enumeration(name: str) -> None:
    model, args, kwargs = build(get(name))
    tr = tl.trace(model, *args, input_kwargs=kwargs)
    from_in = _all_path_lengths(tr, [op for op in tr.ops if op.is_input], forward=True)
    to_out = _all_path_lengths(tr, [op for op in tr.ops if op.is_output], forward=False)
    for op in tr.ops:
        d_in, d_out = from_in.get(op.index), to_out.get(op.index)
        assert op.min_distance_from_input == (min(d_in) if d_in else None), op.label
        assert op.max_distance_from_input == (max(d_in) if d_in else None), op.label
        assert op.min_distance_to_output == (min(d_out) if d_out else None), op.label
        assert op.max_distance_to_output == (max(d_out) if d_out else None), op.label
        assert op.has_input_ancestor == (d_in is not None)
        assert op.is_output_ancestor == (d_out is not None)


def test_branching_counts_consumers() -> None:
    model, args, _ = build(get("nested_demo"))
    tr = tl.trace(model, *args)
    consumers = Counter(p.index for op in tr.ops for p in set(op.parents))
    for op in tr.ops:
        assert op.is_branching == (consumers[op.index] > 1), op.label
    assert tr["submodule1.submodule2"].parents[0].type == "add"  # sanity: graph is nested


# --------------------------------------------------------------------------- conditionals
@pytest.mark.parametrize("case", cases(exclude=("bench", "hf")), ids=lambda c: c.name)
def test_zoo_conditionals_are_found_where_the_code_has_an_if(case: ZooCase) -> None:
    model, args, kwargs = build(case)
    tr = tl.trace(model, *args, input_kwargs=kwargs)
    assert tr.has_conditional_branching == ("conditional" in case.tags)


@pytest.mark.parametrize("name", ["nested_demo", "conditional_else"])
def test_seed_if_marks_the_test_and_what_computed_it(name: str) -> None:
    model, args, _ = build(get(name))
    tr = tl.trace(model, *args)
    # ``if torch.sum(x) > 0``: the sum and the comparison, not the input they start from.
    assert [op.type for op in tr.ops if op.in_cond_branch] == ["sum", "gt"]
    gt = next(op for op in tr.ops if op.type == "gt")
    assert gt.is_terminal_bool and gt.bool_used and not gt.children
    assert tr.terminal_bool_layers == [gt.label]
    assert gt.parents[0].parents[0].is_input and not gt.parents[0].parents[0].in_cond_branch


class _PaperIf(nn.Module):
    """The paper's example: ``if torch.mean(x - 5) > 3``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if torch.mean(h - 5) > 3:
            return h * 2
        return torch.relu(h)


def test_branch_starts_where_it_leaves_the_main_computation() -> None:
    tr = tl.trace(_PaperIf(), torch.randn(3, 4))
    branch = [op for op in tr.ops if op.in_cond_branch]
    assert [op.type for op in branch] == ["sub", "mean", "gt"]
    start = branch[0]
    assert start.parents[0].type == "linear" and start.parents[0].is_output_ancestor
    assert not start.parents[0].in_cond_branch
    assert not any(op.in_cond_branch for op in tr.ops if op.is_output_ancestor)


class _WhileNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        while x.norm() > 1:
            x = x / 2
        return x


def test_each_while_test_is_a_terminal_bool() -> None:
    x = torch.full((4,), 3.0)
    tr = tl.trace(_WhileNorm(), x)
    halvings = 0
    y = x.clone()
    while y.norm() > 1:
        y, halvings = y / 2, halvings + 1
    assert len(tr.terminal_bool_layers) == halvings + 1  # the last test ends the loop
    assert sum(op.type == "norm" and op.in_cond_branch for op in tr.ops) == halvings + 1
    assert not any(op.in_cond_branch for op in tr.ops if op.type == "truediv")


class _IfOnFloat(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum():  # bool() of a float tensor: not a bool dtype, still an if
            return x * 2
        return x


def test_python_bool_of_any_tensor_marks_a_branch() -> None:
    tr = tl.trace(_IfOnFloat(), torch.ones(3))
    assert tr.has_conditional_branching and tr.terminal_bool_layers == []
    (s,) = [op for op in tr.ops if op.type == "sum"]
    assert s.in_cond_branch and not s.is_terminal_bool and s.bool_used


# --------------------------------------------------------------------------- generated tensors
def test_generated_tensors_are_found_and_have_no_input_ancestor() -> None:
    model, args, _ = build(get("tiny_transformer_2block"))
    tr = tl.trace(model, *args)
    gen = [op for op in tr.ops if op.is_internally_generated]
    assert [op.type for op in gen] == ["ones"] * len(model.blocks)
    assert tr.internally_generated_layers == [op.label for op in gen]
    mixers = [name for name, m in model.named_modules() if isinstance(m, Mixer)]
    assert [op.module for op in gen] == mixers  # where the code made them
    for op in gen:
        assert not op.has_input_ancestor and op.min_distance_from_input is None
        assert op.is_output_ancestor


def test_generated_state_keeps_the_module_it_was_made_in() -> None:
    # CellLoop makes h0/c0 with torch.zeros at the top level of forward; the first op
    # computed from the input that uses them runs inside ``cell``. Containment comes
    # from the live module stack, so the zeros stay at top level.
    model, args, _ = build(get("rnn_cell_loop"))
    tr = tl.trace(model, *args)
    zeros = [op for op in tr.ops if op.is_internally_generated]
    assert [op.type for op in zeros] == ["zeros", "zeros"]
    for op in zeros:
        assert op.module is None and op.module_addresses == ()
        assert op.children[0].module == "cell" and op.children[0].has_input_ancestor


class _Noisy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn(x.shape)


class _WithNoisy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.noise = _Noisy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.noise(x) * 2


def test_generated_tensor_inside_a_submodule_reports_that_module() -> None:
    tr = tl.trace(_WithNoisy(), torch.zeros(2, 3))
    (gen,) = [op for op in tr.ops if op.is_internally_generated]
    assert gen.type == "randn" and gen.module == "noise" and gen.module_call == "noise:1"


# --------------------------------------------------------------------------- orphans
class _Junk(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        junk = torch.arange(5.0).cos() * 2  # neither from the input nor to the output
        side = x.sin()  # from the input, unused: kept (not an orphan)
        del junk, side
        return self.fc(x)


def test_orphans_are_trimmed_unless_kept() -> None:
    x = torch.randn(3, 5)
    tr = tl.trace(_Junk(), x)
    assert [op.type for op in tr.ops] == ["input", "sin", "linear", "output"]
    assert tr.orphans_trimmed == 3
    assert torch.equal(tr["sin_1_1"].out, x.sin())
    kept = tl.trace(_Junk(), x, keep_orphans=True)
    assert [op.type for op in kept.ops] == ["input", "arange", "cos", "mul", "sin", "linear",
                                            "output"]
    assert kept.orphans_trimmed == 0
    for op in kept.ops[1:4]:
        assert not op.has_input_ancestor and not op.is_output_ancestor
        assert op.min_distance_to_output is None
    assert kept["arange_1_1"].is_internally_generated


def test_generated_parents_of_kept_ops_are_kept() -> None:
    model, args, _ = build(get("demo_network"))
    torch.manual_seed(0)
    tr = tl.trace(model, *args)
    (gen,) = [op for op in tr.ops if op.is_internally_generated]
    assert gen.type == "randn" and tr.orphans_trimmed == 0
    assert gen.children[0].has_input_ancestor and gen.is_output_ancestor
