"""Static int8 (PT2E and ONNX Runtime) on trained models: accuracy within 1 point, convs and linears in int8.

Two small trained models: the demo's digits SmallCNN (its recipe, 3 epochs) and FCN with the block
on the bundled ItalyPowerDemand (10 epochs). Each is calibrated on its training split and scored
on its test split. Then ``cafusion export`` end to end on a ``cafusion train`` run folder.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

for _extra in ("torchao", "onnxruntime", "aeon", "sklearn"):
    pytest.importorskip(_extra, reason="the int8 and timeseries extras and scikit-learn; the dev environment has them")

import onnxruntime as ort  # noqa: E402

import cafusion.cli.main as cli_main  # noqa: E402
from cafusion.integrations.quantize import int8_ops, load_pt2e, quantize_int8  # noqa: E402
from cafusion.models import FCN, SmallCNN  # noqa: E402
from cafusion.models.checkpoint import save_model  # noqa: E402
from cafusion.training.demo import deterministic, load_digits, train_one  # noqa: E402
from cafusion.training.ucr import load_ucr  # noqa: E402

Trained = tuple[nn.Module, Tensor, Tensor, Tensor]  # model, calibration (train split), test x, test y
# Every conv and every linear runs int8: SmallCNN has 2 convs, FCN 3; each softmax block runs its MLP
# once on the stacked avg and max rows (2 linears) and its router once (2 linears), plus the head.
EXPECTED = {"digits": {"conv": 2, "linear": 2 * 4 + 1}, "fcn": {"conv": 3, "linear": 3 * 4 + 1}}


@pytest.fixture(scope="module")
def trained() -> dict[str, Trained]:
    from tqdm import tqdm

    digits = load_digits()
    ucr = load_ucr("ItalyPowerDemand")
    with deterministic(1):
        recipe = types.SimpleNamespace(epochs=3, batch_size=64)  # the demo's recipe, fewer epochs
        run = train_one("caft", "caft", {}, 0, digits, recipe, tqdm(disable=True))  # type: ignore[arg-type]
        torch.manual_seed(0)
        fcn = FCN(1, 2, attention="caft")
        opt = torch.optim.Adam(fcn.parameters(), lr=1e-3)
        for _ in range(10):
            fcn.train()
            order = torch.randperm(len(ucr.train.y))
            for idx in (order[i : i + 16] for i in range(0, len(order), 16)):
                loss = F.cross_entropy(fcn(ucr.train.x[idx]), ucr.train.y[idx])
                opt.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
    return {
        "digits": (run.model.eval(), digits.x_train[:512], digits.x_test, digits.y_test),
        "fcn": (fcn.eval(), ucr.train.x, ucr.test.x, ucr.test.y),
    }


def _accuracy(predict: Any, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((predict(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize("name", ["digits", "fcn"])
def test_pt2e_within_one_point_convs_and_linears_int8(name: str, trained: dict[str, Trained], tmp_path: Path) -> None:
    model, calib, x, y = trained[name]
    acc_float = _accuracy(model, x, y)
    assert acc_float > 0.85  # a trained model, not chance
    quantized = quantize_int8(model, calib, "pt2e", out=tmp_path / "q.pt2")
    assert abs(acc_float - _accuracy(quantized, x, y)) <= 0.01
    int8, floats = int8_ops(quantized)
    conv = "conv2d" if name == "digits" else "conv1d"
    assert int8[conv] == EXPECTED[name]["conv"] and int8["linear"] == EXPECTED[name]["linear"]
    assert conv not in floats and "linear" not in floats
    assert floats["softmax"] > 0 and floats["sigmoid"] > 0  # the router's softmax and the gate stay float
    loaded = load_pt2e(tmp_path / "q.pt2")  # the saved program: same outputs, any batch size, int8 weights
    with torch.no_grad():
        torch.testing.assert_close(loaded(x[:5]), quantized(x[:5]))
    program = torch.export.load(str(tmp_path / "q.pt2"))
    tensors = [t for t in [*program.state_dict.values(), *program.constants.values()] if isinstance(t, Tensor)]
    blocks = EXPECTED[name]["conv"]  # a block after every conv: each holds 4 weight matrices, then the head
    assert sum(t.dtype == torch.int8 for t in tensors) >= EXPECTED[name]["conv"] + 4 * blocks + 1
    assert not [t.shape for t in tensors if t.is_floating_point() and t.dim() >= 2]  # no float weight is left


@pytest.mark.parametrize("name", ["digits", "fcn"])
def test_onnx_within_one_point_convs_and_linears_int8(name: str, trained: dict[str, Trained], tmp_path: Path) -> None:
    model, calib, x, y = trained[name]
    path = quantize_int8(model, calib, "onnx", out=tmp_path / "q.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    acc_int8 = _accuracy(lambda xb: torch.from_numpy(session.run(None, {"x": xb.numpy()})[0]), x, y)
    assert abs(_accuracy(model, x, y) - acc_int8) <= 0.01
    int8, floats = int8_ops(path)
    assert int8["Conv"] == EXPECTED[name]["conv"] and int8["Gemm"] == EXPECTED[name]["linear"]
    assert "Conv" not in floats and "Gemm" not in floats
    assert floats["Softmax"] > 0 and floats["Sigmoid"] > 0


def test_onnx_calibration_is_fed_in_chunks_of_batch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import onnxruntime.quantization as ort_quant

    seen: list[tuple[int, ...]] = []

    def record(model_input: str, model_output: str, reader: Any, **kwargs: Any) -> None:
        while (item := reader.get_next()) is not None:
            seen.append(item["x"].shape)

    monkeypatch.setattr(ort_quant, "quantize_static", record)
    quantize_int8(SmallCNN(1, 10, widths=(4, 8)), torch.randn(70, 1, 8, 8), "onnx", out=tmp_path / "q.onnx", batch=32)
    assert seen == [(32, 1, 8, 8), (32, 1, 8, 8), (6, 1, 8, 8)]


def test_pt2e_quantizes_the_composite_of_a_fast_block() -> None:
    """A block built with impl='fast' would export its custom op, opaque to the quantizer: it exports the composite.

    Calibrated on a single sample, the program still takes any batch size.
    """
    model = SmallCNN(1, 10, attention_kwargs={"impl": "fast"}, widths=(4, 8)).eval()
    quantized = quantize_int8(model, torch.randn(1, 1, 8, 8), "pt2e")
    assert int8_ops(quantized)[0]["linear"] == EXPECTED["digits"]["linear"]
    with torch.no_grad():
        assert quantized(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert all(getattr(m, "impl", "fast") == "fast" for m in model.modules() if hasattr(m, "impl"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backend": "tensorrt"}, "backend must be one of"),
        ({"calibration": torch.randn(8, 8)}, "calibration must be a non-empty"),
        ({"calibration": torch.randn(0, 1, 8, 8)}, "calibration must be a non-empty"),
        ({"batch": 0}, "batch must be a positive int"),
        ({"backend": "onnx"}, "out must be given"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict[str, Any], match: str) -> None:
    args = {"model": SmallCNN(1, 10, widths=(4, 8)), "calibration": torch.randn(4, 1, 8, 8), **kwargs}
    with pytest.raises(ValueError, match=match):
        quantize_int8(**args)


def test_int8_ops_refuses_a_float_module() -> None:
    with pytest.raises(TypeError, match="quantized must be"):
        int8_ops(SmallCNN(1, 10))


# -- cafusion export -------------------------------------------------------------------------------
@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``cafusion`` with the export command registered (as the entry point does)."""
    if "cafusion.cli.export" not in cli_main.COMMANDS:
        monkeypatch.setattr(cli_main, "COMMANDS", (*cli_main.COMMANDS, "cafusion.cli.export"))
    return cli_main.main


def test_export_a_train_run_folder_to_pt2e(cli: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    digits = load_digits()
    data = tmp_path / "digits.npz"
    np.savez(data, x=digits.x_train[:300].numpy(), y=digits.y_train[:300].numpy())
    run = tmp_path / "run"
    train = ["train", "--data", str(data), "--epochs", "1", "--widths", "8,16", "--out", str(run), "--no-progress"]
    assert cli(train) == 0
    out = tmp_path / "int8" / "model.pt2"
    args = ["export", str(run), "--int8", "pt2e", "--calibration", str(data), "--out", str(out), "--limit", "64"]
    assert cli(args) == 0
    text = capsys.readouterr().out
    assert "calibrating on 64 samples" in text and "int8: conv2d x2, linear x9" in text and "agree on" in text
    with torch.no_grad():
        assert load_pt2e(out)(digits.x_test[:7]).shape == (7, 10)


@pytest.mark.parametrize(("name", "data"), [("digits", "digits"), ("fcn", "ucr:ItalyPowerDemand")])
def test_export_a_checkpoint_to_onnx(
    cli: Any, trained: dict[str, Trained], tmp_path: Path, name: str, data: str
) -> None:
    model, _, x, y = trained[name]
    ckpt = save_model(model, tmp_path / "model.safetensors")
    out = tmp_path / "model.onnx"
    args = ["export", str(ckpt), "--int8", "onnx", "--calibration", data, "--out", str(out), "--limit", "256"]
    assert cli(args) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    acc_int8 = _accuracy(lambda xb: torch.from_numpy(session.run(None, {"x": xb.numpy()})[0]), x, y)
    assert abs(_accuracy(model, x, y) - acc_int8) <= 0.01


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--int8", "onnx", "--calibration", "digits", "--out", "{tmp}/m.pt2"], "--out must end in .onnx"),
        (["--int8", "pt2e", "--calibration", "digits", "--out", "{tmp}"], "--out must end in .pt2"),
        (["--int8", "onnx", "--calibration", "ucr:ItalyPowerDemand", "--out", "{tmp}/m.onnx"], "2 spatial dim(s)"),
        (["--int8", "onnx", "--calibration", "{tmp}/missing.npz", "--out", "{tmp}/m.onnx"], "does not exist"),
        (["--int8", "onnx", "--calibration", "digits", "--out", "{tmp}/m.safetensors/m.onnx"], "not a writable folder"),
    ],
)
def test_export_bad_input_is_one_line_before_work(
    cli: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    ckpt = save_model(SmallCNN(1, 10, widths=(4, 8)), tmp_path / "m.safetensors")
    assert cli(["export", str(ckpt), *(a.format(tmp=tmp_path) for a in args)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cafusion: error:") and needle in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]  # nothing written


def test_export_missing_checkpoint(cli: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["export", str(tmp_path / "nope.safetensors"), "--int8", "pt2e", "--calibration", "digits"]
    assert cli([*args, "--out", str(tmp_path / "m.pt2")]) == 2
    assert "does not exist" in capsys.readouterr().err
