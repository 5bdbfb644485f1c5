"""``cafusion train``: train a model with an attention block on your own data, in 1 or N processes.

All options are read into a :class:`~cafusion.training.config.TrainConfig`; the work is done by
:func:`cafusion.training.trainer.train`. Torch and the trainer are imported inside ``_run`` so that
``cafusion --help`` stays fast.
"""

from __future__ import annotations

import argparse
from typing import Any

from cafusion.cli.errors import CLIError

DESCRIPTION = "train a model with an attention block on your own data, in 1 or N processes."

EPILOG = """\
data: a folder with one sub-folder per class holding PNG/JPEG images (all the same size), or a
.npz/.pt file holding x (N, C, L | N, C, H, W | N, C, D, H, W) and integer labels y (N,).

multi-process: torchrun --nproc_per_node 2 -m cafusion train ...  (gloo on CPU, nccl on CUDA; only
rank 0 writes files). --batch-size is the GLOBAL batch, split evenly over the processes, so with
--norm group or none the same seed and batch size give the same training whatever the number of
processes. With --norm batch on the CPU each process normalises its own share of the batch (close
to, not equal to, one process), and --dist-bn averages the running statistics every epoch; on CUDA
batch norm becomes SyncBatchNorm.

run folder (--out): config.json, metrics.json/.csv, diagnostics/epoch-N.json (FusionMonitor),
latest.json -> checkpoints/epoch-N.{safetensors,state.pt,json}, written atomically every epoch.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "train",
        help="train on an image folder or a tensor file (checkpoints, --resume, torchrun)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, metavar="PATH", help="image folder, or .npz / .pt file with x and y")
    p.add_argument(
        "--model",
        default="small_cnn",
        metavar="NAME",
        help="small_cnn (1D/2D/3D input), fcn, resnet or inception (1D signals), timm:<name> or torchvision:<name> "
        "(images, random init); "
        "default: %(default)s",
    )
    p.add_argument("--attention", default="caft", metavar="NAME", help="registry name of the block; default: caft")
    p.add_argument(
        "--attn-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="block option, repeatable, e.g. --attn-opt reduction=8 --attn-opt learnable_temperature=true",
    )
    p.add_argument("--widths", default="32,64", metavar="W1,W2", help="small_cnn stage widths; default: 32,64")
    p.add_argument(
        "--norm", default="batch", choices=("batch", "group", "none"), help="normalisation layers; default: %(default)s"
    )
    p.add_argument(
        "--dist-bn",
        default="reduce",
        choices=("reduce", "broadcast", "none"),
        help="under torchrun, batch-norm running statistics at the end of each epoch: average them over the "
        "processes (reduce), take rank 0's (broadcast) or keep them per process (none); default: %(default)s",
    )
    p.add_argument("--epochs", type=int, default=10, help="default: %(default)s")
    p.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="GLOBAL batch size: under torchrun each of N processes takes batch-size/N; default: %(default)s",
    )
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate; default: %(default)s")
    p.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"), help="default: %(default)s")
    p.add_argument("--weight-decay", type=float, default=0.0, help="default: %(default)s")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum; default: %(default)s")
    p.add_argument("--seed", type=int, default=0, help="seeds the init, the split and the order; default: 0")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N; default: cpu")
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="auto: bf16 autocast on CUDA (fp16 + grad scaling where bf16 is missing), fp32 on CPU; "
        "bf16 on the CPU: CPU autocast",
    )
    p.add_argument("--val-fraction", type=float, default=0.2, help="share held out for validation; default: 0.2")
    p.add_argument("--out", default="runs/train", metavar="DIR", help="run folder; default: %(default)s")
    p.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="continue from the last checkpoint of --out, or of the given run folder / .safetensors file",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the per-epoch lines stay)")
    p.set_defaults(func=_run)
    return p


def _widths(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(w) for w in text.split(","))
    except ValueError:
        raise ValueError(f"--widths must be comma-separated positive ints, got {text!r}") from None


def _run(args: argparse.Namespace) -> int:
    from cafusion.training.config import TrainConfig, parse_options
    from cafusion.training.trainer import ReplicasDiffer, TrainInterrupted, train

    config = TrainConfig(
        data=args.data,
        out=args.out,
        model=args.model,
        attention=args.attention,
        attention_kwargs=parse_options(args.attn_opt),
        widths=_widths(args.widths),
        norm=args.norm,
        dist_bn=args.dist_bn,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        momentum=args.momentum,
        optimizer=args.optimizer,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        val_fraction=args.val_fraction,
        resume=args.resume,
        progress=not args.no_progress,
    )
    try:
        result = train(config)
    except TrainInterrupted as exc:
        where = (
            f"the last complete checkpoint is {exc.checkpoint}; continue with --resume"
            if exc.checkpoint
            else "no checkpoint was written yet"
        )
        raise CLIError(f"interrupted during epoch {exc.epoch + 1}; {where}", code=130) from None
    except ReplicasDiffer as exc:
        raise CLIError(str(exc), code=1) from None
    except OSError as exc:  # a write into the run folder failed mid-run (disk full, permissions changed)
        what = f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc.strerror or exc)
        raise CLIError(f"cannot write to the run folder --out {args.out!r}: {what}", code=1) from None
    if result.rank == 0:
        print(f"done: {result.epochs_done} epochs; run folder {result.out}")
    return 0
