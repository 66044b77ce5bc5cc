"""Test model zoo: tiny deterministic models covering tricky capture cases.

Usage::

    from tests.models import ZOO, get, cases
    model, args, kwargs = get("demo_network").build()
    for case in cases(exclude=("bench", "hf")): ...

Every ``build()`` seeds torch itself and returns ``(model.eval(), args, kwargs)``.
Tags in use:

- ``seed``: models from the torchlens README / figure legend.
- ``cnn``, ``rnn`` (``nn.LSTM``/``nn.GRU``/cells), ``attention``, ``transformer``, ``hf``.
- ``recurrent``: a module (same weights) is applied several times.
- ``loop``: a Python ``for`` loop drives the repetition.
- ``inplace``: in-place tensor ops or ``inplace=True`` modules.
- ``random``: calls the RNG inside forward (re-seed before each run).
- ``dict_io``: dict input and nested dict/tuple/list output.
- ``kwargs``: build returns non-empty kwargs.
- ``buffer``: uses registered buffers (incl. BatchNorm running stats).
- ``conditional``: data-dependent Python ``if``.
- ``param_free``: no parameters at all.
- ``grouping``: loop-grouping ground truth cases (``xyz_*``).
- ``multi_output``: ops returning tuples (split/chunk/max/unbind).
- ``shared_params``: the same parameter used by more than one op site.
- ``internal_tensor``: tensors created inside forward (zeros/ones/arange).
- ``nested``: nested submodules with no parameters of their own.
- ``identity``: nn.Identity / pass-through modules, eval-mode dropout.
- ``vision``: image input (ViT patch embedding).
- ``grad_mode_sensitive``: output is NOT bit-identical between grad-enabled
  and ``torch.no_grad()`` runs (nn.LSTM kernels; nn.MultiheadAttention fast
  path under no_grad).  Each mode alone is deterministic: compare a capture
  against a reference run in the same grad mode, or use a tolerance.
- ``modes``: random composites, autocast/no_grad regions, autograd.grad in forward,
  extreme operands (``random_modes.py``).
- ``autograd``: the forward calls ``torch.autograd.grad`` (replay refuses it).
- ``mutates_input``: the forward writes into its input (give each run a copy).
- ``stateful``: the forward reassigns a buffer or attribute (run a copy of the model).
- ``nan``: NaN payloads (compare with a NaN-aware equality).
- ``uninitialised``: ``torch.empty`` payloads (garbage: compare metadata only).
- ``irregular``: breaks an assumption the generic zoo tests make (``mutates_input``,
  ``stateful``, ``nan``, ``uninitialised``, ``autograd``); left out of
  ``regular_cases()`` and the intervention zoo, and checked by the tests written for
  them (tests/replay, ``tl.validate`` on the whole zoo, tests/models/test_zoo.py).
- ``bench``: benchmark sized; excluded from regular zoo iteration.
- ``view_write``: writes into a tensor through a view, then reads the base or another
  view (tests/models/mutation.py).
- ``train``: built in train mode (BatchNorm running stats change on every run; the
  output does not depend on them).
- ``moe``: mixture-of-experts routing (HF Mixtral, Qwen2-MoE, OLMoE).

HF cases (tag ``hf``) are always registered; their ``build`` raises
ImportError when transformers is missing (use ``pytest.importorskip``).
"""

from __future__ import annotations

# Importing the topical modules populates ZOO.
from . import attention, cnn, hf, misc, mutation, random_modes, recurrent, seeds  # noqa: F401
from ._registry import ZOO, ZooCase, cases, get, hf_available, register
from .hf import gpt2_small_shaped

__all__ = [
    "ZOO",
    "ZooCase",
    "cases",
    "get",
    "hf_available",
    "register",
    "gpt2_small_shaped",
]
