"""Recurrence: which ops are passes of one layer (the paper's three rules)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lens as tl
from lens.capture.records import ParamRef, Ref
from lens.tracing import loops
from lens.tracing.argkeys import _Keys, _norm
from lens.tracing.loops import find_layers
from tests.helpers import build
from tests.models import ZooCase, cases, get


def _multi(tr: tl.Trace) -> dict[str, int]:
    return {layer.label: len(layer.passes) for layer in tr.layers if len(layer.passes) > 1}


# --------------------------------------------------------------------------- seeds
@pytest.mark.parametrize("name", ["recurrent_demo", "simple_recurrent"])
def test_seed_recurrent_model_has_one_layer_per_loop_body_op(name: str) -> None:
    model, args, _ = build(get(name))
    n = model.n_loops
    tr = tl.trace(model, *args)
    body = ["linear_1_1", "add_1_2", "mul_1_3"]
    expected = ["input_1"] + [f"{b}:{k}" for k in range(1, n + 1) for b in body] + ["output_1"]
    assert tr.labels == expected
    assert tr.is_recurrent and tr.max_passes == n
    assert _multi(tr) == dict.fromkeys(body, n)
    # Pass k of the linear layer is the k-th call of fc, and holds what a hand-run loop
    # computes at iteration k.
    x = args[0]
    with torch.no_grad():
        for k in range(1, n + 1):
            lin = model.fc(x)
            op = tr[f"linear_1_1:{k}"]
            assert op == tr[f"fc:{k}"] and op.module_call == f"fc:{k}"
            assert op.pass_num == k and op.num_passes == n
            assert torch.equal(op.out, lin)
            assert torch.equal(tr[f"add_1_2:{k}"].out, lin + 1)
            x = (lin + 1) * 2
            assert torch.equal(tr[f"mul_1_3:{k}"].out, x)
    assert [op.label for op in tr["fc"]] == [f"linear_1_1:{k}" for k in range(1, n + 1)]
    assert tr["linear_1_1"].num_passes == n


def test_simple_recurrent_second_pass_follows_the_first() -> None:
    model, args, _ = build(get("simple_recurrent"))
    tr = tl.trace(model, *args)
    second = tr["linear_1_1:2"]
    assert second.parents == [tr["mul_1_3:1"]]
    with torch.no_grad():
        assert torch.equal(second.out, model.fc((model.fc(args[0]) + 1) * 2))


def test_detect_loops_false_keeps_only_shared_parameter_passes() -> None:
    model, args, _ = build(get("recurrent_demo"))
    tr = tl.trace(model, *args, detect_loops=False)
    assert _multi(tr) == {"linear_1_1": model.n_loops}
    assert sum(op.type == "add" for op in tr.ops) == model.n_loops
    assert all(op.num_passes == 1 for op in tr.ops if op.type in ("add", "mul"))


# --------------------------------------------------------------------------- transformers
def test_distinct_transformer_blocks_are_never_merged() -> None:
    model, args, _ = build(get("tiny_transformer_2block"))
    tr = tl.trace(model, *args)
    assert _multi(tr) == {} and not tr.is_recurrent
    adds = [op for op in tr.ops if op.type == "add" and op.module in ("blocks.0", "blocks.1")]
    assert len(adds) == 2 * len(model.blocks)  # the residual adds stay separate layers
    assert len({op.layer_label for op in adds}) == len(adds)


def test_shared_block_gives_every_block_op_one_pass_per_application() -> None:
    model, args, _ = build(get("albert_shared"))
    n = model.n_repeats
    tr = tl.trace(model, *args)
    inside = [op for op in tr.ops if op.module_addresses[:1] == ("block",)]
    outside = [op for op in tr.ops if op.module_addresses[:1] != ("block",)]
    per_call = len(inside) // n
    assert per_call * n == len(inside) and per_call > 10
    for op in inside:
        assert op.num_passes == n, op.label
        assert op.pass_num == op.module_ctx[0].call_num  # pass k runs in block:k
    # Pass k of each layer is the op at the same offset inside the k-th block call.
    for k in range(n):
        chunk = inside[k * per_call:(k + 1) * per_call]
        assert [op.layer_label for op in chunk] == [op.layer_label for op in inside[:per_call]]
    assert all(op.num_passes == 1 for op in outside)


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.fc(x)) * 0.5


class _Stack(nn.Module):
    def __init__(self, n: int, shared: bool) -> None:
        super().__init__()
        one = _Block()
        self.blocks = nn.ModuleList([one if shared else _Block() for _ in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return x


@pytest.mark.parametrize("n", [2, 3, 5])
def test_residual_stack_groups_only_when_weights_are_shared(n: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 6)
    distinct = tl.trace(_Stack(n, shared=False), x)
    assert _multi(distinct) == {}
    shared = tl.trace(_Stack(n, shared=True), x)
    assert _multi(shared) == {"linear_1_1": n, "relu_1_2": n, "mul_1_3": n, "add_1_4": n}


# --------------------------------------------------------------------------- rnn / repeats
def test_rnn_cell_loop_groups_the_cell_but_not_the_per_step_slices() -> None:
    model, args, _ = build(get("rnn_cell_loop"))
    x = args[0]
    steps = x.shape[1]
    tr = tl.trace(model, *args)
    cells = [layer for layer in tr.layers if layer.type == "lstmcell"]
    assert len(cells) == 2 and all(len(c.passes) == steps for c in cells)  # h and c
    slices = [op for op in tr.ops if op.type == "getitem"]
    assert len(slices) == steps and all(op.num_passes == 1 for op in slices)
    assert _multi(tr) == {c.label: steps for c in cells}
    h_layer = cells[0]
    with torch.no_grad():
        h = torch.zeros(x.shape[0], model.hidden_size)
        c = torch.zeros_like(h)
        for t in range(steps):
            h, c = model.cell(x[:, t], (h, c))
            op = h_layer.passes[t]
            assert op.module_call == f"cell:{t + 1}" and torch.equal(op.out, h)


def test_separated_repeats_are_not_grouped() -> None:
    model, args, _ = build(get("xyz_a_xyz"))
    tr = tl.trace(model, *args)
    assert _multi(tr) == {} and not tr.is_recurrent


def test_back_to_back_repeats_are_grouped() -> None:
    model, args, _ = build(get("xyz_xyz_xyz"))
    tr = tl.trace(model, *args)
    assert _multi(tr) == {"mul_1_1": 3, "add_1_2": 3, "relu_1_3": 3}
    x = args[0]
    for k in range(1, 4):
        x = F.relu(x * 3 + 1)
        assert torch.equal(tr[f"relu_1_3:{k}"].out, x)


_BODIES = {
    "sin_cos": lambda x: torch.cos(torch.sin(x)),
    "affine_tanh": lambda x: torch.tanh(x * 0.5 - 1),
    "exp_neg_sum": lambda x: torch.exp(-x) + x,
}


class _Repeat(nn.Module):
    def __init__(self, body: str, n: int) -> None:
        super().__init__()
        self.body, self.n = _BODIES[body], n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.n):
            x = self.body(x)
        return x


@pytest.mark.parametrize("body", sorted(_BODIES))
@pytest.mark.parametrize("n", [2, 3, 6])
def test_param_free_loops_give_one_pass_per_iteration(body: str, n: int) -> None:
    x = torch.randn(3, 4)
    once = tl.trace(_Repeat(body, 1), x)
    per_iter = len(once) - 2  # minus input and output
    tr = tl.trace(_Repeat(body, n), x)
    assert len(tr.layers) == per_iter + 2
    assert all(op.num_passes == n for op in tr.ops if op.kind == "op")
    ops = [op for op in tr.ops if op.kind == "op"]
    for k in range(n):
        assert [op.pass_num for op in ops[k * per_iter:(k + 1) * per_iter]] == [k + 1] * per_iter


class _ReluFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(3):
            x = self.fc(torch.relu(x))
        return x


class _DoubleRelu(_ReluFirst):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(3):
            x = torch.relu(torch.relu(self.fc(x)))
        return x


class _Noise(_ReluFirst):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(3):
            x = self.fc(x) + torch.randn(4, 4)
        return x


def test_ops_before_the_shared_layer_join_its_loop() -> None:
    tr = tl.trace(_ReluFirst(), torch.randn(2, 4))
    assert _multi(tr) == {"relu_1_1": 3, "linear_1_2": 3}
    for k in (2, 3):
        assert tr[f"relu_1_1:{k}"].parents == [tr[f"linear_1_2:{k - 1}"]]


def test_two_like_ops_of_one_iteration_stay_two_layers() -> None:
    tr = tl.trace(_DoubleRelu(), torch.randn(2, 4))
    assert _multi(tr) == {"linear_1_1": 3, "relu_1_2": 3, "relu_2_3": 3}
    for k in (1, 2, 3):
        inner, outer = tr[f"relu_1_2:{k}"], tr[f"relu_2_3:{k}"]
        assert inner.parents == [tr[f"linear_1_1:{k}"]] and outer.parents == [inner]


def test_generated_tensors_inside_the_loop_join_it() -> None:
    torch.manual_seed(0)
    tr = tl.trace(_Noise(), torch.randn(4, 4))
    assert _multi(tr) == {"linear_1_1": 3, "randn_1_2": 3, "add_1_3": 3}


# --------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("case", cases(exclude=("bench", "hf")), ids=lambda c: c.name)
def test_layer_invariants_across_the_zoo(case: ZooCase) -> None:
    model, args, kwargs = build(case)
    tr = tl.trace(model, *args, input_kwargs=kwargs)
    assert len(set(tr.labels)) == len(tr.labels)
    assert sum(len(layer.passes) for layer in tr.layers) == len(tr)
    for layer in tr.layers:
        idx = [op.index for op in layer.passes]
        assert idx == sorted(idx)
        assert [op.pass_num for op in layer.passes] == list(range(1, len(idx) + 1))
        assert len({(op.kind, op.func_name, op.params, op.module_addresses)
                    for op in layer.passes}) == 1 or layer.passes[0].params
    if "recurrent" not in case.tags and "loop" not in case.tags:
        assert not any(op.params and op.num_passes > 1 for op in tr.ops)


def test_find_layers_is_idempotent_on_one_trace() -> None:
    model, args, _ = build(get("albert_shared"))
    tr = tl.trace(model, *args)
    groups = find_layers(tr.ops)
    assert groups == [op.layer.passes[0].index for op in tr.ops]


class _PrefixThenRepeat(nn.Module):
    """Unrelated parameter-free ops, then a back-to-back repeat, then a parameter op."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.exp(torch.cos(torch.sin(x)))
        for _ in range(2):
            x = torch.tanh(x - 1)
        return self.fc(x)


def test_repeat_after_unrelated_param_free_ops_is_found() -> None:
    tr = tl.trace(_PrefixThenRepeat(), torch.randn(2, 4))
    assert _multi(tr) == {"sub_1_4": 2, "tanh_1_5": 2}


class _ChunkLoop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(3):
            a, b = self.fc(x).chunk(2, dim=-1)
            x = torch.cat([b, a], dim=-1)
        return x


def test_each_output_of_a_multi_output_op_is_its_own_looped_layer() -> None:
    tr = tl.trace(_ChunkLoop(), torch.randn(2, 4))
    chunks = [layer for layer in tr.layers if layer.type == "chunk"]
    assert len(chunks) == 2 and all(len(c.passes) == 3 for c in chunks)
    for k in range(3):
        a, b = chunks[0].passes[k], chunks[1].passes[k]
        assert a.call_id == b.call_id and a.out_index != b.out_index
    assert _multi(tr) == {"linear_1_1": 3, chunks[0].label: 3, chunks[1].label: 3,
                          "cat_1_4": 3}


# --------------------------------------------------------------------------- signature keys
def test_argument_keys_tell_templates_apart_exactly_as_norm() -> None:
    """The keys signatures use (plans per tuple of item types, C-level where flat) equal
    each other exactly when ``_norm``'s do: on ints/floats/bools of equal value, -0.0,
    NaNs, Refs to different ops, ParamRefs, nested sequences, sizes, slices, dtypes,
    keyword arguments in either order and non-string keys."""
    nan = float("nan")
    args: list[Any] = [
        (), (Ref(1),), (Ref(2),), (Ref(1), Ref(2)), (Ref(1), 2), (Ref(5), 2), (Ref(1), 2.0),
        (Ref(1), True), (Ref(1), 1), (Ref(1), -0.0), (Ref(1), 0.0), (Ref(1), nan),
        (Ref(2), nan), (Ref(1), float("nan")), (Ref(1), None), (Ref(1), "2"),
        (ParamRef("w"), Ref(1)), (ParamRef("v"), Ref(1)), (2, Ref(1)), (Ref(1), 2, 3),
        (Ref(1), torch.Size([2, 3])), (Ref(1), torch.Size([2, 4])), (Ref(1), (2, 3)),
        (Ref(1), [2, 3]), (Ref(1), (2.0, 3)), ([Ref(1), Ref(2)],), ([Ref(3), Ref(4)],),
        ([Ref(3)],), ((Ref(1), 0),), ((Ref(2), 0),), (Ref(1), slice(0, 2)),
        (Ref(1), slice(0, 2.0)), (Ref(1), torch.float32), (Ref(1), torch.float16),
        (Ref(1), {"a": 1}), (Ref(1), ((1, 2), 3)), (Ref(1), ((1.0, 2), 3)), [Ref(1), 2],
    ]
    kwargs: list[Any] = [
        {"dim": 1}, {"dim": 1.0}, {"dim": True}, {"a": 1, "b": 2}, {"b": 2, "a": 1},
        {"a": 1, "b": 2.0}, {"weight": ParamRef("w")}, {"x": Ref(1)}, {"x": Ref(2)},
        {"s": (1, 2)}, {"s": (1.0, 2)}, {"s": [Ref(1)]}, {1: 2}, {"1": 2}, {"p": nan},
        {"p": float("nan")}, {"m": None, "n": "x"},
    ]
    keys = _Keys()
    for make, pool in ((keys.args, args), (keys.kwargs, kwargs)):
        made = [make(v) for v in pool]
        for (a, ka), (b, kb) in itertools.product(zip(pool, made, strict=True), repeat=2):
            hash(ka)
            assert (ka == kb) == (_norm(a) == _norm(b)), (a, b)


@pytest.mark.parametrize("case", cases(), ids=lambda c: c.name)
def test_signatures_completed_only_where_compared_give_the_same_layers(
        case: ZooCase, monkeypatch: pytest.MonkeyPatch) -> None:
    """Argument templates are keyed only for ops a rule compares (rule 3: ops of one run
    sharing a head); completing every signature up front must give the same layers."""
    model, args, kwargs = build(case)
    kept = list(tl.trace(model, *args, input_kwargs=kwargs).kept)
    lazy = find_layers(kept)
    complete = loops._Graph.compute_signatures

    def compute_all(g: loops._Graph) -> None:
        complete(g)
        g.refine(range(len(g.ops)))  # every growable op, shared head or not

    monkeypatch.setattr(loops._Graph, "compute_signatures", compute_all)
    assert find_layers(kept) == lazy
