"""Every code example of the seeds' PyPI page and README, run against lens.

``import lens as tl`` stands for ``import torchlens as tl`` and ``tests.models.seeds.AlexNet``
for torchvision's (not installed). Each test keeps the example's code as written and
asserts what the seed shows next to it, checked against plain PyTorch where a value is
shown. The README's 1.x names (``log_forward_pass``, ``layers_to_save``, ``vis_opt``,
``tensor_contents``, ``func_call_stack``) run as their 2.x spellings from the PyPI page,
which lens follows. Deeper checks of each feature live in the feature's own tests.
"""

from __future__ import annotations

import inspect
import re

import pytest
import torch
from torch import nn

import lens as tl
from tests.models import get
from tests.models.seeds import AlexNet, SimpleRecurrent


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return AlexNet().eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(1, 3, 224, 224)


@pytest.fixture(scope="module")
def log(model: nn.Module, x: torch.Tensor) -> tl.Trace:
    return tl.trace(model, x)  # one call -- full graph + all activations


@pytest.fixture
def small() -> tuple[nn.Module, torch.Tensor]:
    """torchvision's AlexNet layer order at a 64x64 input: the same labels, cheaper."""
    model, (x,), _ = get("alexnet_small").build()
    return model, x[:1]


def _module_out(model: nn.Module, address: str, x: torch.Tensor) -> torch.Tensor:
    """Ground truth: the module's output by a plain forward hook, cloned at once (the next
    in-place relu would overwrite it)."""
    seen = []
    handle = model.get_submodule(address).register_forward_hook(
        lambda m, i, o: seen.append(o.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


# --------------------------------------------------------------- PyPI page: Quickstart
def test_quickstart_summary_shows_the_module_table_counts_and_flops(log, model):
    text = log.summary()  # print(log.summary())  # module table, op count, FLOPs
    assert text.startswith("Model: AlexNet")
    rows = {cells[0]: cells[1:3] for line in text.splitlines() if line.startswith("| ")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}
    assert rows["features (Sequential)"] == ["[1,256,6,6]", "2.5 M"]
    assert rows["avgpool (AdaptiveAvgPool2d)"] == ["[1,256,6,6]", "0"]
    assert rows["classifier (Sequential)"] == ["[1,1000]", "58.6 M"]
    assert rows["input_1"] == ["[1,3,224,224]", "0"] and rows["output_1"] == ["[1,1000]", "-"]
    n = sum(p.numel() for p in model.parameters())
    assert n == 61_100_840 and f"Params: {n:,} unique; trainable: {n:,}" in text
    assert "Ops: 22 total" in text and "Edges: 23 total" in text
    assert "Forward FLOPs: 1.4 GFLOPs MACs: " in text


def test_index_by_name_module_path_ordinal_short_name(log, model, x):
    assert log["relu_1_2"].out.shape == torch.Size([1, 64, 55, 55])
    assert torch.equal(log["relu_1_2"].out, _module_out(model, "features.1", x))
    assert log["features.6"].out.shape == torch.Size([1, 384, 13, 13])
    assert log[7].func_name == "conv2d"
    assert log["conv2d_3"] == log["features.6"] == log[7] == log["conv2d_3_7"]
    assert torch.equal(log["conv2d_3"].out, _module_out(model, "features.6", x))
    assert log[-1].layer_label == "output_1"


def test_draw_writes_the_graph_unrolled_by_default_or_rolled(log, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    default = log.draw()  # unrolled by default
    unrolled = log.draw(vis_mode="unrolled")
    rolled = log.draw("rolled.svg", vis_mode="rolled")
    assert default == unrolled and tmp_path.joinpath(default).stat().st_size > 0
    assert tmp_path.joinpath(rolled).stat().st_size > 0


# ---------------------------------------------------- 1. Flexible feature extraction
def test_save_only_relu_activations(small):
    model, x = small
    log = tl.trace(model, x, save=tl.func("relu"))
    assert {op.type for op in log.ops if op.payload is not None and not op.is_input} == {"relu"}
    assert torch.equal(log["relu_1_2"].out, _module_out(model, "features.1", x))


class _EncoderNet(nn.Module):
    """The example's module names: 'encoder', and 'layer1'..'layer3' (ResNet-style)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.layer1, self.layer2, self.layer3 = (nn.Sequential(nn.Linear(8, 8), nn.Tanh())
                                                 for _ in range(3))

    def forward(self, x):
        return self.layer3(self.layer2(self.layer1(self.encoder(x))))


def test_save_a_submodule_and_halt_after_it():
    torch.manual_seed(0)
    model, x = _EncoderNet(), torch.randn(2, 4)
    log = tl.trace(model, x, save=tl.in_module("encoder"))
    saved = [op for op in log.ops if op.payload is not None and not op.is_input]
    assert {op.module for op in saved} == {"encoder.0", "encoder.1"}
    assert torch.equal(log["encoder"].out, _module_out(model, "encoder", x))
    # Stop capture early (can be faster than a plain forward pass)
    log = tl.trace(model, x, save=tl.in_module("layer2"), halt=tl.in_module("layer2"))
    assert log.halted  # right after the first op inside layer2: its Linear
    saved = [op for op in log.ops if op.payload is not None and not op.is_input]
    assert [(op.type, op.module) for op in saved] == [("linear", "layer2.0")]
    assert torch.equal(saved[0].out, _module_out(model, "layer2.0", x))
    assert not any(op.module and op.module.startswith("layer3") for op in log.ops)


def test_save_convs_followed_by_relu_with_a_lookback_window(small):
    model, x = small
    conv_before_relu = tl.func("conv2d") & tl.followed_by(tl.func("relu"))
    log = tl.trace(model, x, save=conv_before_relu,
                   lookback=4, lookback_payload_policy="detached_raw")
    saved = [op.label for op in log.ops if op.payload is not None and not op.is_input]
    assert saved == [op.label for op in log.ops if op.type == "conv2d"]  # each feeds a relu
    assert torch.equal(log["conv2d_3_7"].out, _module_out(model, "features.6", x))


def test_record_then_materialize_and_pluck(small):
    model, x = small
    recording = tl.record(model, x, save=tl.func("relu"))
    trace = recording.to_trace()
    act = tl.pluck(model, x, "relu_1_2")  # returns tensor directly
    truth = _module_out(model, "features.1", x)
    assert torch.equal(trace["relu_1_2"].out, truth) and torch.equal(act, truth)


def test_extract_dataset_over_a_list_of_samples(small, tmp_path, monkeypatch):
    model, _ = small
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(2)
    dataset = [torch.rand(3, 64, 64) for _ in range(5)]
    tl.extract_dataset(model, dataset, layers=["relu_1_2", "conv2d_3_7"],
                       batch_size=32, output_dir="activations/", progress=False)
    acts = tl.load_dataset_activations("activations/")
    batch = torch.stack(dataset)
    assert torch.equal(acts["relu_1_2"], _module_out(model, "features.1", batch))
    assert torch.equal(acts["conv2d_3_7"], _module_out(model, "features.6", batch))


def test_save_and_load_traces_portably(small, tmp_path, monkeypatch):
    model, x = small
    monkeypatch.chdir(tmp_path)
    log = tl.trace(model, x)
    tl.save(log, "my_trace")
    loaded = tl.load("my_trace")
    assert loaded.labels == log.labels
    assert torch.equal(loaded["conv2d_3_7"].out, log["conv2d_3_7"].out)


# -------------------------------------------------------- 2. Forward AND backward pass
def test_gradients_per_op(model):
    torch.manual_seed(3)
    x = torch.randn(1, 3, 224, 224, requires_grad=True)
    log = tl.trace(model, x, save_grads=True)
    log.log_backward(log[log.output_layers[0]].out.sum())
    grad = log["relu_1_2"].grad  # gradient tensor flowing through that op
    assert grad.shape == torch.Size([1, 64, 55, 55])
    kept: list[torch.Tensor] = []

    def keep(module: nn.Module, args: object, out: torch.Tensor) -> None:
        out.retain_grad()
        kept.append(out)

    handle = model.features[1].register_forward_hook(keep)
    try:
        model(x).sum().backward()
    finally:
        handle.remove()
    torch.testing.assert_close(grad, kept[0].grad)


def test_gradients_narrowed_by_a_selector(small):
    model, x = small
    x = x.clone().requires_grad_()
    log = tl.trace(model, x, save_grads=tl.func("relu"))
    log.log_backward(log[log.output_layers[0]].out.sum())
    assert log["relu_1_2"].grad is not None and log["conv2d_1_1"].grad is None


# -------------------------------------------------------- 3. Vast metadata per operation
def test_full_print_of_an_op(log):
    text = str(log["conv2d_3_7"])  # print(log['conv2d_3_7'])
    lower = text.lower()
    assert text.startswith("Layer conv2d_3_7, operation ")
    assert "shape=(1, 384, 13, 13), dtype=torch.float32, size=253.5 KB" in text
    assert "parent layers: maxpool2d_2_6" in lower and "child layers: relu_3_8" in lower
    assert "with shape (384, 192, 3, 3), (384,); 663936 params total" in text
    assert "Function: conv2d" in text and "Computed inside module: features.6:1" in text
    assert "out_channels=384, in_channels=192, kernel_size=(3, 3)" in text
    assert "padding=(1, 1)" in text and "Time elapsed: " in text
    keys = "-17, 7, conv2d_3, conv2d_3:1, conv2d_3_7, conv2d_3_7:1, features.6, features.6:1"
    assert f"Lookup keys: {keys}" in text
    assert str(log["features.6"]) == str(log[7]) == text  # README: by module, by index


def test_call_stack_frames_have_file_line_and_function(model, x):
    log = tl.trace(model, x, code_context=True)
    loc = log["conv2d_3_7"].code_context[0]
    lines, start = inspect.getsourcelines(AlexNet.forward)
    line = start + next(i for i, t in enumerate(lines) if "SEED-FEATURES" in t)
    assert (loc.file, loc.line_number, loc.func_name) == (
        inspect.getsourcefile(AlexNet), line, "forward")
    # README 1.x: model_history['conv2d_3'].func_call_stack[k] shows the source around it
    assert "x = self.features(x)" in log["conv2d_3"].code_context[0].code


def test_metadata_as_pandas(log, model):
    df = log.to_pandas()  # one row per op
    params_df = log.params.to_pandas()
    modules_df = log.modules.to_pandas()
    assert list(df["label"]) == log.labels
    assert params_df["numel"].sum() == sum(p.numel() for p in model.parameters())
    assert {a for a, _ in model.named_modules() if a} <= set(modules_df["address"])


# ------------------------------------------------------------ 4. Automatic visualization
def test_simple_recurrent_second_pass_and_rolled_view(tmp_path):
    torch.manual_seed(0)
    model = SimpleRecurrent()  # fc = Linear(in_features=5, out_features=5), 4 loops
    x = torch.randn(6, 5)
    log = tl.trace(model, x)
    with torch.no_grad():
        second = model.fc((model.fc(x) + 1) * 2)
    assert torch.equal(log["linear_1:2"].out, second)  # second pass of the linear layer
    rolled = tmp_path.joinpath(log.draw(tmp_path / "rolled.svg", vis_mode="rolled"))
    unrolled = tmp_path.joinpath(log.draw(tmp_path / "unrolled.svg", vis_mode="unrolled"))
    nodes = [len(re.findall(r'class="node"', p.read_text())) for p in (rolled, unrolled)]
    assert nodes[0] < nodes[1]  # the rolled view collapses the 4 passes


# ------------------------------------------------------------------ 5. Interventions
def test_zero_ablate_and_scale_relus_during_capture(small):
    model, x = small
    ablated = tl.trace(model, x, save=tl.func("relu"),
                       intervene=tl.when(tl.func("relu"), tl.zero_ablate()))
    assert ablated["relu_1_2"].out.abs().max() == 0  # tensor(0.)
    scaled = tl.trace(model, x, save=tl.func("relu"),
                      intervene=tl.when(tl.func("relu"), tl.scale(0.5)))
    torch.testing.assert_close(scaled["relu_1_2"].out,
                               0.5 * _module_out(model, "features.1", x))


def test_fork_replay_rerun_and_find_sites(small):
    model, x = small
    log = tl.trace(model, x, intervention_ready=True)
    sites = log.find_sites(tl.func("relu"))
    assert sites[0] == "relu_1_2" and all(s.startswith("relu_") for s in sites)
    replayed = log.fork().intervene("relu_1_2", tl.zero_ablate()).replay()
    rerun = log.fork().intervene("relu_1_2", tl.zero_ablate()).rerun(model, x)
    truth = _ablated_output(model, x)  # ground truth: a hook zeroes features.1
    torch.testing.assert_close(replayed[-1].out, truth)
    torch.testing.assert_close(rerun[-1].out, truth)


def _ablated_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    handle = model.features[1].register_forward_hook(lambda m, i, o: torch.zeros_like(o))
    try:
        with torch.no_grad():
            return model(x)
    finally:
        handle.remove()


def test_bundle_compares_runs_side_by_side(small):
    model, x = small
    clean_log = tl.trace(model, x, save=tl.func("relu"))
    patched_log = tl.trace(model, x, save=tl.func("relu"),
                           intervene=tl.when(tl.func("relu"), tl.scale(0.5)))
    bundle = tl.bundle({"clean": clean_log, "patched": patched_log}, baseline="clean")
    table = bundle.compare_at(tl.func("relu"))
    assert list(table.index) == clean_log.find_sites(tl.func("relu"))
    cosine = nn.functional.cosine_similarity  # the default metric, computed by hand
    for site in table.index:
        want = cosine(patched_log[site].out.detach().flatten(),
                      clean_log[site].out.detach().flatten(), dim=0)
        assert table.loc[site, "patched"] == pytest.approx(float(want), abs=1e-6)
    assert table["patched"].min() < 0.99  # halving every relu bends later directions


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        return x + self.attn(x, x, x, need_weights=False)[0]


class _ViT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_Block(), _Block()])
        self.lstm = nn.LSTM(8, 6, batch_first=True)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.lstm(x)[0]


def test_facets_for_attention_heads_and_lstm_states():
    torch.manual_seed(0)
    vit_model, x = _ViT().eval(), torch.randn(1, 5, 8)
    log = tl.trace(vit_model, x)
    q = log.modules["blocks.0.attn"].facets["q"]  # query vectors, per head
    attn = vit_model.blocks[0].attn
    with torch.no_grad():
        want = nn.functional.linear(x, attn.in_proj_weight[:8], attn.in_proj_bias[:8])
    torch.testing.assert_close(q[:, 0], want.view(1, 5, 2, 4)[:, :, 0])  # head 0
    h_n = log.modules["lstm"].facets["h_n"]  # LSTM final hidden state
    seen = []
    handle = vit_model.lstm.register_forward_hook(lambda m, i, o: seen.append(o[1][0]))
    with torch.no_grad():
        vit_model(x)
    handle.remove()
    torch.testing.assert_close(h_n, seen[0])


# ----------------------------------------------------------------- Compatibility section
def test_compat_report_prints_as_markdown(log, model, x):
    compat = tl.compat.report(model, x)
    text = compat.to_markdown()  # print(compat.to_markdown())
    assert compat.ok and "| wrapper | pass |" in text and "| trace | pass |" in text


# ----------------------------------------------------- README (1.x names, 2.x spelling)
def test_readme_layers_to_save_lists_the_saved_layers():
    torch.manual_seed(0)
    alexnet = AlexNet()  # torchvision.models.alexnet(): training mode, dropout recorded
    x = torch.rand(1, 3, 224, 224)
    # tl.log_forward_pass(alexnet, x, vis_opt='unrolled',
    #                     layers_to_save=['conv2d_3_7', 'features', -5, 'linear'])
    model_history = tl.trace(alexnet, x, save=["conv2d_3_7", "features", -5, "linear"])
    saved = [op.label for op in model_history.ops if op.payload is not None and not op.is_input]
    assert saved == ["conv2d_3_7", "maxpool2d_3_13", "linear_1_17", "dropout_2_19",
                     "linear_2_20", "linear_3_22"]


def test_readme_api_reference_equivalents(small, tmp_path):
    model, x = small
    metadata = tl.trace(model, x, save=False)  # get_model_metadata(model, input)
    assert metadata["conv2d_3_7"].shape == (1, 48, 3, 3)
    assert metadata["conv2d_3_7"].payload is None
    path = tl.show_graph(model, x, path=tmp_path / "g.svg")  # show_model_graph
    assert tmp_path.joinpath(path).stat().st_size > 0
    assert tl.validate(model, x).ok  # validate_model_activations(...)
