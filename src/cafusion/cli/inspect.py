"""``cafusion inspect CHECKPOINT``: what each ChannelAttentionFusionT block of a saved model learned.

Prints every block's configuration, its temperature T and its router's output bias (bias_avg -
bias_max > 0 means the router leans to the average path before it sees any input). With ``--data``
it also runs the model over that data and prints each block's fusion diagnostics.
"""

from __future__ import annotations

import argparse
from typing import Any

from cafusion.cli.demo import positive_int
from cafusion.cli.errors import CLIError


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "inspect",
        help="print each attention block's configuration, learned T and router bias",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="a .safetensors model with its .json sidecar, or a training run folder")
    p.add_argument(
        "--data",
        metavar="DATA",
        default=None,
        help="'digits' (the demo's test split) or a data path that 'cafusion train' accepts; adds diagnostics",
    )
    p.add_argument("--batch-size", type=positive_int, default=256, help="default: %(default)s")
    p.set_defaults(func=run)


def block_rows(model: Any) -> list[dict[str, Any]]:
    """One dict per ChannelAttentionFusionT: name, configuration, T, router bias."""
    from cafusion.layers import ChannelAttentionFusionT

    rows = []
    for name, m in model.named_modules():
        if not isinstance(m, ChannelAttentionFusionT):
            continue
        bias = None
        if m.fusion_router is not None:
            out_layer: Any = m.fusion_router[2]
            bias = [float(v) for v in out_layer.bias.detach()]
        rows.append(
            {
                "block": name or "<root>",
                "channels": m.channels,
                "hidden": m.hidden,
                "fusion": m.fusion,
                "gate": m.gate,
                "act": m.act,
                "learnable_T": m.learnable_temperature,
                "T": float(m.get_T().detach()),
                "router_bias": bias,
            }
        )
    return rows


def format_blocks(rows: list[dict[str, Any]]) -> str:
    headers = ("block", "channels", "hidden", "fusion", "gate", "act", "T", "router bias (avg, max)", "avg - max")
    cells = []
    for r in rows:
        bias = r["router_bias"]
        cells.append(
            (
                r["block"],
                str(r["channels"]),
                str(r["hidden"]),
                r["fusion"],
                r["gate"],
                r["act"],
                f"{r['T']:.4f}" + (" (learned)" if r["learnable_T"] else " (fixed)"),
                "-" if bias is None else f"({bias[0]:+.4f}, {bias[1]:+.4f})",
                "-" if bias is None else f"{bias[0] - bias[1]:+.4f}",
            )
        )
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers), fmt.format(*("-" * w for w in widths)), *(fmt.format(*c) for c in cells)]
    return "\n".join(line.rstrip() for line in lines)


def load_data(spec: str, flag: str, digits_split: str = "test") -> tuple[Any, str]:
    """(a training.Dataset, its description) for ``flag``'s value: 'digits' (the demo's ``digits_split``)
    or a path ``cafusion train`` reads (an image folder's classes are its sub-folder names)."""
    from cafusion.training.dataset import Dataset

    if spec == "digits":
        try:
            from cafusion.training.demo import load_digits

            d = load_digits()
        except ImportError:
            raise CLIError(f"{flag} digits needs scikit-learn: pip install 'cafusion[demo]'", code=1) from None
        test = digits_split == "test"
        x, y = (d.x_test, d.y_test) if test else (d.x_train, d.y_train)
        return Dataset(x, y, tuple(str(i) for i in range(10))), f"digits {'test' if test else 'training'} split"
    from cafusion.training.data import load_dataset

    return load_dataset(spec), spec


# The time-series networks take (N, C, L) signals, so their checkpoints record no "dims".
ONE_D_MODELS = ("FCN", "ResNet", "InceptionTime")


def check_fits(x: Any, name: str, config: dict[str, Any], source: str) -> None:
    """``x`` has the channels and the number of spatial dims the model ``name(**config)`` takes."""
    dims, channels = config.get("dims", 1 if name in ONE_D_MODELS else None), config.get("in_channels")
    if x.dim() - 2 != dims or x.shape[1] != channels:
        raise CLIError(
            f"{source} has samples of shape {tuple(x.shape[1:])} but the model expects "
            f"{channels} channel(s) and {dims} spatial dim(s)",
            code=2,
        )


def _load_training_checkpoint(path: str) -> tuple[Any, str, dict[str, Any]]:
    """A ``cafusion train`` checkpoint: its JSON sidecar (older ones: its training state) holds the model spec."""
    from cafusion.training.model_factory import ModelSpec, build_model
    from cafusion.training.run_checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, with_state=False)  # the sidecar names the model: no optimizer needed
    if ckpt.model_spec is None:  # written before sidecars carried the spec: it is in the state
        ckpt = load_checkpoint(path)
    spec = ckpt.model_spec
    if not isinstance(spec, dict):
        raise CLIError(f"checkpoint {path!r} does not record which model it belongs to (no model_spec)", code=2)
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    try:
        model = build_model(ModelSpec(name=str(spec["name"]), **{**kwargs, "widths": tuple(kwargs["widths"])}))
        model.load_state_dict(ckpt.weights, strict=True)
    except (KeyError, TypeError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise CLIError(f"checkpoint {path!r} does not fit the model it records ({spec}): {first}", code=2) from None
    return model, str(spec["name"]), kwargs


def load_any(path: str) -> tuple[Any, str, dict[str, Any]]:
    """(model, model name, constructor kwargs) from a demo/library checkpoint or a training checkpoint."""
    from cafusion.models.checkpoint import ModelCheckpointError, NoModelSpecError, load_model

    try:
        model, sidecar = load_model(path)
    except NoModelSpecError:
        return _load_training_checkpoint(path)
    except ModelCheckpointError as exc:
        raise CLIError(str(exc), code=2) from None
    spec = sidecar.get("model") or sidecar["config"]["model"]
    return model, str(spec["name"]), dict(spec["kwargs"])


def run(args: argparse.Namespace) -> int:
    import torch

    from cafusion.diagnostics import FusionMonitor

    model, name, kwargs = load_any(args.checkpoint)
    print(f"{args.checkpoint}: {name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})")
    print(f"parameters: {sum(p.numel() for p in model.parameters()):,}")
    rows = block_rows(model)
    if not rows:
        print("no ChannelAttentionFusionT block in this model")
        return 0
    print(format_blocks(rows))
    if args.data is None:
        return 0
    data, source = load_data(args.data, "--data")
    x, y, classes = data.x, data.y, data.classes
    check_fits(x, name, kwargs, source)
    model.eval()
    correct = 0
    with FusionMonitor(model) as mon, torch.no_grad():
        for i in range(0, len(y), args.batch_size):
            xb, yb = x[i : i + args.batch_size], y[i : i + args.batch_size]
            with mon.labels(yb):
                correct += int((model(xb).argmax(1) == yb).sum())
        stats = mon.summary()
    print(f"\ndiagnostics on {source} ({len(y)} samples, accuracy {100 * correct / len(y):.2f}%):")
    print(mon.summary_table(stats))
    for line in collapse_lines(stats, mon.collapse_share, mon.low, mon.high):
        print(line)
    for s in stats:
        if s.class_w_avg:
            means = ", ".join(f"{_name(classes, c)}: {v:.3f}" for c, v in sorted(s.class_w_avg.items()))
            print(f"{s.block} mean w_avg per class: {means}")
    return 0


def collapse_lines(stats: list[Any], share: float, low: float, high: float) -> list[str]:
    """One line per block whose router sends more than ``share`` of the samples to a single path."""
    lines = []
    for s in stats:
        side = s.collapsed(share)
        if side is None:
            continue
        fraction = s.w_avg_high if side == "avg" else s.w_avg_low
        bound = f"w_avg > {high:g}" if side == "avg" else f"w_avg < {low:g}"
        lines.append(
            f"{s.block}: router COLLAPSED onto {side} ({bound} for {100 * fraction:.1f}% of samples); "
            "sum fusion computes the same gate cheaper (docs/router.md)"
        )
    return lines


def _name(classes: tuple[str, ...], index: int) -> str:
    return classes[index] if 0 <= index < len(classes) else str(index)
