"""The boolean-algebra laws, checked pointwise over generated ops and selector trees."""

from __future__ import annotations

import pickle

from hypothesis import assume, given
from hypothesis import strategies as st

import lens.selectors as tl
from tests.selectors._fakes import FakeOp

TYPES = ["conv2d", "relu", "add", "linear", "maxpool2d"]
NAMES = ["conv2d", "relu", "__add__", "linear", "max_pool2d", "Linear", "sigmoid"]
CHAINS = [("a", "a.b", "a.b.c"), ("x", "x.y")]
ADDRESSES = [address for chain in CHAINS for address in chain]
LABELS = ["conv2d_1_1", "relu_1_2", "relu_1_2:2", "a.b", "x"]


@st.composite
def plain_ops(draw: st.DrawFn) -> FakeOp:
    chain = draw(st.sampled_from(CHAINS))
    depth = draw(st.integers(0, len(chain)))
    return FakeOp(
        type=draw(st.sampled_from(TYPES)),
        index=draw(st.integers(0, 5)),
        module_addresses=chain[:depth],
        module_outputs=tuple(
            draw(st.lists(st.sampled_from(ADDRESSES + ["a.b:1", "x:2"]), max_size=2))
        ),
        labels=frozenset(draw(st.lists(st.sampled_from(LABELS), max_size=3))),
        step=draw(st.integers(0, 4)),
    )


@st.composite
def ops(draw: st.DrawFn) -> FakeOp:
    op = draw(plain_ops())
    op.parents = draw(st.lists(plain_ops(), max_size=2))
    op.children = draw(st.lists(plain_ops(), max_size=2))
    return op


simple_leaves: st.SearchStrategy[tl.Selector] = st.one_of(
    st.lists(st.sampled_from(NAMES), min_size=1, max_size=2).map(lambda n: tl.func(*n)),
    st.sampled_from(ADDRESSES).map(tl.in_module),
    st.sampled_from(ADDRESSES + ["a.b:1", "x:2"]).map(tl.module),
    st.lists(st.integers(0, 5), min_size=1, max_size=2).map(lambda i: tl.index(*i)),
    st.sampled_from(LABELS).map(tl.label),
    st.integers(1, 4).map(tl.step),
    st.tuples(st.integers(1, 4), st.one_of(st.none(), st.integers(0, 3))).map(
        lambda ab: tl.steps(ab[0], None if ab[1] is None else ab[0] + ab[1])
    ),
    st.sampled_from([tl.everything(), tl.nothing()]),
)
leaves = st.one_of(
    simple_leaves,
    simple_leaves.map(tl.followed_by),
    simple_leaves.map(tl.preceded_by),
)
selectors: st.SearchStrategy[tl.Selector] = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.tuples(inner, inner).map(lambda ab: ab[0] & ab[1]),
        st.tuples(inner, inner).map(lambda ab: ab[0] | ab[1]),
        inner.map(lambda a: ~a),
    ),
    max_leaves=6,
)


@given(selectors, selectors, ops())
def test_de_morgan(a: tl.Selector, b: tl.Selector, op: FakeOp) -> None:
    assert (~(a & b))(op) == (~a | ~b)(op)
    assert (~(a | b))(op) == (~a & ~b)(op)


@given(selectors, ops())
def test_idempotence(a: tl.Selector, op: FakeOp) -> None:
    assert (a & a)(op) == a(op) == (a | a)(op)
    assert a & a == a and a | a == a


@given(selectors, selectors, ops())
def test_commutativity(a: tl.Selector, b: tl.Selector, op: FakeOp) -> None:
    assert (a & b)(op) == (b & a)(op)
    assert (a | b)(op) == (b | a)(op)


@given(selectors, selectors, selectors, ops())
def test_associativity(a: tl.Selector, b: tl.Selector, c: tl.Selector, op: FakeOp) -> None:
    assert ((a & b) & c)(op) == (a & (b & c))(op)
    assert ((a | b) | c)(op) == (a | (b | c))(op)
    assert (a & b) & c == a & (b & c) and (a | b) | c == a | (b | c)


@given(selectors, selectors, selectors, ops())
def test_distributivity(a: tl.Selector, b: tl.Selector, c: tl.Selector, op: FakeOp) -> None:
    assert (a & (b | c))(op) == ((a & b) | (a & c))(op)
    assert (a | (b & c))(op) == ((a | b) & (a | c))(op)


@given(selectors, ops())
def test_double_negation_and_complement(a: tl.Selector, op: FakeOp) -> None:
    assert ~~a == a
    assert (~a)(op) == (not a(op))
    assert not (a & ~a)(op) and (a | ~a)(op)


@given(selectors, ops())
def test_identity_and_annihilator(a: tl.Selector, op: FakeOp) -> None:
    all_, none = tl.everything(), tl.nothing()
    assert a & all_ == a and a | none == a
    assert a & none == none and a | all_ == all_
    assert (a & all_)(op) == a(op) == (a | none)(op)
    assert not (a & none)(op) and (a | all_)(op)


@given(selectors, selectors)
def test_combined_timing_is_the_latest_part(a: tl.Selector, b: tl.Selector) -> None:
    assume(not isinstance(a, (tl.Everything, tl.Nothing)))
    assume(not isinstance(b, (tl.Everything, tl.Nothing)))
    expected = tl.latest(a.timing, b.timing)
    assert (a & b).timing == (a | b).timing == expected
    assert (~a).timing == a.timing
    assert (a & b).lookahead_depth == max(a.lookahead_depth, b.lookahead_depth)


@given(selectors)
def test_repr_and_pickle_round_trip(a: tl.Selector) -> None:
    assert eval(repr(a), {"tl": tl}) == a
    back = pickle.loads(pickle.dumps(a))
    assert back == a and hash(back) == hash(a)
