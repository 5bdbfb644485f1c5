"""Export of the drop-in layer, alone and inside a ResNet: ONNX (both exporters), torch.export,
TorchScript (script and trace) and torch.compile(fullgraph=True), with both impls, gates and fusions.

Exports use one input size and are checked at two others (batch and spatial dims both change).
"""

from __future__ import annotations

import io
import itertools
import warnings

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn
from torch.export import Dim
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock, ResNet

import cafusion
from cafusion import ChannelAttentionFusionTLayer
from cafusion.integrations.torchvision import insert_attention

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning"),
    # The input checks compare shapes; under tracing those are tensors, which only costs a warning.
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning:cafusion._validation"),
]

CONFIGS = list(itertools.product(["softmax", "sum"], ["sigmoid", "hardsigmoid"], ["auto", "reference"]))
CONFIG_IDS = ["-".join(c) for c in CONFIGS]
EXAMPLE = (2, 16, 8, 8)
CHECK_SIZES = ((3, 16, 5, 7), (1, 16, 11, 4))
DYNAMIC = ({0: Dim("batch", min=1, max=64), 2: Dim("h", min=1, max=256), 3: Dim("w", min=1, max=256)},)


def make_block(fusion: str, gate: str, impl: str) -> ChannelAttentionFusionTLayer:
    """A block with non-trivial weights; the hardsigmoid configs also use a learnable temperature."""
    torch.manual_seed(0)
    block = ChannelAttentionFusionTLayer(
        16, reduction=4, fusion=fusion, gate=gate, impl=impl, temperature=1.5, learnable_temperature=gate != "sigmoid"
    )
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return block.eval()


def small_resnet(impl: str) -> nn.Module:
    """A one-block-per-stage torchvision ResNet with the block inserted: every stage, a quarter of the export time."""
    torch.manual_seed(0)
    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)
    return insert_attention(model, "caft", impl=impl, learnable_temperature=True).eval()


def run_onnx(model_bytes: bytes, x: Tensor) -> Tensor:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(out)


def check_onnx(model: nn.Module, model_bytes: bytes, sizes: tuple[tuple[int, ...], ...]) -> None:
    proto = onnx.load_from_string(model_bytes)
    onnx.checker.check_model(proto)
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= 17
    for size in sizes:
        x = torch.randn(*size)
        with torch.no_grad():
            expected = model(x)
        torch.testing.assert_close(run_onnx(model_bytes, x), expected, rtol=1e-4, atol=1e-5)


def onnx_dynamo(model: nn.Module, example: Tensor, dynamic: tuple[dict[int, Dim], ...]) -> bytes:
    program = torch.onnx.export(model, (example,), dynamic_shapes=dynamic, dynamo=True, opset_version=18, verbose=False)
    assert program is not None
    return program.model_proto.SerializeToString()  # type: ignore[no-any-return]


def ours_warned(record: list[warnings.WarningMessage]) -> list[str]:
    """TracerWarnings raised from cafusion's own files (the checks must not run while tracing)."""
    return [
        f"{w.filename}:{w.lineno}: {w.message}"
        for w in record
        if issubclass(w.category, torch.jit.TracerWarning) and "cafusion" in w.filename
    ]


def onnx_torchscript(model: nn.Module, example: Tensor) -> bytes:
    f = io.BytesIO()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _onnx_torchscript(model, example, f)
    assert not ours_warned(record), ours_warned(record)
    return f.getvalue()


def _onnx_torchscript(model: nn.Module, example: Tensor, f: io.BytesIO) -> None:
    torch.onnx.export(
        model,
        (example,),
        f,
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch", 2: "h", 3: "w"}, "y": {0: "batch", 2: "h", 3: "w"}},
    )


@pytest.mark.parametrize(("fusion", "gate", "impl"), CONFIGS, ids=CONFIG_IDS)
def test_onnx_dynamo_block(fusion: str, gate: str, impl: str) -> None:
    block = make_block(fusion, gate, impl)
    check_onnx(block, onnx_dynamo(block, torch.randn(*EXAMPLE), DYNAMIC), CHECK_SIZES)


@pytest.mark.parametrize(("fusion", "gate", "impl"), CONFIGS, ids=CONFIG_IDS)
def test_onnx_torchscript_exporter_block(fusion: str, gate: str, impl: str) -> None:
    block = make_block(fusion, gate, impl)
    check_onnx(block, onnx_torchscript(block, torch.randn(*EXAMPLE)), CHECK_SIZES)


@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_onnx_dynamo_resnet(impl: str) -> None:
    model = small_resnet(impl)
    dynamic = ({0: Dim("batch", min=1, max=64), 2: Dim("h", min=32, max=512), 3: Dim("w", min=32, max=512)},)
    model_bytes = onnx_dynamo(model, torch.randn(2, 3, 32, 32), dynamic)
    check_onnx(model, model_bytes, ((3, 3, 40, 48), (1, 3, 64, 33)))


@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_onnx_torchscript_exporter_resnet18(impl: str) -> None:
    torch.manual_seed(0)
    model = insert_attention(resnet18(num_classes=10), "caft_sum", impl=impl, gate="hardsigmoid").eval()
    check_onnx(model, onnx_torchscript(model, torch.randn(2, 3, 32, 32)), ((3, 3, 40, 48), (1, 3, 64, 33)))


@pytest.mark.parametrize(("fusion", "gate", "impl"), CONFIGS, ids=CONFIG_IDS)
def test_torch_export_round_trip(fusion: str, gate: str, impl: str) -> None:
    block = make_block(fusion, gate, impl)
    program = torch.export.export(block, (torch.randn(*EXAMPLE),), dynamic_shapes=DYNAMIC)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer).module()
    for size in CHECK_SIZES:
        x = torch.randn(*size)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), block(x))


@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_exported_program_decomposes_to_aten(impl: str) -> None:
    """Runtimes that take core ATen (ExecuTorch, AOTInductor, other exporters) need the op decomposed."""
    block = make_block("softmax", "sigmoid", impl)
    program = torch.export.export(block, (torch.randn(*EXAMPLE),), dynamic_shapes=DYNAMIC).run_decompositions()
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not [t for t in targets if "cafusion" in t], targets
    x = torch.randn(*CHECK_SIZES[0])
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), block(x))


def grads(module: nn.Module, x: Tensor, out: Tensor) -> list[Tensor]:
    weight = torch.linspace(-1, 1, out.numel()).view_as(out)
    params = [p for p in module.parameters()]
    return list(torch.autograd.grad((out * weight).sum(), [x, *params]))


@pytest.mark.parametrize(("fusion", "gate", "impl"), CONFIGS, ids=CONFIG_IDS)
def test_jit_script_matches_eager_and_saves(fusion: str, gate: str, impl: str) -> None:
    block = make_block(fusion, gate, impl).train()
    scripted = torch.jit.script(block)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    for size in ((3, 16, 7), (2, 16, 5, 6), (2, 16, 3, 4, 2)):
        x = torch.randn(*size, requires_grad=True)
        eager = block(x)
        torch.testing.assert_close(scripted(x), eager)
        torch.testing.assert_close(loaded(x), eager)
        for g_script, g_eager in zip(grads(block, x, scripted(x)), grads(block, x, eager), strict=True):
            torch.testing.assert_close(g_script, g_eager)


@pytest.mark.parametrize(("fusion", "gate", "impl"), CONFIGS, ids=CONFIG_IDS)
def test_jit_trace_generalises_over_batch_and_spatial(fusion: str, gate: str, impl: str) -> None:
    block = make_block(fusion, gate, impl)
    traced = torch.jit.trace(block, torch.randn(*EXAMPLE))
    for size in CHECK_SIZES:
        x = torch.randn(*size)
        torch.testing.assert_close(traced(x), block(x))


@pytest.mark.parametrize(("fusion", "gate", "impl"), CONFIGS, ids=CONFIG_IDS)
def test_compile_fullgraph(fusion: str, gate: str, impl: str) -> None:
    block = make_block(fusion, gate, impl).train()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(block)(torch.randn(*EXAMPLE))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    # AOT autograd (which traces the backward too) on one config per impl and fusion keeps this fast.
    backend = "aot_eager" if gate == "sigmoid" else "eager"
    compiled = torch.compile(block, fullgraph=True, backend=backend, dynamic=True)
    for size in (EXAMPLE, *CHECK_SIZES):
        x = torch.randn(*size, requires_grad=True)
        out = compiled(x)
        torch.testing.assert_close(out, block(x))
        for g_compiled, g_eager in zip(grads(block, x, out), grads(block, x, block(x)), strict=True):
            torch.testing.assert_close(g_compiled, g_eager)


@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_compile_fullgraph_resnet_with_inserted_blocks_and_keep_last(impl: str) -> None:
    """Hooks from insert_attention and keep_last's attribute writes must not break the graph;
    the ResNet's ``out += identity`` on the block's output must work inside the compiled graph too."""
    torch.manual_seed(0)
    model = insert_attention(ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10), "caft", keep_last=True, impl=impl)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(compiled(x), model(x))
    last = model.layer1[0].bn2.attention.last_ca
    assert isinstance(last, Tensor) and last.shape == (2, 64, 1, 1)


@pytest.mark.parametrize("name", ["se", "cbam", "eca", "none", "caft_sum"])
def test_registry_layers_script_export_and_onnx(name: str) -> None:
    torch.manual_seed(0)
    layer = cafusion.create_attention(name, 16).eval()
    x = torch.randn(*CHECK_SIZES[0])
    with torch.no_grad():
        expected = layer(x)
        torch.testing.assert_close(torch.jit.script(layer)(x), expected)
        program = torch.export.export(layer, (torch.randn(*EXAMPLE),), dynamic_shapes=DYNAMIC)
        torch.testing.assert_close(program.module()(x), expected)
    check_onnx(layer, onnx_torchscript(layer, torch.randn(*EXAMPLE)), CHECK_SIZES)
