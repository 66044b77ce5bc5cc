"""Steering and patching during generation (``tl.run(model.generate, ...)``), checked token
for token and logit for logit against forward hooks on a copy of the model."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import lens as tl

transformers = pytest.importorskip("transformers")

NEW = 10
STEP = 3


def _gpt2() -> tuple[nn.Module, str]:
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100,
                                  n_positions=32, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval(), "transformer.h.1"


def _llama() -> tuple[nn.Module, str]:
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2,
                                   vocab_size=100, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval(), "model.layers.1"


MODELS = {"gpt2": _gpt2, "llama": _llama}


@functools.cache
def _plain(name: str, cache: bool, seed: int = 1) -> Any:
    model, _ = MODELS[name]()
    ids = _prompt(seed)
    return model.generate(ids, **_kwargs(ids, cache))


def _prompt(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 100, (2, 6), generator=g)


def _kwargs(ids: torch.Tensor, cache: bool, **extra: Any) -> dict[str, Any]:
    return dict(attention_mask=torch.ones_like(ids), max_new_tokens=NEW, do_sample=False,
                pad_token_id=0, use_cache=cache, output_scores=True,
                return_dict_in_generate=True, **extra)


def _vector(d: int = 32) -> torch.Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(7))


def _block(model: nn.Module, address: str) -> nn.Module:
    return model.get_submodule(address)


def _hooked(model: nn.Module, address: str,
            edit: Callable[[int, torch.Tensor], torch.Tensor]) -> nn.Module:
    """A copy of ``model`` whose block output goes through ``edit(call number, hidden)``."""
    twin = copy.deepcopy(model)
    calls = [0]

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        calls[0] += 1
        if isinstance(output, tuple):
            return (edit(calls[0], output[0]), *output[1:])
        return edit(calls[0], output)

    _block(twin, address).register_forward_hook(hook)
    return twin


def _same(a: Any, b: Any) -> None:
    assert torch.equal(a.sequences, b.sequences)
    assert len(a.scores) == len(b.scores) == NEW
    for x, y in zip(a.scores, b.scores, strict=True):
        assert torch.equal(x, y)


CASES = [(name, cache) for name in MODELS for cache in (True, False)]


@pytest.mark.parametrize(("name", "cache"), CASES)
def test_steering_every_step_equals_a_forward_hook(name: str, cache: bool) -> None:
    model, block = MODELS[name]()
    ids, vec = _prompt(), _vector()
    kw = _kwargs(ids, cache)
    got = tl.run(model.generate, ids, input_kwargs=kw,
                 intervene=tl.when(tl.module(block), tl.steer(vec)))
    truth = _hooked(model, block, lambda k, h: h + vec).generate(ids, **kw)
    _same(got, truth)
    assert not torch.equal(got.sequences, _plain(name, cache).sequences)


@pytest.mark.parametrize(("name", "cache"), CASES)
def test_steering_one_step_equals_a_hook_that_counts_calls(name: str, cache: bool) -> None:
    model, block = MODELS[name]()
    ids, vec = _prompt(), _vector()
    kw = _kwargs(ids, cache)
    truth = _hooked(model, block, lambda k, h: h + vec if k == STEP else h).generate(ids, **kw)
    by_step = tl.run(model.generate, ids, input_kwargs=kw,
                     intervene=tl.when(tl.step(STEP) & tl.module(block), tl.steer(vec)))
    by_call = tl.run(model.generate, ids, input_kwargs=kw,
                     intervene=tl.when(f"{block}:{STEP}", tl.steer(vec)))
    _same(by_step, truth)
    _same(by_call, truth)
    plain = _plain(name, cache)
    assert torch.equal(by_step.scores[STEP - 2], plain.scores[STEP - 2])
    assert not torch.equal(by_step.scores[STEP - 1], plain.scores[STEP - 1])


@pytest.mark.parametrize(("name", "cache"), CASES)
def test_steering_the_last_position_only_equals_a_hook(name: str, cache: bool) -> None:
    model, block = MODELS[name]()
    ids, vec = _prompt(), _vector()
    kw = _kwargs(ids, cache)

    def last(k: int, h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        h[:, -1] += vec
        return h

    got = tl.run(model.generate, ids, input_kwargs=kw,
                 intervene=tl.when(tl.module(block), tl.steer(vec).at[:, -1]))
    _same(got, _hooked(model, block, last).generate(ids, **kw))


@pytest.mark.parametrize(("name", "cache"), [("gpt2", True), ("llama", False)])
def test_patching_a_clean_step_into_a_corrupted_generation(name: str, cache: bool) -> None:
    model, block = MODELS[name]()
    clean, corrupt = _prompt(1), _prompt(2)
    site = tl.step(STEP) & tl.module(block)
    seen: dict[int, torch.Tensor] = {}

    def remember(k: int, h: torch.Tensor) -> torch.Tensor:
        seen[k] = h.detach().clone()
        return h

    _hooked(model, block, remember).generate(clean, **_kwargs(clean, cache))
    truth = _hooked(model, block, lambda k, h: seen[STEP] if k == STEP else h).generate(
        corrupt, **_kwargs(corrupt, cache))
    source = tl.trace(model.generate, clean, input_kwargs=_kwargs(clean, cache), save=site)
    (kept,) = [op for op in source.ops if op.has_payload and op.kind == "op"]
    assert torch.equal(kept.out, seen[STEP]) and kept.step == STEP
    got = tl.run(model.generate, corrupt, input_kwargs=_kwargs(corrupt, cache),
                 intervene=tl.when(site, tl.replace_with(kept.out)))
    _same(got, truth)
    assert not torch.equal(truth.sequences, _plain(name, cache, 2).sequences)


@pytest.mark.parametrize(("name", "cache"), [("gpt2", False), ("llama", True)])
def test_a_fork_of_a_generation_replays_an_edit_at_one_step_as_the_live_edit(
        name: str, cache: bool) -> None:
    model, block = MODELS[name]()
    ids, vec = _prompt(), _vector()
    kw = _kwargs(ids, cache)
    site = tl.step(STEP) & tl.module(block)
    live = tl.run(model.generate, ids, input_kwargs=kw, intervene=tl.when(site, tl.steer(vec)))
    source = tl.trace(model.generate, ids, input_kwargs=kw, intervention_ready=True)
    replayed = source.fork().intervene(site, tl.steer(vec)).replay()
    _same(replayed.output, live)
    assert not torch.equal(source.output.sequences, live.sequences)


def test_replay_refuses_an_edit_that_changes_where_generation_stops() -> None:
    model, block = _gpt2()
    ids, vec = _prompt(), _vector()
    plain = model.generate(ids, **_kwargs(ids, True))
    steered = tl.run(model.generate, ids, input_kwargs=_kwargs(ids, True),
                     intervene=tl.when(tl.module(block), tl.steer(vec * 4)))
    # a token the steered run emits at the last step but the plain run never does
    stop = int(steered.sequences[0, -1])
    assert stop not in plain.sequences[:, ids.shape[1]:].tolist()[0] + \
        plain.sequences[:, ids.shape[1]:].tolist()[1]
    kw = _kwargs(ids, True, eos_token_id=stop)
    source = tl.trace(model.generate, ids, input_kwargs=kw, intervention_ready=True)
    fork = source.fork().intervene(tl.module(block), tl.steer(vec * 4))
    with pytest.raises(tl.InterventionError, match="branched on"):
        fork.replay()


class _Greedy(nn.Module):
    """A tiny causal model with a greedy ``generate`` and no cache: each step reruns the
    whole sequence, so unsliced activations grow with the step count."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(16, 8)
        self.block = nn.Linear(8, 8)
        self.head = nn.Linear(8, 16)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.block(self.embed(ids))))

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, new: int) -> torch.Tensor:
        for _ in range(new):
            ids = torch.cat([ids, self(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
        return ids


def _bytes_per_step(ops: Any) -> dict[int, int]:
    per: dict[int, int] = {}
    for op in ops:
        if op.payload is not None and op.step:
            per[op.step] = per.get(op.step, 0) + op.payload.untyped_storage().nbytes()
    return per


def test_saving_the_last_position_keeps_the_same_bytes_at_every_one_of_1000_steps() -> None:
    model = _Greedy()
    ids = torch.tensor([[1, 2, 3]])
    last = (slice(None), slice(-1, None))
    sliced = tl.record(model.generate, ids, 1000, save=tl.module("block"), save_at=last)
    per = _bytes_per_step(sliced.ops)
    assert sorted(per) == list(range(1, 1001))
    assert set(per.values()) == {8 * 4}  # one position of 8 floats, at step 1 and step 1000
    assert torch.equal(sliced.output, model.generate(ids, 1000))
    whole = _bytes_per_step(tl.record(model.generate, ids, 20, save=tl.module("block")).ops)
    assert whole[20] > whole[1]  # without save_at the saved bytes grow with the sequence
    (step_3,) = [op.payload for op in sliced.ops if op.payload is not None and op.step == 3]
    with torch.no_grad():  # step 3 reads the prompt and the first two new tokens
        assert torch.allclose(step_3, model.block(model.embed(sliced.output[:, :5]))[:, -1:])


def test_a_trace_with_sliced_payloads_refuses_replay_and_intervention_ready() -> None:
    model = _Greedy()
    ids = torch.tensor([[1, 2, 3]])
    last = (slice(None), slice(-1, None))
    trace = tl.trace(model.generate, ids, 3, save=tl.module("block"), save_at=last)
    with pytest.raises(tl.InterventionError, match="slice"):
        trace.fork().intervene(tl.module("block"), tl.zero_ablate()).replay()
    with pytest.raises(tl.CaptureError, match="intervention_ready"):
        tl.trace(model.generate, ids, 3, save_at=last, intervention_ready=True)
    with pytest.raises(tl.ArgumentTypeError, match="save_at"):
        tl.trace(model.generate, ids, 3, save_at="last")


def test_the_readme_steering_example_runs_and_steers() -> None:
    text = (Path(__file__).parents[2] / "README.md").read_text()
    section = text.split("## Steering a generation", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README
    plain = scope["model"].generate(scope["ids"], **scope["gen"])
    assert not torch.equal(scope["every_step"], plain)
    assert torch.equal(scope["step_3_only"][:, :6], plain[:, :6])  # 4 prompt + 2 steps
    assert {op.payload.shape for op in scope["kept"].ops
            if op.payload is not None and op.step} == {(1, 1, 32)}


def test_a_saved_generation_keeps_its_steps(tmp_path) -> None:
    model, block = _gpt2()
    ids = _prompt()
    source = tl.trace(model.generate, ids, input_kwargs=_kwargs(ids, True))
    tl.save(source, tmp_path / "gen")
    loaded = tl.load(tmp_path / "gen")
    assert [op.step for op in loaded.ops] == [op.step for op in source.ops]
    site = tl.step(STEP) & tl.module(block)
    picked = [op.label for op in loaded.ops if site(op)]
    assert picked and picked == [op.label for op in source.ops if site(op)]
