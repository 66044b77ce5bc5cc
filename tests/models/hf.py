"""HuggingFace transformers models built from configs with random weights.

No weights are downloaded.  Every build seeds torch before constructing the
model and draws inputs from a fixed ``torch.Generator``.  Builds raise
ImportError when transformers is missing; tests should
``pytest.importorskip("transformers")`` first.

Config notes (transformers 5.x):
- ``use_cache=False`` everywhere so outputs carry no ``past_key_values``
  Cache objects (outputs are still ``ModelOutput`` dict subclasses).
- GPT2Config defaults bos/eos to 50256, outside a 100-token vocab, which
  logs a warning; we set them to 0.
- ``attn_implementation`` is left at its default, which resolves to
  ``"sdpa"`` at construction time.
"""

from __future__ import annotations

import torch

from ._registry import register

VOCAB = 100


def _ids(shape, seed=0, vocab=VOCAB):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, shape, generator=g)


@register("gpt2_tiny", "hf", "attention", "transformer", "shared_params")
def gpt2_tiny():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=VOCAB,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
        use_cache=False,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).eval()  # lm_head tied to wte
    return model, (_ids((2, 8)),), {}


@register("bert_tiny", "hf", "attention", "transformer", "kwargs")
def bert_tiny():
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=32,
        use_cache=False,
    )
    torch.manual_seed(0)
    model = BertModel(cfg).eval()
    ids = _ids((2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, -3:] = 0  # padding on the second sequence
    return model, (ids,), {"attention_mask": mask}


@register("llama_tiny", "hf", "attention", "transformer")
def llama_tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA
        vocab_size=VOCAB,
        max_position_embeddings=64,
        use_cache=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    return model, (_ids((2, 8)),), {}


@register("vit_tiny", "hf", "attention", "transformer", "vision")
def vit_tiny():
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(
        image_size=16,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
    )
    torch.manual_seed(0)
    model = ViTModel(cfg).eval()
    g = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(2, 3, 16, 16, generator=g)
    return model, (pixel_values,), {}


@register("gpt2_small_shaped", "hf", "attention", "transformer", "shared_params", "bench")
def gpt2_small_shaped():
    """GPT-2 small shapes (12 layers, 768 wide), random weights; benchmarks only."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=12, n_embd=768, n_head=12, use_cache=False)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).eval()
    return model, (_ids((1, 32), vocab=cfg.vocab_size),), {}


def _moe(config_cls: str, model_cls: str, **extra):
    """A tiny mixture-of-experts causal LM: 2 layers, 4 experts, 2 picked per token."""
    import transformers

    cfg = getattr(transformers, config_cls)(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        num_experts_per_tok=2,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        use_cache=False,
        **extra,
    )
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(cfg).eval()
    return model, (_ids((2, 8)),), {}


@register("mixtral_tiny", "hf", "attention", "transformer", "moe", "inplace")
def mixtral_tiny():
    return _moe("MixtralConfig", "MixtralForCausalLM", num_local_experts=4)


@register("qwen2_moe_tiny", "hf", "attention", "transformer", "moe", "inplace")
def qwen2_moe_tiny():
    return _moe("Qwen2MoeConfig", "Qwen2MoeForCausalLM", num_experts=4,
                moe_intermediate_size=24, shared_expert_intermediate_size=48)


@register("olmoe_tiny", "hf", "attention", "transformer", "moe", "inplace")
def olmoe_tiny():
    return _moe("OlmoeConfig", "OlmoeForCausalLM", num_experts=4)
