"""Tiny HF models built twice with the same weights: fused SDPA and eager attention."""

from __future__ import annotations

import torch
from torch import nn


def _build(family: str, impl: str) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if family == "gpt2":
        cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=32,
                         bos_token_id=0, eos_token_id=0, use_cache=False,
                         attn_implementation=impl)
        return GPT2LMHeadModel(cfg).eval()
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                      max_position_embeddings=64, use_cache=False, attn_implementation=impl)
    return LlamaForCausalLM(cfg).eval()


def pair(family: str) -> tuple[tuple[nn.Module, nn.Module], torch.Tensor]:
    fused, eager = _build(family, "sdpa"), _build(family, "eager")
    assert fused.config._attn_implementation == "sdpa"
    assert eager.config._attn_implementation == "eager"
    for (n, p), (_, q) in zip(fused.state_dict().items(), eager.state_dict().items(),
                              strict=True):
        assert torch.equal(p, q), n
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    return (fused, eager), ids


def other_ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(seed))
