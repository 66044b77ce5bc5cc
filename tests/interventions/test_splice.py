"""Sparse autoencoders spliced into a model: tl.splice_module records the SAE's ops under
``splice.<site>``, so its latents are read, saved and edited live and by replay.

Ground truth never goes through lens: plain forward hooks that capture the site's
activation and run the SAE (or an edited copy of it) by hand.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import lens as tl
from lens.errors import InterventionError, ReplayError, SelectorError
from tests.interventions._truth import run_with_hook

pytest.importorskip("transformers")
from tests.models.hf import gpt2_tiny  # noqa: E402

SITE = "transformer.h.0"
SAE_AT = f"splice.{SITE}"


class SAE(nn.Module):
    """A random sparse autoencoder: linear encoder, ReLU, linear decoder."""

    def __init__(self, d: int, seed: int = 1, mask: Tensor | None = None) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.Linear(d, 4 * d)
        self.relu = nn.ReLU()
        self.decoder = nn.Linear(4 * d, d)
        self.mask = mask  # the hand edit: latents multiplied by it (None: no edit)

    def latents(self, x: Tensor) -> Tensor:
        return self.relu(self.encoder(x))

    def forward(self, x: Tensor) -> Tensor:
        z = self.latents(x)
        return self.decoder(z if self.mask is None else z * self.mask)


def _edited(sae: SAE, latent: int) -> SAE:
    """A copy of ``sae`` whose latent ``latent`` is zeroed: the hand ablation."""
    other = copy.deepcopy(sae)
    other.mask = torch.ones(other.encoder.out_features)
    other.mask[latent] = 0.0
    return other


def _block_out(model: nn.Module, ids: Tensor) -> Tensor:
    """The residual stream after block 0, captured by a plain forward hook."""
    seen: list[Tensor] = []
    h = model.get_submodule(SITE).register_forward_hook(
        lambda m, i, o: seen.append(o[0] if isinstance(o, tuple) else o))
    try:
        model(ids)
    finally:
        h.remove()
    return seen[0]


@pytest.fixture(scope="module")
def gpt2() -> tuple[nn.Module, Tensor, SAE]:
    model, (ids,), _ = gpt2_tiny()
    return model, ids, SAE(model.config.n_embd)


def test_latents_and_output_equal_a_hand_run_of_the_sae(gpt2: Any) -> None:
    model, ids, sae = gpt2
    x = _block_out(model, ids)
    with torch.no_grad():
        want_latents = sae.latents(x)
    expected = run_with_hook(model, (ids,), {}, SITE, sae)
    tr = tl.trace(model, ids, intervene=tl.when(SITE, tl.splice_module(sae)),
                  save=tl.module(f"{SAE_AT}.relu") | tl.module(SAE_AT))
    assert torch.equal(tr[f"{SAE_AT}.relu"].out, want_latents)
    assert torch.equal(tr[SAE_AT].out, sae(x))
    assert torch.equal(tr.output.logits, expected.logits)
    mods = tr.modules
    assert mods[f"{SAE_AT}.encoder"].class_name == "Linear"
    assert mods[SAE_AT].children == [f"{SAE_AT}.encoder", f"{SAE_AT}.relu", f"{SAE_AT}.decoder"]
    assert f"{SAE_AT}.encoder.weight" in tr.params
    # only what save= named was kept: the SAE's latents and output (the decoder's op, the
    # innermost call it ran in), nothing of the model
    kept = {op.module_call for op in tr.ops if op.payload is not None and op.kind == "op"}
    assert kept == {f"{SAE_AT}.relu:1", f"{SAE_AT}.decoder:1"}
    # the model consumes the splice's output op; the block's op keeps the block's value
    assert tr[SAE_AT].children and torch.equal(
        tl.trace(model, ids, intervene=tl.when(SITE, tl.splice_module(sae)))[SITE].out, x)


def test_ablating_a_latent_live_and_by_replay_equals_an_edited_copy(gpt2: Any) -> None:
    model, ids, sae = gpt2
    x = _block_out(model, ids)
    latent = int(sae.latents(x).sum((0, 1)).argmax())  # an active latent: the edit shows
    expected = run_with_hook(model, (ids,), {}, SITE, _edited(sae, latent))
    splice = tl.when(SITE, tl.splice_module(sae))
    ablate = tl.zero_ablate().at[..., latent]
    live = tl.run(model, ids, intervene=[splice, tl.when(f"{SAE_AT}.relu", ablate)])
    assert torch.equal(live.logits, expected.logits)
    assert not torch.equal(live.logits, run_with_hook(model, (ids,), {}, SITE, sae).logits)
    src = tl.trace(model, ids, intervene=splice, intervention_ready=True)
    fork = src.fork().intervene(f"{SAE_AT}.relu", ablate).replay()
    assert torch.equal(fork.output.logits, expected.logits)
    assert not fork[f"{SAE_AT}.relu"].out[..., latent].any()


def test_patching_latents_from_a_clean_run_equals_a_hook(gpt2: Any) -> None:
    model, ids, sae = gpt2
    corrupt = (ids + 7) % model.config.vocab_size
    splice = tl.when(SITE, tl.splice_module(sae))
    clean = tl.trace(model, ids, intervene=splice, save=tl.module(f"{SAE_AT}.relu"))
    want_z = sae.latents(_block_out(model, ids))

    class Patched(nn.Module):  # the SAE with the clean run's latents swapped in
        def forward(self, x: Tensor) -> Tensor:
            return sae.decoder(want_z)

    expected = run_with_hook(model, (corrupt,), {}, SITE, Patched())
    live = tl.run(model, corrupt, intervene=[
        splice, tl.when(f"{SAE_AT}.relu", tl.patch_from(clean))])
    assert torch.equal(live.logits, expected.logits)


def test_error_term_leaves_the_output_unchanged_until_a_latent_is_edited(gpt2: Any) -> None:
    model, ids, sae = gpt2
    plain = model(ids).logits
    splice = tl.when(SITE, tl.splice_module(sae, error_term=True))
    # Bit-equal: the value is x.detach() + (sae(x) - clean) where clean is the same SAE
    # run on the same x, so the difference is exactly 0 and x + 0 is x.
    assert torch.equal(tl.run(model, ids, intervene=splice).logits, plain)
    x = _block_out(model, ids)
    latent = int(sae.latents(x).sum((0, 1)).argmax())
    hand = _edited(sae, latent)
    expected = run_with_hook(model, (ids,), {}, SITE, lambda v: v + (hand(v) - sae(v)))
    edit = tl.when(f"{SAE_AT}.relu", tl.zero_ablate().at[..., latent])
    live = tl.run(model, ids, intervene=[splice, edit])
    torch.testing.assert_close(live.logits, expected.logits, rtol=0, atol=1e-6)
    assert not torch.allclose(live.logits, plain, atol=1e-4)
    src = tl.trace(model, ids, intervene=splice, intervention_ready=True)
    replayed = src.fork().intervene(f"{SAE_AT}.relu", tl.zero_ablate().at[..., latent]).replay()
    assert torch.equal(replayed.output.logits, live.logits)
    # an edit upstream of the splice would need the clean SAE output recomputed: refused
    with pytest.raises(ReplayError, match="error_term"):
        src.fork().intervene("transformer.h.0.attn", tl.scale(0.5)).replay()


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.out = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class FunctionalSAE(nn.Module):
    """An SAE with the ReLU as a function (no submodule holds the latents)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.W_enc = nn.Parameter(torch.randn(d, 4 * d) / d**0.5)
        self.W_dec = nn.Parameter(torch.randn(4 * d, d) / d**0.5)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x @ self.W_enc) @ self.W_dec


def test_splice_into_a_hand_written_mlp_with_grad_through_the_error_term() -> None:
    model, sae = MLP(), FunctionalSAE(8)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    act = model.fc2(torch.relu(model.fc1(x)))  # the hand computation of the site
    latents_sel = tl.func("relu") & tl.in_module("splice.fc2")
    tr = tl.trace(model, x, intervene=tl.when("fc2", tl.splice_module(sae)), save=latents_sel)
    (z,) = [op for op in tr.ops if op.payload is not None and op.kind == "op"]
    assert torch.equal(z.out, torch.relu(act @ sae.W_enc))
    assert torch.equal(tr.output, model.out(torch.relu(sae(act))))
    # ablate latent 2 live, and by replay: both equal the hand edit
    ablate = tl.zero_ablate().at[:, 2]
    mask = torch.ones(32)
    mask[2] = 0
    want = model.out(torch.relu((torch.relu(act @ sae.W_enc) * mask) @ sae.W_dec))
    splice = tl.when("fc2", tl.splice_module(sae))
    assert torch.equal(tl.run(model, x, intervene=[splice, tl.when(latents_sel, ablate)]), want)
    src = tl.trace(model, x, intervene=splice, intervention_ready=True)
    assert torch.equal(src.fork().intervene(latents_sel, ablate).replay().output, want)
    # with the error term, gradients reach the input through the SAE only, as with
    # sae(a) + (a - sae(a)).detach() written by hand
    xg = x.clone().requires_grad_(True)
    tl.run(model, xg, intervene=tl.when("fc2", tl.splice_module(sae, error_term=True))
           ).sum().backward()
    xh = x.clone().requires_grad_(True)
    a = model.fc2(torch.relu(model.fc1(xh)))
    model.out(torch.relu(sae(a) + (a - sae(a)).detach())).sum().backward()
    torch.testing.assert_close(xg.grad, xh.grad)


def _hooks(m: nn.Module) -> int:
    return sum(len(getattr(mod, d)) for mod in m.modules() for d in (
        "_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
        "_forward_pre_hooks_with_kwargs"))


def test_nothing_is_left_on_the_model_or_the_sae_also_after_an_error() -> None:
    model, sae = MLP(), FunctionalSAE(8)
    x = torch.randn(5, 6)
    before = {n: dict(vars(m)) .keys() for n, m in sae.named_modules()}
    tl.trace(model, x, intervene=tl.when("fc2", tl.splice_module(sae, error_term=True)))

    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(8, 8)

        def forward(self, v: Tensor) -> Tensor:
            raise RuntimeError("boom")

    broken = Broken()
    with pytest.raises(RuntimeError, match="boom"):
        tl.run(model, x, intervene=tl.when("fc2", tl.splice_module(broken)))
    assert _hooks(model) == _hooks(sae) == _hooks(broken) == 0
    assert {n: dict(vars(m)).keys() for n, m in sae.named_modules()} == before
    # a splice address with a typo names the close one
    with pytest.raises(SelectorError, match="splice.fc2"):
        tl.run(model, x, intervene=[tl.when("fc2", tl.splice_module(sae)),
                                    tl.when(tl.module("splice.fc"), tl.zero_ablate())])
    # a rule whose selector matches the spliced module's own ops would splice recursively
    with pytest.raises(InterventionError, match="already recorded"):
        tl.run(model, x, intervene=tl.when(tl.func("relu"), tl.splice_module(
            FunctionalSAE(8), name="m")))


def test_the_readme_splicing_example_runs(gpt2: Any) -> None:
    from pathlib import Path

    text = (Path(__file__).parents[2] / "README.md").read_text()
    section = text.split("### Splicing a sparse autoencoder", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    model, ids, _ = gpt2
    scope: dict[str, Any] = {"tl": tl, "nn": nn, "torch": torch, "model": model, "ids": ids}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README
    assert scope["latents"].shape == (*ids.shape, 128)
    live = tl.run(model, ids, intervene=[scope["splice"], tl.when(
        "splice.transformer.h.0.relu", tl.zero_ablate().at[..., 7])])
    assert torch.equal(scope["ablated"].output.logits, live.logits)
