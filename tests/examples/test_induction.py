"""The tutorials' induction model: its attention, data, metric, scores and weight cache."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lens.examples import induction

TINY = replace(induction.Config(), steps=3, batch=4, d_model=16, n_heads=2)


def test_attention_matches_torch_sdpa() -> None:
    torch.manual_seed(0)
    attn = induction.Attention(16, 4).eval()
    x = torch.randn(3, 7, 16)
    b, t, d = x.shape

    def heads(y: torch.Tensor) -> torch.Tensor:
        return y.view(b, t, 4, 4).transpose(1, 2)

    with torch.no_grad():
        z = F.scaled_dot_product_attention(heads(attn.q(x)), heads(attn.k(x)),
                                           heads(attn.v(x)), is_causal=True)
        want = attn.o(z.transpose(1, 2).reshape(b, t, d))
        got = attn(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_training_batches_repeat_a_segment_and_mask_its_second_copy() -> None:
    cfg = induction.Config()
    tokens, mask = induction.batch(cfg, 16, torch.Generator().manual_seed(0))
    assert tokens.shape == (16, cfg.seq_len) and bool((tokens[:, 0] == induction.BOS).all())
    for row, m in zip(tokens, mask, strict=True):
        targets = m.nonzero().flatten().tolist()  # mask[i]: predict token i + 1
        assert targets, "every sequence has predictable positions"
        for i in targets:
            now, nxt = int(row[i]), int(row[i + 1])
            earlier = [j for j in range(i) if int(row[j]) == now]
            assert len(earlier) == 1 and int(row[earlier[0] + 1]) == nxt
        first = targets[0]  # the second copy's first token has occurred exactly once before
        assert (row[: first] == row[first]).sum() == 1


@pytest.mark.parametrize("corrupt", ["copied", "matched"])
def test_prompts_differ_in_one_token_of_the_first_copy(corrupt: str) -> None:
    cfg = induction.Config()
    clean, corrupted, answers = induction.prompts(cfg, batch=5, corrupt=corrupt)
    n = cfg.max_period
    k = clean.shape[1] - 1 - n
    diff = (clean != corrupted).nonzero()
    pos = k + 1 if corrupt == "copied" else k
    assert diff[:, 1].tolist() == [pos] * 5
    assert torch.equal(clean[:, 1: 1 + k], clean[:, n + 1:])  # the second copy
    assert torch.equal(answers[:, 0], clean[:, k + 1])  # the induction answer
    assert torch.equal(answers[:, 1], corrupted[:, pos])
    assert not bool((clean == answers[:, 1:2]).any())  # X is new
    with pytest.raises(ValueError, match="corrupt="):
        induction.prompts(cfg, corrupt="other")


def test_logit_diff_is_the_mean_difference_at_the_last_position() -> None:
    logits = torch.randn(3, 5, 10)
    answers = torch.tensor([[1, 2], [3, 4], [5, 0]])
    want = sum(float(logits[b, -1, answers[b, 0]] - logits[b, -1, answers[b, 1]])
               for b in range(3)) / 3
    assert math.isclose(float(induction.LogitDiff(answers)(logits)), want, rel_tol=1e-6)


def test_scores_read_the_stripes_of_a_hand_made_pattern() -> None:
    tokens = torch.tensor([[0, 5, 6, 7, 5, 6, 7]])
    t = tokens.shape[1]
    prev = torch.zeros(1, 1, t, t)
    prev[0, 0, 0, 0] = 1
    prev[0, 0, torch.arange(1, t), torch.arange(t - 1)] = 1
    ind = torch.zeros(1, 1, t, t)
    ind[0, 0, :, 0] = 1
    ind[0, 0, 4:, 0] = 0
    ind[0, 0, torch.arange(4, 7), torch.arange(2, 5)] = 1  # i -> (i - 3) + 1
    both = torch.cat([prev, ind], dim=1)
    # the induction head attends i -> i - 1 only from query 1 (to BOS): 1 of 6 queries
    assert induction.diagonal_scores(both, 1).tolist() == pytest.approx([1.0, 1 / 6])
    assert induction.stripe_scores(both, tokens, 1).tolist() == [0.0, 1.0]


def test_load_or_train_caches_weights_as_safetensors(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    model, cfg = induction.load_or_train(cache_dir=tmp_path, config=TINY, verbose=False)
    files = list(tmp_path.glob("*.safetensors"))
    assert [f.name for f in files] == [f"induction-{TINY.key()}.safetensors"]
    meta = induction.cached_stats(files[0])
    assert meta["config"]["d_model"] == 16 and "accuracy" in meta["stats"]

    def no_training(*a: object, **k: object) -> None:
        raise AssertionError("the cached model should have been loaded")

    monkeypatch.setattr(induction, "train", no_training)
    again, cfg2 = induction.load_or_train(cache_dir=tmp_path, config=TINY, verbose=False)
    assert cfg2 == cfg and not again.training
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(),
                                     strict=True):
        assert torch.equal(a, b), name
    # A different config is a different file (the key is a hash of every field).
    assert replace(TINY, seed=1).key() != TINY.key()


def test_training_is_reproducible_from_the_seed() -> None:
    a, _ = induction.train(TINY)
    b, _ = induction.train(TINY)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
