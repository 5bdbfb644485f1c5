"""``cafusion export CHECKPOINT --int8 {pt2e,onnx} --calibration DATA --out PATH``: a static int8 model.

Loads a saved model (a .safetensors checkpoint with its .json sidecar, or a 'cafusion train' run
folder), calibrates the int8 activation ranges on up to --limit samples of DATA and writes the
quantized model:

- pt2e: torch.export + torchao's X86 Inductor quantizer, saved with torch.export.save (.pt2). Load
  it with cafusion.integrations.quantize.load_pt2e (torchao must be installed) and run it through
  torch.compile for the int8 kernels.
- onnx: ONNX export + ONNX Runtime static quantization, QDQ format (.onnx); input 'x', output 'logits'.

Both take any batch size and the calibration samples' shape otherwise. Convolutions and linears
(the attention block's MLP and router included) run in int8; pooling, softmax, temperature, gate
and the channel rescale stay float. The command prints which operators run int8 and how often the
int8 model agrees with the float one on the calibration samples.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from cafusion.cli.demo import positive_int
from cafusion.cli.errors import CLIError

BACKENDS = ("pt2e", "onnx")
SUFFIX = {"pt2e": ".pt2", "onnx": ".onnx"}
NEEDS = {"pt2e": "torchao.quantization.pt2e", "onnx": "onnxruntime.quantization"}


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="quantize a saved model to static int8 (PT2E program or ONNX) for CPU deployment",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="a .safetensors model with its .json sidecar, or a training run folder")
    p.add_argument("--int8", required=True, choices=BACKENDS, help="quantization path")
    p.add_argument(
        "--calibration",
        required=True,
        metavar="DATA",
        help="'digits' (the demo's training split) or a data path that 'cafusion train' accepts",
    )
    p.add_argument("--out", required=True, metavar="PATH", help="the int8 model: .pt2 (pt2e) or .onnx (onnx)")
    p.add_argument("--limit", type=positive_int, default=512, help="calibration samples at most; default: 512")
    p.add_argument("--batch-size", type=positive_int, default=32, help="calibration batch; default: 32")
    p.set_defaults(func=run)


def check_out(path: str, backend: str) -> Path:
    """The output path, if it has the backend's suffix and its folder can be made and written; else one line.

    Nothing is created here: the folder is made only once every input has been checked.
    """
    out = Path(path)
    if out.suffix != SUFFIX[backend]:
        raise CLIError(f"--out must end in {SUFFIX[backend]} for --int8 {backend}, got {path!r}", code=2)
    if out.is_dir():
        raise CLIError(f"--out {path!r} is a folder; give the file to write", code=2)
    existing = out.parent.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise CLIError(f"--out {path!r}: {str(existing)!r} is not a writable folder", code=2)
    return out


def calibration_samples(spec: str, name: str, config: dict[str, Any], limit: int) -> tuple[Any, str]:
    """(x, description): up to ``limit`` samples of ``spec`` in a fixed random order, checked against the model.

    ``name``/``config``: the model's class name and constructor arguments.
    """
    import torch

    from cafusion.cli.inspect import check_fits, load_data

    data, source = load_data(spec, "--calibration", digits_split="train")
    if data.lengths is not None:
        raise CLIError(
            f"--calibration {spec!r} holds series of unequal lengths; the int8 model takes fixed-length input",
            code=2,
        )
    x = data.x
    check_fits(x, name, config, f"--calibration {source}")
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:limit]
    return x[order], f"{len(order)} samples of {source}"


def run(args: argparse.Namespace) -> int:
    out = check_out(args.out, args.int8)  # first: a bad path fails before any import or work

    from cafusion.cli.inspect import load_any
    from cafusion.integrations import quantize

    quantize.require(NEEDS[args.int8])
    model, name, kwargs = load_any(args.checkpoint)
    x, source = calibration_samples(args.calibration, name, kwargs, args.limit)
    print(f"{args.checkpoint}: {name}; calibrating on {source}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = quantize.quantize_int8(model, x, args.int8, out=out, batch=args.batch_size)
    agree = agreement(model, result, x, args.int8, args.batch_size)
    int8, floats = quantize.int8_ops(result if args.int8 == "pt2e" else out)
    print(f"int8: {_counts(int8)}")
    print(f"float: {_counts(floats)}")
    print(f"int8 and float predictions agree on {100 * agree:.2f}% of the calibration samples")
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    return 0


def agreement(model: Any, result: Any, x: Any, backend: str, batch: int) -> float:
    """Share of ``x`` on which the int8 model predicts the float model's class."""
    import torch

    predict = result
    if backend == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(result), providers=["CPUExecutionProvider"])

        def predict(xb: Any) -> Any:
            return torch.from_numpy(session.run(None, {"x": xb.numpy()})[0])

    hits = 0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            xb = x[i : i + batch]
            hits += int((predict(xb).argmax(1) == model(xb).argmax(1)).sum())
    return hits / int(x.shape[0])


def _counts(counts: Any) -> str:
    return ", ".join(f"{op} x{n}" for op, n in sorted(counts.items())) or "none"
