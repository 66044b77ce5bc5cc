"""A tiny attention-only transformer that learns induction, trained in seconds on a CPU.

The task has a known mechanism. Each sequence is ``[BOS, x, x, ..., A1 .. An, A1 .. An, y, ...]``:
distinct random tokens in which one segment of random length ``n`` at a random offset is
repeated right after itself. On the second copy the next token is predictable only by
*induction*: find the previous occurrence of the current token and copy the token that
followed it. Because the period and offset vary, absolute positions do not give the
answer away; a two-layer attention-only model solves it with a previous-token head in
layer 0 and an induction head in layer 1 (Olsson et al., 2022, "In-context learning and
induction heads").

    from lens.examples import induction
    model, config = induction.load_or_train()          # trains once, then loads the cache
    clean, corrupted, answers = induction.prompts(config, batch=8)
    metric = induction.LogitDiff(answers)              # logit(correct) - logit(distractor)

The model is plain PyTorch, written out by hand: token and positional embeddings, two
attention layers (``blocks.{i}.attn``, with ``q``/``k``/``v``/``o`` Linear layers and the
attention as explicit matmul/softmax/matmul), a residual stream and an unembedding. Each
block returns the residual stream after it, so the module addresses ``embed``,
``blocks.0`` and ``blocks.1`` name the residual stream at each depth.

Weights are cached as safetensors (never pickle) in ``cache_dir`` (default: ``$LENS_CACHE``
or ``.lens-cache/``), keyed by a hash of the config, so training happens once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

BOS = 0
# Bump when the model, the data or the training loop changes: it is part of the cache key,
# so a stale cache file is never loaded into a different model.
VERSION = 1


@dataclass(frozen=True)
class Config:
    """Sizes of the model and of the training run (every field feeds the cache key)."""

    vocab: int = 40  # token 0 is BOS; sequences use tokens 1 .. vocab-1, all distinct
    seq_len: int = 26  # BOS included
    min_period: int = 5  # length of the repeated segment: min_period .. max_period
    max_period: int = 12
    d_model: int = 48
    n_heads: int = 4
    n_layers: int = 2
    steps: int = 1000
    batch: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    seed: int = 0

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def key(self) -> str:
        """Hash of the config: the cache file's name."""
        blob = json.dumps({"version": VERSION, **asdict(self)}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


# --------------------------------------------------------------------------- the model
class Attention(nn.Module):
    """Causal multi-head self-attention, spelled out: q/k/v projections, scores, softmax,
    the weighted sum of values per head (``z``, shape ``(batch, head, pos, d_head)``),
    and the output projection ``o``."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.o = nn.Linear(d_model, d_model)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.d_head).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_head)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        pattern = scores.masked_fill(mask, float("-inf")).softmax(dim=-1)
        z = pattern @ v  # (batch, head, query pos, d_head)
        out: torch.Tensor = self.o(z.transpose(1, 2).reshape(b, t, d))
        return out


class Block(nn.Module):
    """One attention layer on the residual stream; returns the stream after it."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.attn = Attention(d_model, n_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.attn(x)
        return out


class Embed(nn.Module):
    """Token plus learned positional embedding: the residual stream at depth 0."""

    def __init__(self, vocab: int, seq_len: int, d_model: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(seq_len, d_model)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[-1], device=tokens.device)
        out: torch.Tensor = self.tok(tokens) + self.pos(positions)
        return out


class AttnOnlyTransformer(nn.Module):
    """Embedding, ``n_layers`` attention blocks (no MLPs, no LayerNorm), unembedding."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.embed = Embed(config.vocab, config.seq_len, config.d_model)
        self.blocks = nn.ModuleList(
            Block(config.d_model, config.n_heads) for _ in range(config.n_layers))
        self.unembed = nn.Linear(config.d_model, config.vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        logits: torch.Tensor = self.unembed(x)
        return logits


def build(config: Config | None = None) -> AttnOnlyTransformer:
    """A model with the config's seeded random initialisation (untrained)."""
    config = config or Config()
    torch.manual_seed(config.seed)
    return AttnOnlyTransformer(config)


# --------------------------------------------------------------------------- the data
def batch(config: Config, size: int, generator: torch.Generator
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Training sequences and a mask of the positions whose next token is predictable
    by induction (the second copy of the repeated segment, but for its last token)."""
    t = config.seq_len
    tokens = torch.empty(size, t, dtype=torch.long)
    mask = torch.zeros(size, t - 1, dtype=torch.bool)  # mask[b, i]: predict tokens[b, i+1]
    for row in range(size):
        n = int(torch.randint(config.min_period, config.max_period + 1, (1,),
                              generator=generator))
        start = int(torch.randint(1, t - 2 * n + 1, (1,), generator=generator))
        seq = torch.randperm(config.vocab - 1, generator=generator)[: t - 1] + 1
        seq[start + n - 1: start + 2 * n - 1] = seq[start - 1: start + n - 1]
        tokens[row, 0] = BOS
        tokens[row, 1:] = seq
        mask[row, start + n: start + 2 * n - 1] = True
    return tokens, mask


def prompts(config: Config, batch: int = 8, period: int | None = None, seed: int = 1234,
            corrupt: str = "copied") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean and corrupted prompts for patching, and the two candidate answers.

    Clean: ``[BOS, A1 .. An, A1 .. Ak]`` with ``k = n - 2``; the correct next token is
    ``A(k+1)``, found by induction. Corrupted: the same, with one token of the first copy
    replaced by a token ``X`` that occurs nowhere else:

    - ``corrupt='copied'``: ``A(k+1)`` at position ``k+1``, the token induction copies;
      the model now predicts ``X``.
    - ``corrupt='matched'``: ``A(k)`` at position ``k``, the earlier occurrence of the
      current token that induction looks for; the model no longer knows what comes next.

    ``answers[:, 0]`` is ``A(k+1)``, ``answers[:, 1]`` is ``X``. Every prompt has the same
    length, so the last position is where the metric reads.
    """
    if corrupt not in ("copied", "matched"):
        raise ValueError(f"corrupt={corrupt!r}: use 'copied' (replace A(k+1) in the first "
                         "copy) or 'matched' (replace A(k) in the first copy).")
    n = period or config.max_period
    k = n - 2
    g = torch.Generator().manual_seed(seed)
    clean = torch.empty(batch, 1 + n + k, dtype=torch.long)
    answers = torch.empty(batch, 2, dtype=torch.long)
    for row in range(batch):
        seq = torch.randperm(config.vocab - 1, generator=g)[: n + 1] + 1
        a, x = seq[:n], seq[n]
        clean[row] = torch.cat([torch.tensor([BOS]), a, a[:k]])
        answers[row, 0], answers[row, 1] = a[k], x
    corrupted = clean.clone()
    corrupted[:, k + 1 if corrupt == "copied" else k] = answers[:, 1]
    return clean, corrupted, answers


@dataclass(frozen=True, eq=False)
class LogitDiff:
    """``logit(correct) - logit(distractor)`` at the last position, mean over the batch.

    A top-level class, so sweeps can ship it to Ray workers; returns a scalar tensor, so
    attribution patching can differentiate it.
    """

    answers: torch.Tensor  # (batch, 2): correct, distractor

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1, :]
        picked = last.gather(-1, self.answers.to(last.device))
        return (picked[:, 0] - picked[:, 1]).mean()

    def __repr__(self) -> str:
        rows = self.answers.tolist()
        return f"LogitDiff(answers={rows})"


def induction_accuracy(model: nn.Module, config: Config, size: int = 256, seed: int = 99
                       ) -> float:
    """Top-1 accuracy on the induction positions of fresh sequences."""
    tokens, mask = batch(config, size, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        pred = model(tokens)[:, :-1].argmax(-1)
    return float((pred == tokens[:, 1:])[mask].float().mean())


def stripe_scores(pattern: torch.Tensor, tokens: torch.Tensor, offset: int
                  ) -> torch.Tensor:
    """Mean attention, per head, from each query to the position ``offset`` after the
    previous occurrence of its token: with ``offset=1``, the induction stripe.

    ``pattern``: ``(batch, head, query, key)``; ``tokens``: ``(batch, pos)``. Only queries
    whose token occurred before count.
    """
    b, h, t, _ = pattern.shape
    total = torch.zeros(h, dtype=pattern.dtype)
    count = 0
    for row in range(b):
        seen: dict[int, int] = {}
        for i in range(t):
            tok = int(tokens[row, i])
            j = seen.get(tok)
            if j is not None and j + offset <= i:
                total += pattern[row, :, i, j + offset]
                count += 1
            seen[tok] = i
    return total / max(count, 1)


def diagonal_scores(pattern: torch.Tensor, offset: int = 1) -> torch.Tensor:
    """Mean attention, per head, from each query ``i`` to key ``i - offset``."""
    diag = pattern.diagonal(offset=-offset, dim1=-2, dim2=-1)  # (batch, head, t - offset)
    return diag.mean(dim=(0, 2))


# --------------------------------------------------------------------------- training
def train(config: Config, log_every: int = 0) -> tuple[AttnOnlyTransformer, dict[str, Any]]:
    """Train from the config's seed; returns the model (eval mode) and training stats."""
    threads = torch.get_num_threads()
    # One thread: on a small model, extra threads cost more in synchronisation than they
    # save, and much more on a busy machine.
    torch.set_num_threads(1)
    try:
        with torch.enable_grad():  # also when the caller turned gradients off globally
            return _train(config, log_every)
    finally:
        torch.set_num_threads(threads)


def _train(config: Config, log_every: int) -> tuple[AttnOnlyTransformer, dict[str, Any]]:
    model = build(config)
    g = torch.Generator().manual_seed(config.seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr,
                            weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr,
                                                total_steps=config.steps, pct_start=0.1)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    loss = torch.tensor(float("nan"))
    model.train()
    for step in range(config.steps):
        tokens, mask = batch(config, config.batch, g)
        logits = model(tokens)[:, :-1]
        loss = loss_fn(logits[mask], tokens[:, 1:][mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1:5d}  loss {loss.item():.3f}", flush=True)
    model.eval()
    stats = {"final_loss": loss.item(), "train_seconds": time.perf_counter() - t0,
             "accuracy": induction_accuracy(model, config)}
    return model, stats


def default_cache_dir() -> Path:
    return Path(os.environ.get("LENS_CACHE", ".lens-cache"))


def load_or_train(cache_dir: str | os.PathLike[str] | None = None, seed: int = 0,
                  config: Config | None = None, verbose: bool = True
                  ) -> tuple[AttnOnlyTransformer, Config]:
    """The trained model for ``config`` (default: :class:`Config` with ``seed``), from the
    cache when it is there, else trained (tens of seconds on a CPU) and cached.

    The cache is ``<cache_dir>/induction-<config hash>.safetensors``, written atomically
    under a file lock, so concurrent callers train once.
    """
    config = config if config is not None else Config(seed=seed)
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"induction-{config.key()}.safetensors"
    with _locked(directory / f"induction-{config.key()}.lock"):
        if path.exists():
            model = _load(path, config)
            if verbose:
                print(f"loaded the induction model from {path}")
            return model, config
        if verbose:
            print(f"training the induction model ({config.steps} steps; cached in {path})",
                  flush=True)
        model, stats = train(config)
        _save(model, config, stats, path)
        if verbose:
            print(f"trained in {stats['train_seconds']:.1f}s: induction accuracy "
                  f"{stats['accuracy']:.1%}")
    return model, config


def cached_stats(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The config and training stats stored in a cache file's metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return {"config": json.loads(meta.get("config", "{}")),
            "stats": json.loads(meta.get("stats", "{}"))}


def _save(model: nn.Module, config: Config, stats: dict[str, Any], path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {"config": json.dumps(asdict(config), sort_keys=True),
            "stats": json.dumps(stats, sort_keys=True)}
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def _load(path: Path, config: Config) -> AttnOnlyTransformer:
    from safetensors.torch import load_file

    model = AttnOnlyTransformer(config)
    model.load_state_dict(load_file(str(path)))
    return model.eval()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (POSIX ``flock``; no lock where that is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
