"""Static int8 quantization of a model that contains the block, for CPU deployment.

Two ways: ``backend="pt2e"`` exports with ``torch.export`` (the block exports its portable
composite, not the custom op) and quantizes with torchao's X86 Inductor quantizer;
``backend="onnx"`` exports to ONNX (the composite again) and quantizes with ONNX Runtime (QDQ
format). Both calibrate on ``calibration`` (real inputs), fed ``batch`` samples at a time, and
quantize every convolution and linear (the block's MLP and router too); ``int8_ops`` counts which
operators of the result run int8 and which float. torchao and onnxruntime are imported lazily:
the ``int8`` extra. docs/int8.md is the guide.
"""

from __future__ import annotations

import contextlib
import importlib
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cafusion.layers.channel_attention_fusion_t import ChannelAttentionFusionT

BACKENDS = ("pt2e", "onnx")
# what runs int8 in both paths: convolutions and linears (the block's MLP and router included)
_ONNX_INT8 = ("Conv", "Gemm", "MatMul")
_EXTRA = "install the 'int8' extra: pip install 'cafusion[int8]'"
# ops that only move, view or check data: neither "int8" nor "float" compute in an op count
_LAYOUT_OPS = frozenset(
    {"_assert_tensor_metadata", "sym_size", "to", "view", "flatten", "slice", "pad", "cat"}
    | {"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Reshape", "Flatten", "Constant", "Slice"}
    | {"Identity", "Cast", "Pad"}
)


def require(module: str) -> Any:
    """Import an optional module of the int8 extra, or fail with one line naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"int8 quantization needs {module.split('.')[0]}; {_EXTRA}") from None


def quantize_int8(
    model: nn.Module, calibration: Tensor, backend: str = "pt2e", out: str | Path | None = None, batch: int = 32
) -> Any:
    """Quantize ``model`` statically to int8, calibrated on ``calibration`` (N, C, *spatial).

    pt2e returns the converted ``torch.fx.GraphModule`` (call it like the model) and, with
    ``out``, also saves it as an ExportedProgram (``torch.export.save``; read it with
    ``load_pt2e``). onnx writes the quantized model to ``out`` (required) and returns its path.
    The result takes any batch size and the calibration's other dimensions.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(calibration, Tensor) or calibration.dim() < 3 or calibration.shape[0] == 0:
        raise ValueError(f"calibration must be a non-empty (N, C, *spatial) tensor, got {type(calibration).__name__}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    if backend == "onnx" and out is None:
        raise ValueError("out must be given for backend='onnx' (the quantized model is a file)")
    model = model.eval()
    calibration = calibration.detach().float().cpu()
    if backend == "pt2e":
        quantized = _pt2e(model, calibration, batch)
        if out is not None:
            save_pt2e(quantized, calibration[:batch], out)
        return quantized
    assert out is not None
    return _onnx(model, calibration, Path(out), batch)


@contextlib.contextmanager
def composite(model: nn.Module) -> Iterator[None]:
    """Every block runs its composite (plain ATen ops) inside: a quantizer cannot see into the custom op.

    ``impl="auto"`` already exports the composite; this covers blocks built with ``impl="fast"``.
    """
    blocks = [m for m in model.modules() if isinstance(m, ChannelAttentionFusionT)]
    before = [m.impl for m in blocks]
    for m in blocks:
        m.impl = "reference"
    try:
        yield
    finally:
        for m, impl in zip(blocks, before, strict=True):
            m.impl = impl


def batch_dim() -> Any:
    """The exported programs' batch dimension: any size."""
    return torch.export.Dim("batch", min=1)


def _example(x: Tensor, batch: int) -> tuple[Tensor]:
    """Up to ``batch`` rows of x, at least 2: torch.export fixes a dimension traced at size 1."""
    rows = x[:batch]
    return (rows.repeat(2, *([1] * (x.dim() - 1))) if rows.shape[0] == 1 else rows,)


def _pt2e(model: nn.Module, calibration: Tensor, batch: int) -> Any:
    require("torchao")
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    quantizer = _all_convs_and_linears(x86).set_global(x86.get_default_x86_inductor_quantization_config())
    example = _example(calibration, batch)
    with composite(model):
        exported = torch.export.export(model, example, dynamic_shapes=({0: batch_dim()},)).module()
    prepared = prepare_pt2e(exported, quantizer)  # type: ignore[arg-type]
    with torch.no_grad():
        for start in range(0, calibration.shape[0], batch):
            prepared(calibration[start : start + batch])
    converted = convert_pt2e(prepared)
    _drop_unused_attributes(converted)
    return converted


def _all_convs_and_linears(x86: Any) -> Any:
    """The X86 Inductor quantizer, extended to every conv1d/conv2d/linear.

    The stock quantizer finds convs and linears by the module that called them (``nn.Conv2d``,
    ``nn.Linear``, ``nn.Conv1d`` + ReLU), so it skips the block's MLP and router (functional
    linears inside the block) and FCN's convolutions (a Conv1d subclass, then batch norm): those
    are annotated here, each reading int8 input and weights and giving a float output.
    """
    targets = (torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default)

    class Quantizer(x86.X86InductorQuantizer):  # type: ignore[misc]
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().annotate(model)
            config = self.global_config
            for node in model.graph.nodes:
                if node.op != "call_function" or x86.QUANT_ANNOTATION_KEY in node.meta:
                    continue
                if node.target in targets:
                    self._annotate_conv_node_helper(node, False, config)
                elif node.target == torch.ops.aten.linear.default:
                    self._annotate_linear_node_helper(node, False, config)
            return model

    return Quantizer()


def _drop_unused_attributes(gm: torch.fx.GraphModule) -> None:
    """Delete the float weights that convert_pt2e replaced by int8 constants, so a saved file holds only int8.

    Export's dtype checks (``_assert_tensor_metadata``, side effects for dead-code elimination) would
    keep each replaced weight alive; the converted graph is inference-only, so they go first.
    """
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target == torch.ops.aten._assert_tensor_metadata.default:
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in [*gm.named_parameters(), *gm.named_buffers()]:
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(gm.get_submodule(owner), attr)


def save_pt2e(quantized: torch.fx.GraphModule, example: Tensor, path: str | Path) -> Path:
    """Save a converted PT2E model as an ExportedProgram (``.pt2``) with a dynamic batch dimension."""
    program = torch.export.export(quantized, _example(example, 2), dynamic_shapes=({0: batch_dim()},))
    torch.export.save(program, str(path))
    return Path(path)


def load_pt2e(path: str | Path) -> Any:
    """The model ``save_pt2e`` wrote, as a callable module (its quantize ops are registered by torchao)."""
    require("torchao.quantization.pt2e")
    return torch.export.load(str(path)).module()


def _onnx(model: nn.Module, calibration: Tensor, out: Path, batch: int) -> Path:
    ort_quant = require("onnxruntime.quantization")
    chunks = [calibration[s : s + batch].numpy() for s in range(0, calibration.shape[0], batch)]

    class Reader(ort_quant.CalibrationDataReader):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            self.items = iter({"x": c} for c in chunks)

        def get_next(self) -> Any:
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        float_path = Path(tmp) / "float.onnx"
        export_onnx(model, calibration[:1], float_path)
        pre = Path(tmp) / "pre.onnx"
        ort_quant.quant_pre_process(str(float_path), str(pre))
        ort_quant.quantize_static(
            str(pre),
            str(out),
            Reader(),
            quant_format=ort_quant.QuantFormat.QDQ,
            activation_type=ort_quant.QuantType.QUInt8,
            weight_type=ort_quant.QuantType.QInt8,
            op_types_to_quantize=list(_ONNX_INT8),
        )
    return out


def export_onnx(model: nn.Module, example: Tensor, path: str | Path) -> Path:
    """Float ONNX export with a dynamic batch dimension; input ``x``, output ``logits``."""
    with composite(model):
        torch.onnx.export(
            model.eval(),
            (example,),
            str(path),
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    return Path(path)


def int8_ops(quantized: Any) -> tuple[Counter[str], Counter[str]]:
    """(int8, float): per operator type, how many run as int8 kernels and how many compute in float.

    ``quantized``: a converted PT2E GraphModule, a ``load_pt2e`` module, or a quantized ONNX file.
    PT2E: an operator is int8 when its data input is dequantized from int8 (Inductor fuses that
    dequantize, and the weight's, into an int8 conv/linear). ONNX (QDQ): when every non-constant
    input is dequantized and every output quantized (ORT runs that node unit as a QLinear op).
    Quantize/dequantize themselves and data movement (view, slice, pad, cat, shape ops) are not counted.
    """
    if isinstance(quantized, torch.nn.Module):
        graph = getattr(quantized, "graph", None)
        if not isinstance(graph, torch.fx.Graph):
            raise TypeError(f"quantized must be a converted PT2E module, got {type(quantized).__name__}")
        return _fx_ops(graph)
    if isinstance(quantized, (str, Path)):
        return _onnx_ops(Path(quantized))
    raise TypeError(f"quantized must be a PT2E module or an ONNX path, got {type(quantized).__name__}")


def _fx_ops(graph: torch.fx.Graph) -> tuple[Counter[str], Counter[str]]:
    int8: Counter[str] = Counter()
    floats: Counter[str] = Counter()
    for node in graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        name = node.target._opname
        if "quantize" in name or name in _LAYOUT_OPS:
            continue
        first = node.args[0] if node.args else None
        dequantized = isinstance(first, torch.fx.Node) and "dequantize" in str(first.target)
        (int8 if dequantized else floats)[name] += 1
    return int8, floats


def _onnx_ops(path: Path) -> tuple[Counter[str], Counter[str]]:
    """A QDQ node unit (every non-constant input dequantized, every output quantized) is what ORT runs in int8."""
    onnx = require("onnx")
    graph = onnx.load(str(path)).graph
    constants = {t.name for t in graph.initializer}
    producer = {out: node.op_type for node in graph.node for out in node.output}
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    int8: Counter[str] = Counter()
    floats: Counter[str] = Counter()
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or node.op_type in _LAYOUT_OPS:
            continue
        if node.op_type.startswith("QLinear"):
            int8[node.op_type.removeprefix("QLinear")] += 1
            continue
        data = [name for name in node.input if name and name not in constants]
        dq_in = bool(data) and all(producer.get(name) == "DequantizeLinear" for name in data)
        q_out = all(consumers.get(out) and set(consumers[out]) == {"QuantizeLinear"} for out in node.output)
        (int8 if dq_in and q_out else floats)[node.op_type] += 1
    return int8, floats
