"""Static int8 quantization of a model with the block: both backends agree with the float model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cafusion.integrations.quantize import quantize_int8
from cafusion.models.small_cnn import SmallCNN


def _model_and_data() -> tuple[SmallCNN, torch.Tensor]:
    torch.manual_seed(0)
    return SmallCNN(1, 10).eval(), torch.randn(64, 1, 8, 8)


def test_pt2e_agrees_with_float() -> None:
    model, x = _model_and_data()
    q = quantize_int8(model, x, "pt2e")
    with torch.no_grad():
        assert (q(x).argmax(1) == model(x).argmax(1)).float().mean() > 0.9


def test_onnx_agrees_and_writes_file(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model, x = _model_and_data()
    path = quantize_int8(model, x, "onnx", out=tmp_path / "q.onnx")
    got = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        assert (torch.from_numpy(got).argmax(1) == model(x).argmax(1)).float().mean() > 0.9


def test_bad_backend_names_argument() -> None:
    model, x = _model_and_data()
    with pytest.raises(ValueError, match="backend"):
        quantize_int8(model, x, "tensorrt")
