"""``tl.compat.report``: each row's status matches a fact the test builds into the model."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import lens as tl

CONCERNS = ["wrapper", "compiled parts", "module kinds", "fast paths", "parameter sharing",
            "devices", "trace"]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()


def _script(module: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():  # torch.jit.script is deprecated in recent torch
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(module)


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.out = nn.Linear(4, 10, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(ids))


class _ScriptedPart(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = _script(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(x))


class _Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x)[0]


class _Rnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 6, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


def test_a_plain_mlp_passes_every_row_and_renders():
    rep = tl.compat.report(_mlp(), torch.randn(3, 4))
    assert [r.concern for r in rep] == CONCERNS
    assert {r.status for r in rep} == {"pass"} and rep.ok
    assert "3 module call(s)" in rep["trace"].detail  # two Linear and one ReLU ran
    md = rep.to_markdown().splitlines()
    assert md[2] == "| concern | status | detail | workaround |"
    assert [line.split(" | ")[0] for line in md[4:]] == [f"| {c}" for c in CONCERNS]
    assert all(c in str(rep) for c in CONCERNS) and "Sequential" in str(rep)
    assert rep._repr_html_().count("<tr>") == len(CONCERNS) + 1
    with pytest.raises(KeyError, match="the rows are: wrapper"):
        rep["wrappers"]


def test_tied_weights_are_named_and_counted_once():
    model = _Tied()
    every = dict(model.named_parameters(remove_duplicate=False))
    assert every["out.weight"] is every["emb.weight"]  # the fact the row must find
    row = tl.compat.report(model, torch.tensor([[1, 2, 3]]))["parameter sharing"]
    assert row.status == "pass"
    assert "emb.weight = out.weight" in row.detail and f"{10 * 4:,} unique" in row.detail
    untied = tl.compat.report(_mlp(), torch.randn(3, 4))["parameter sharing"]
    assert untied.detail == "No parameter is shared."


def test_a_scripted_submodule_is_unsupported_and_tracing_says_where():
    model = _ScriptedPart()
    rep = tl.compat.report(model, torch.randn(2, 4))
    assert rep["compiled parts"].status == "unsupported" and not rep.ok
    assert "'enc' (RecursiveScriptModule)" in rep["compiled parts"].detail
    assert "model.enc = " in rep["compiled parts"].workaround
    assert rep["trace"].status == "unsupported" and "ModelTypeError" in rep["trace"].detail
    with pytest.raises(tl.ModelTypeError, match="Submodule 'enc' is a TorchScript module"):
        tl.trace(model, torch.randn(2, 4))


def test_a_scripted_model_is_an_unsupported_wrapper_with_nothing_traced():
    rep = tl.compat.report(_script(_mlp()), torch.randn(3, 4))
    assert rep["wrapper"].status == "unsupported" and "TorchScript" in rep["wrapper"].detail
    assert rep["trace"].status == "not_tested"


def test_multihead_attention_is_one_op_and_its_fast_path_agrees():
    torch.manual_seed(0)
    model, x = _Attn().eval(), torch.randn(2, 3, 8)
    types = {op.type for op in tl.trace(model, x).modules["attn"].ops}
    assert "multiheadattentionforward" in types and not types & {"softmax", "matmul", "bmm"}
    rep = tl.compat.report(model, x)
    assert rep["module kinds"].status == "pass"
    assert "'attn' (MultiheadAttention): multiheadattentionforward" in rep["module kinds"].detail
    assert rep["fast paths"].status == "pass" and "unfused path of attn" in rep["fast paths"].detail
    assert "training mode" in tl.compat.report(model.train(), x)["fast paths"].detail


def test_an_lstm_is_one_op_per_call():
    torch.manual_seed(0)
    model, x = _Rnn().eval(), torch.randn(2, 5, 4)
    types = {op.type for op in tl.trace(model, x).modules["rnn"].ops}
    assert "lstm" in types and not types & {"sigmoid", "tanh", "linear"}
    row = tl.compat.report(model, x)["module kinds"]
    assert row.status == "pass" and "'rnn' (LSTM): lstm" in row.detail


def test_a_padded_encoder_fast_path_differs_from_the_traced_path():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    model = nn.TransformerEncoder(layer, 1, enable_nested_tensor=True).eval()
    x, pad = torch.randn(2, 5, 8), torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    with warnings.catch_warnings(), torch.no_grad():  # torch warns once per process
        warnings.filterwarnings("ignore", "The PyTorch API of nested tensors", UserWarning)
        fast = model(x, src_key_padding_mask=pad)
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            slow = model(x, src_key_padding_mask=pad)
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
    assert not torch.allclose(fast, slow, atol=1e-3)  # the fact: the two paths differ
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The PyTorch API of nested tensors", UserWarning)
        rep = tl.compat.report(model, x, input_kwargs={"src_key_padding_mask": pad})
    assert rep["fast paths"].status == "unsupported" and not rep.ok
    assert "set_fastpath_enabled(False)" in rep["fast paths"].workaround
    plain = tl.compat.report(model, x)  # no padding: the fused path gives the same numbers
    assert plain["fast paths"].status == "pass"


def test_data_parallel_on_cpu_traces_the_module_in_this_thread():
    model = nn.DataParallel(_mlp())
    assert model.device_ids == []  # no GPU: forward calls model.module directly
    rep = tl.compat.report(model, torch.randn(3, 4))
    assert rep["wrapper"].status == "pass" and rep.ok
    modules = {op.module for op in tl.trace(model, torch.randn(3, 4)).ops if op.module}
    assert modules == {"module.0", "module.1", "module.2"}


class OptimizedModule(nn.Module):
    """torch.compile's wrapper as the report recognises it (same class name, the eager
    module in ``_orig_mod``); running its forward would be a bug in the report."""

    def __init__(self, mod: nn.Module) -> None:
        super().__init__()
        self._orig_mod = mod

    def forward(self, *args: object) -> None:
        raise AssertionError("the report must not run the compiled wrapper")


class FullyShardedDataParallel(nn.Module):
    """FSDP as the report recognises it: by class name."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


@pytest.mark.parametrize("source, cls", [
    ("_dynamo/eval_frame.py", "class OptimizedModule(torch.nn.Module)"),
    ("distributed/fsdp/fully_sharded_data_parallel.py", "class FullyShardedDataParallel("),
])
def test_the_recognised_class_names_are_torchs_own(source, cls):
    text = (Path(torch.__file__).parent / source).read_text()  # read, never imported
    assert cls in text
    assert "self._orig_mod = mod" in text or "FullyShardedDataParallel" in cls


def test_a_compiled_wrapper_is_unsupported_and_its_eager_module_is_checked():
    rep = tl.compat.report(OptimizedModule(_mlp()), torch.randn(3, 4))
    assert rep["wrapper"].status == "unsupported"
    assert rep["wrapper"].workaround == "tl.trace(model._orig_mod, ...)"
    assert rep["trace"].status == "pass"
    fsdp = tl.compat.report(FullyShardedDataParallel(_mlp()), torch.randn(3, 4))
    assert fsdp["wrapper"].status == "unsupported" and "FSDP" in fsdp["wrapper"].detail
    assert fsdp["trace"].status == "not_tested"


def test_meta_tensors_are_reported_as_shape_only():
    with torch.device("meta"):
        model = _mlp()
    row = tl.compat.report(model, torch.randn(3, 4, device="meta"))["devices"]
    assert row.status == "pass" and "Devices: meta" in row.detail and "shapes only" in row.detail
    assert "meta" not in tl.compat.report(_mlp(), torch.randn(3, 4))["devices"].detail
