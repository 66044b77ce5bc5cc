"""A hand-built op graph for selector tests: small records satisfying ``OpLike``."""

from __future__ import annotations

from dataclasses import dataclass, field

from lens.selectors import OpLike


@dataclass(eq=False)
class FakeOp:
    """The attributes selectors read, and nothing else."""

    type: str
    func_name: str = ""
    index: int = 0
    module_addresses: tuple[str, ...] = ()
    module_outputs: tuple[str, ...] = ()
    parents: list[FakeOp] = field(default_factory=list)
    children: list[FakeOp] = field(default_factory=list)
    labels: frozenset[str] = frozenset()
    pass_num: int = 1
    step: int = 0

    def __repr__(self) -> str:
        return f"FakeOp({self.type!r}, index={self.index})"


def link(parent: FakeOp, child: FakeOp) -> None:
    parent.children.append(child)
    child.parents.append(parent)


def _labels(label: str, *modules: str) -> frozenset[str]:
    short = label.rsplit("_", 1)[0] if label.count("_") == 2 else label
    keys = {label, short, f"{label}:1", *modules}
    keys |= {f"{m}:1" for m in modules if ":" not in m}
    return frozenset(keys)


def small_cnn() -> dict[str, FakeOp]:
    """input -> conv2d -> relu -> max_pool2d -> flatten -> linear -> __add__ -> output,
    with a residual edge from flatten to __add__. Modules: features(.0 conv, .1 relu,
    .2 pool), classifier(.0 linear)."""
    ops = {
        "input": FakeOp("input", "input", 0, labels=_labels("input_1_0")),
        "conv": FakeOp(
            "conv2d",
            "conv2d",
            1,
            ("features", "features.0"),
            ("features.0", "features.0:1"),
            labels=_labels("conv2d_1_1", "features.0"),
        ),
        "relu": FakeOp(
            "relu",
            "relu",
            2,
            ("features", "features.1"),
            ("features.1", "features.1:1"),
            labels=_labels("relu_1_2", "features.1"),
        ),
        "pool": FakeOp(
            "maxpool2d",
            "max_pool2d",
            3,
            ("features", "features.2"),
            ("features.2", "features.2:1", "features", "features:1"),
            labels=_labels("maxpool2d_1_3", "features.2", "features"),
        ),
        "flat": FakeOp("flatten", "flatten", 4, labels=_labels("flatten_1_4")),
        "fc": FakeOp(
            "linear",
            "linear",
            5,
            ("classifier", "classifier.0"),
            ("classifier.0", "classifier.0:1", "classifier", "classifier:1"),
            labels=_labels("linear_1_5", "classifier.0", "classifier"),
        ),
        "add": FakeOp("add", "__add__", 6, labels=_labels("add_1_6")),
        "output": FakeOp("output", "output", 7, labels=_labels("output_1_7")),
    }
    chain = ["input", "conv", "relu", "pool", "flat", "fc", "add", "output"]
    for a, b in zip(chain, chain[1:], strict=False):
        link(ops[a], ops[b])
    link(ops["flat"], ops["add"])
    return ops


MODULE_ADDRESSES = (
    "features",
    "features.0",
    "features.1",
    "features.2",
    "classifier",
    "classifier.0",
)


def all_labels(ops: dict[str, FakeOp]) -> frozenset[str]:
    return frozenset().union(*(op.labels for op in ops.values()))


def _conforms(op: FakeOp) -> OpLike:  # mypy checks that FakeOp satisfies the protocol
    return op
