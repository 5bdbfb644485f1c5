"""Static int8 quantization of a model that contains the block, for CPU deployment.

Two ways: ``backend="pt2e"`` exports with ``torch.export`` (the block exports its portable
composite, not the custom op) and quantizes with torchao's X86 Inductor quantizer;
``backend="onnx"`` exports to ONNX and quantizes with ONNX Runtime (QDQ format). Both calibrate
on ``calibration`` (a batch of real inputs). torchao and onnxruntime are imported lazily: the
``int8`` extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

BACKENDS = ("pt2e", "onnx")
_EXTRA = "install the 'int8' extra: pip install 'cafusion[int8]'"


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"int8 quantization needs {module.split('.')[0]}; {_EXTRA}") from None


def quantize_int8(
    model: nn.Module, calibration: Tensor, backend: str = "pt2e", out: str | Path | None = None, batch: int = 32
) -> Any:
    """Quantize ``model`` statically to int8, calibrated on ``calibration`` (N, C, *spatial).

    pt2e returns the converted ``torch.fx.GraphModule`` (call it like the model); onnx writes the
    quantized model to ``out`` (required) and returns its path.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(calibration, Tensor) or calibration.dim() < 3 or calibration.shape[0] == 0:
        raise ValueError(f"calibration must be a non-empty (N, C, *spatial) tensor, got {type(calibration).__name__}")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    model = model.eval()
    calibration = calibration.float()
    if backend == "pt2e":
        return _pt2e(model, calibration, batch)
    if out is None:
        raise ValueError("out must be given for backend='onnx' (the quantized model is a file)")
    return _onnx(model, calibration, Path(out), batch)


def _pt2e(model: nn.Module, calibration: Tensor, batch: int) -> Any:
    _require("torchao")
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    example = (calibration[:batch],)
    batch_dim = torch.export.Dim("batch", min=1, max=max(1024, calibration.shape[0]))
    exported = torch.export.export(model, example, dynamic_shapes=({0: batch_dim},)).module()
    prepared = prepare_pt2e(exported, quantizer)  # type: ignore[arg-type]
    with torch.no_grad():
        for start in range(0, calibration.shape[0], batch):
            prepared(calibration[start : start + batch])
    return convert_pt2e(prepared)


def _onnx(model: nn.Module, calibration: Tensor, out: Path, batch: int) -> Path:
    ort_quant = _require("onnxruntime.quantization")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        float_path = Path(tmp) / "float.onnx"
        export_onnx(model, calibration[:1], float_path)
        pre = Path(tmp) / "pre.onnx"
        ort_quant.quant_pre_process(str(float_path), str(pre))
        chunks = [calibration[s : s + 1].numpy() for s in range(0, min(calibration.shape[0], 256))]

        class Reader(ort_quant.CalibrationDataReader):  # type: ignore[misc,name-defined]
            def __init__(self) -> None:
                self.items = iter({"x": c} for c in chunks)

            def get_next(self) -> Any:
                return next(self.items, None)

        ort_quant.quantize_static(
            str(pre),
            str(out),
            Reader(),
            quant_format=ort_quant.QuantFormat.QDQ,
            activation_type=ort_quant.QuantType.QUInt8,
            weight_type=ort_quant.QuantType.QInt8,
        )
    return out


def export_onnx(model: nn.Module, example: Tensor, path: str | Path) -> Path:
    """Float ONNX export with a dynamic batch dimension; input ``x``, output ``logits``."""
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
