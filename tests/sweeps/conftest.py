from __future__ import annotations

import pytest
import torch


def gpt2_small_config_model():
    """A small GPT-2 (random weights, from a config): picklable builder for Ray workers."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=16,
                     use_cache=False, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def logit_diff(logits: torch.Tensor) -> torch.Tensor:
    return logits[0, -1, 3] - logits[0, -1, 5]


@pytest.fixture(scope="module")
def gpt2():
    pytest.importorskip("transformers")
    model = gpt2_small_config_model()
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 50, (1, 6), generator=g)
    corrupted = clean.clone()
    corrupted[0, 2] = (clean[0, 2] + 7) % 50
    return model, clean, corrupted


BLOCKS = ["transformer.h.0", "transformer.h.1"]
