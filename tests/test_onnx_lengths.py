"""ONNX export of a small 1D model with ``lengths`` as a graph input, checked in onnxruntime.

The model is ``nn.Sequential(1x1 conv, attention)`` (pointwise, so the padding can only leak
through the attention's statistics) run inside ``masking.padding(lengths)``, the way a
user threads lengths through a model that passes one tensor. Both exporters (TorchScript-based and
dynamo) must keep the lengths as a live input: onnxruntime at other batch sizes, lengths and
sequence lengths matches PyTorch, and the padding (+1e3) never reaches the real part.
"""

from __future__ import annotations

import io
import warnings

import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn
from torch.export import Dim

import cafusion
from cafusion import masking
from tests.test_export import ours_warned

pytestmark = [
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    pytest.mark.filterwarnings("ignore:# The axis name:UserWarning"),
]

# (batch, time) of the checks; the export saw (2, 10)
SIZES = ((3, 7), (1, 13), (5, 20))


class Padded(nn.Module):
    """body(x) with every cafusion layer inside seeing ``lengths``."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        with masking.padding(lengths):
            out: Tensor = self.body(x)
        return out


def small_model(name: str, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    return Padded(nn.Sequential(nn.Conv1d(3, 8, 1), cafusion.create_attention(name, 8, **kwargs))).eval()


def export(model: nn.Module, exporter: str) -> bytes:
    x, lengths = torch.randn(2, 3, 10), torch.tensor([10, 4])
    if exporter == "dynamo":
        batch, time = Dim("batch", min=1, max=64), Dim("time", min=2, max=512)
        program = torch.onnx.export(
            model, (x, lengths), dynamic_shapes=({0: batch, 2: time}, {0: batch}), dynamo=True, opset_version=18
        )
        assert program is not None
        return program.model_proto.SerializeToString()  # type: ignore[no-any-return]
    f = io.BytesIO()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _torchscript(model, x, lengths, f)
    assert not ours_warned(record), ours_warned(record)
    return f.getvalue()


def _torchscript(model: nn.Module, x: Tensor, lengths: Tensor, f: io.BytesIO) -> None:
    torch.onnx.export(
        model,
        (x, lengths),
        f,
        dynamo=False,
        opset_version=17,
        input_names=["x", "lengths"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch", 2: "time"}, "lengths": {0: "batch"}, "y": {0: "batch", 2: "time"}},
    )


def check(model: nn.Module, model_bytes: bytes) -> None:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert len(names) == 2, f"lengths is not a graph input: inputs {names}"
    gen = torch.Generator().manual_seed(1)
    for batch, time in SIZES:
        lengths = torch.randint(1, time + 1, (batch,), generator=gen)
        lengths[0] = 1 if time > 1 else lengths[0]  # always one short sample
        x = torch.randn(batch, 3, time, generator=gen)
        x = x.masked_fill(torch.arange(time) >= lengths[:, None, None], 1e3)
        (out,) = session.run(None, {names[0]: x.numpy(), names[1]: lengths.numpy()})
        with torch.no_grad():
            expected = model(x, lengths)
            alone = model(x[:1, :, :1], lengths[:1])  # the short sample, unpadded
        torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(torch.from_numpy(out)[:1, :, :1], alone, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("name", ["se", "eca", "cbam"])
def test_baseline_exports_with_lengths_input(name: str, exporter: str) -> None:
    model = small_model(name)
    check(model, export(model, exporter))


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("impl", ["reference", "auto"])
@pytest.mark.parametrize("fusion", ["softmax", "sum"])
def test_drop_in_block_exports_with_lengths_input(fusion: str, impl: str, exporter: str) -> None:
    model = small_model("caft", fusion=fusion, impl=impl, reduction=2, learnable_temperature=True)
    check(model, export(model, exporter))
