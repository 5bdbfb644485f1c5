"""Static int8 on the CPU, both paths: accuracy, size and latency against the float model.

Two trained models with a ChannelAttentionFusionT block after every conv stage: the demo's digits
SmallCNN (the demo's recipe, ``cafusion.training.demo.train_one``) and FCN on the bundled UCR set
ItalyPowerDemand. Each is quantized through PT2E and through ONNX Runtime, calibrated on its
training split, and compared with the float model on the test split:

- accuracy: float model vs the int8 model (PT2E: the converted module; ONNX: an ORT session);
- size: the saved file (PT2E: ``torch.export.save`` of the float and of the int8 program; ONNX:
  the float and the int8 ``.onnx``) and the bytes of the weights inside it;
- latency: median ms per batch of ``--batch`` on ``--threads`` threads, int8 over float (PT2E:
  both programs loaded from their files and run through ``torch.compile`` with freezing, the
  deployment path; ONNX: both files in an ORT CPU session);
- which operators run int8 (``cafusion.integrations.quantize.int8_ops``).

    python scripts/int8.py

Prints a table and writes ``--out``/int8.json. Latency needs a quiet machine to mean much.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cafusion.cli.demo import load_kernels
from cafusion.integrations.quantize import batch_dim, export_onnx, int8_ops, load_pt2e, quantize_int8, save_pt2e
from cafusion.models import FCN
from cafusion.training.demo import deterministic, load_digits, train_one
from cafusion.training.ucr import load_ucr


def digits_model(epochs: int) -> tuple[nn.Module, Tensor, Tensor, Tensor]:
    """(model, calibration x, test x, test y): the demo's SmallCNN with the default block, seed 0."""
    from tqdm import tqdm

    data = load_digits()
    args = types.SimpleNamespace(epochs=epochs, batch_size=64)
    result = train_one("caft", "caft", {}, 0, data, args, tqdm(disable=True))  # type: ignore[arg-type]
    return result.model.eval(), data.x_train, data.x_test, data.y_test


def fcn_model(epochs: int) -> tuple[nn.Module, Tensor, Tensor, Tensor]:
    """FCN with the default block on ItalyPowerDemand's published split: Adam 1e-3, batch 16, seed 0."""
    ucr = load_ucr("ItalyPowerDemand")
    torch.manual_seed(0)
    model = FCN(1, ucr.train.num_classes, attention="caft")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    x, y = ucr.train.x, ucr.train.y
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 16):
            idx = order[i : i + 16]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    return model.eval(), x, ucr.test.x, ucr.test.y


def accuracy(predict: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, batch: int = 256) -> float:
    with torch.no_grad():
        hits = sum(
            int((predict(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(y), batch)
        )
    return hits / len(y)


def median_ms(fn: Callable[[], object], repeats: int = 30, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def compiled(module: Any) -> Any:
    """torch.compile with Inductor freezing: what lowers PT2E's quantize/dequantize pairs to int8 kernels."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return torch.compile(module)


def program_weight_bytes(path: Path) -> int:
    import torchao.quantization.pt2e  # noqa: F401  (registers the quantize ops the program holds)

    program = torch.export.load(str(path))
    tensors = [*program.state_dict.values(), *program.constants.values()]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, Tensor))


def onnx_weight_bytes(path: Path) -> int:
    import onnx
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)


def ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_pt2e(model: nn.Module, calib: Tensor, x: Tensor, y: Tensor, tmp: Path, batch: int) -> dict[str, Any]:
    float_path, int8_path = tmp / "float.pt2", tmp / "int8.pt2"
    program = torch.export.export(model, (calib[:batch],), dynamic_shapes=({0: batch_dim()},))
    torch.export.save(program, str(float_path))
    quantized = quantize_int8(model, calib, "pt2e", batch=batch)
    save_pt2e(quantized, calib[:batch], int8_path)
    loaded = load_pt2e(int8_path)
    xb = x[:batch]
    fast_float, fast_int8 = compiled(torch.export.load(str(float_path)).module()), compiled(loaded)
    with torch.no_grad():
        agree = float((fast_int8(xb).argmax(1) == loaded(xb).argmax(1)).float().mean())
        lat_float = median_ms(lambda: fast_float(xb))
        lat_int8 = median_ms(lambda: fast_int8(xb))
    ops, floats = int8_ops(loaded)
    return {
        "acc_float": accuracy(model, x, y),
        "acc_int8": accuracy(loaded, x, y),
        "compiled_agrees": agree,
        "file_bytes_float": float_path.stat().st_size,
        "file_bytes_int8": int8_path.stat().st_size,
        "weight_bytes_float": program_weight_bytes(float_path),
        "weight_bytes_int8": program_weight_bytes(int8_path),
        "latency_ms_float": lat_float,
        "latency_ms_int8": lat_int8,
        "int8_ops": dict(ops),
        "float_ops": dict(floats),
    }


def run_onnx(
    model: nn.Module, calib: Tensor, x: Tensor, y: Tensor, tmp: Path, batch: int, threads: int
) -> dict[str, Any]:
    float_path, int8_path = tmp / "float.onnx", tmp / "int8.onnx"
    export_onnx(model, calib[:1], float_path)
    quantize_int8(model, calib, "onnx", out=int8_path, batch=batch)
    sessions = {name: ort_session(p, threads) for name, p in (("float", float_path), ("int8", int8_path))}

    def predict(name: str) -> Callable[[Tensor], Tensor]:
        return lambda xb: torch.from_numpy(sessions[name].run(None, {"x": xb.numpy()})[0])

    xb = {"x": np.ascontiguousarray(x[:batch].numpy())}
    ops, floats = int8_ops(int8_path)
    return {
        "acc_float": accuracy(predict("float"), x, y),
        "acc_int8": accuracy(predict("int8"), x, y),
        "file_bytes_float": float_path.stat().st_size,
        "file_bytes_int8": int8_path.stat().st_size,
        "weight_bytes_float": onnx_weight_bytes(float_path),
        "weight_bytes_int8": onnx_weight_bytes(int8_path),
        "latency_ms_float": median_ms(lambda: sessions["float"].run(None, xb)),
        "latency_ms_int8": median_ms(lambda: sessions["int8"].run(None, xb)),
        "int8_ops": dict(ops),
        "float_ops": dict(floats),
    }


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    head = (
        "model", "path", "acc float", "acc int8", "file float", "file int8",
        "weights float", "weights int8", "ms float", "ms int8", "int8/float",
    )  # fmt: skip
    rows = [head]
    for model, paths in results.items():
        for path, r in paths.items():
            rows.append(
                (
                    model,
                    path,
                    f"{100 * r['acc_float']:.2f}%",
                    f"{100 * r['acc_int8']:.2f}%",
                    f"{r['file_bytes_float']:,}",
                    f"{r['file_bytes_int8']:,}",
                    f"{r['weight_bytes_float']:,}",
                    f"{r['weight_bytes_int8']:,}",
                    f"{r['latency_ms_float']:.2f}",
                    f"{r['latency_ms_int8']:.2f}",
                    f"{r['latency_ratio']:.2f}",
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="calibration and latency batch; default: 32")
    parser.add_argument("--threads", type=int, default=1, help="torch and ORT threads; default: 1")
    parser.add_argument("--digits-epochs", type=int, default=12, help="the demo's full recipe; default: 12")
    parser.add_argument("--fcn-epochs", type=int, default=40, help="default: 40")
    parser.add_argument("--out", type=Path, default=Path("reports/int8"), help="default: reports/int8")
    args = parser.parse_args()
    load_kernels()  # the training runs the block's CPU kernels; compile them before anything else
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with deterministic(args.threads):
        models = {
            "digits SmallCNN": digits_model(args.digits_epochs),
            "FCN ItalyPowerDemand": fcn_model(args.fcn_epochs),
        }
        for name, (model, calib, x, y) in models.items():
            with tempfile.TemporaryDirectory() as tmp:
                results[name] = {
                    "pt2e": run_pt2e(model, calib, x, y, Path(tmp), args.batch),
                    "onnx": run_onnx(model, calib, x, y, Path(tmp), args.batch, args.threads),
                }
            for r in results[name].values():
                r["latency_ratio"] = r["latency_ms_int8"] / r["latency_ms_float"]
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}; latency: median ms per batch")
    print(table(results))
    for name, paths in results.items():
        for path, r in paths.items():
            print(f"{name} {path}: int8 {r['int8_ops']}; float {r['float_ops']}")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": args.threads, "batch": args.batch}
    path = args.out / "int8.json"
    path.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
