"""``cafusion compare``: paired ablations of attention blocks over seeds, with statistics and a report.

Options become a :class:`~cafusion.compare.config.CompareConfig`; the runs are planned, sharded and
executed by ``cafusion.compare``, and the report is rebuilt from every finished run under ``--out``.
Torch is imported inside ``_run`` so that ``cafusion --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

EPILOG = """\
data: ucr:NAME (any UCR/UEA set, published split: aeon's bundled copy (GunPoint, ArrowHead,
ItalyPowerDemand, BasicMotions, JapaneseVowels, ...), else the archive under --archive DIR or
$CAFUSION_UCR_ARCHIVE (UCR 2018 NAME/NAME_TRAIN.tsv or UEA NAME/NAME_TRAIN.ts), else a download into
$CAFUSION_UCR_CACHE (default ~/.cache/cafusion/ucr); --norm auto as Fawaz et al. 2019: univariate sets
z-normalised per series, multivariate ones as stored), digits (scikit-learn's 8x8 digits),
or a path that 'cafusion train' reads (image folder, .npz/.pt: split with --test-fraction per seed).
Repeat --data or separate sources with commas.

pairing: for each seed every variant gets the same split, the same batch order and the same initial
weights for every layer it shares with the 'none' model.

recipe (Fawaz et al. 2019): Adam, ReduceLROnPlateau on the training loss (--factor, --patience,
--min-lr), batch min(N/10, 16) for fcn, min(N/10, 64) for resnet and min(N, 64) for inception
(InceptionTime, Ismail Fawaz et al. 2020) unless --batch-size is given; the model with the lowest
training loss is tested. The papers train 2000 (fcn) / 1500 (resnet, inception) epochs.

scale out: --jobs N runs N runs at once on this machine (cores split between them); --devices
cuda:0,cuda:1 runs one run per GPU at once; --executor slurm submits the pending runs as one Slurm
job array through submitit (--partition, --time, --cpus-per-task, --gpus-per-task; --no-wait returns
at once), --executor local runs that same array with submitit's local executor; --shard K/N runs
every N-th run, for other schedulers. Each run writes <out>/runs/<id>.json. Running again skips
finished runs (resume) and rebuilds the report from all of them; --report-only only rebuilds it
(this merges shards and job arrays).

out: runs/*.json (one per run), report.json, report.md, runs.csv, <dataset>__<model>.png, cd_<model>.png.
runs.csv holds what the report needs of every run: without runs/, --report-only rebuilds from it.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "compare",
        help="paired ablation of attention blocks over seeds and data sets, with tests and a report",
        description=__doc__.splitlines()[0].split(": ", 1)[1] if __doc__ else None,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", action="append", default=[], metavar="SOURCE", help="ucr:NAME, digits or a path")
    p.add_argument(
        "--archive",
        default=None,
        metavar="DIR",
        help="folder with the UCR 2018 (.tsv) or UEA (.ts) archive for ucr:NAME sets aeon does not bundle",
    )
    p.add_argument(
        "--model", default="fcn", metavar="NAME", help="fcn, resnet, inception, small_cnn, timm:/torchvision:<name>"
    )
    p.add_argument(
        "--attention",
        default="none,se,eca,cbam,caft,caft_sum",
        metavar="A,B,...",
        help="registry names to compare; default: %(default)s",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=NAME:K=V,...",
        help="an extra variant with its own options, e.g. caft_sum_lt=caft_sum:learnable_temperature=true",
    )
    p.add_argument("--attn-opt", action="append", default=[], metavar="KEY=VALUE", help="option for every block")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds; default: %(default)s")
    p.add_argument("--first-seed", type=int, default=0, help="default: %(default)s")
    p.add_argument("--epochs", type=int, default=100, help="default: %(default)s")
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's (see below)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate; default: %(default)s")
    p.add_argument("--min-lr", type=float, default=1e-4, help="default: %(default)s")
    p.add_argument("--patience", type=int, default=50, help="ReduceLROnPlateau patience; default: %(default)s")
    p.add_argument("--factor", type=float, default=0.5, help="ReduceLROnPlateau factor; default: %(default)s")
    p.add_argument(
        "--budgets", default="auto", metavar="E1,E2,...", help="epochs at which to test too; auto: 1,2,4,..."
    )
    p.add_argument(
        "--norm",
        default=None,
        metavar="{auto,series,none}",
        help="ucr: auto (default) as Fawaz et al. 2019: univariate sets z-normalised per series, multivariate "
        "ones as stored; series: z-normalise every set; none: the archive's values",
    )
    p.add_argument("--no-znorm", action="store_true", help="the same as --norm none")
    p.add_argument(
        "--lengths",
        action="store_true",
        help="padded series (ucr: unequal lengths): give the model their true lengths so it masks the padding",
    )
    p.add_argument("--test-fraction", type=float, default=0.2, help="for sources without a published split")
    p.add_argument("--widths", default="32,64", metavar="W1,W2", help="small_cnn stage widths; default: 32,64")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N; default: cpu")
    p.add_argument("--out", default="runs/compare", metavar="DIR", help="default: %(default)s")
    p.add_argument("--jobs", type=int, default=1, help="runs at once on this machine; default: 1")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run; default: cores / jobs")
    p.add_argument("--shard", default="1/1", metavar="K/N", help="run only every N-th run, from the K-th")
    p.add_argument(
        "--devices", default=None, metavar="D1,D2,...", help="one run per device at once, e.g. cuda:0,cuda:1"
    )
    p.add_argument("--executor", default=None, choices=("slurm", "local"), help="submit a submitit job array")
    p.add_argument("--partition", default=None, help="--executor slurm: the Slurm partition")
    p.add_argument("--time", type=int, default=60, metavar="MIN", help="--executor: minutes per run; default: 60")
    p.add_argument("--cpus-per-task", type=int, default=None, help="--executor: default: --threads, else 1")
    p.add_argument("--gpus-per-task", type=int, default=0, help="--executor: GPUs per run; default: 0")
    p.add_argument("--array-parallelism", type=int, default=None, help="--executor slurm: tasks at once")
    p.add_argument("--no-wait", action="store_true", help="--executor: return once submitted")
    p.add_argument("--resume", action="store_true", help="accepted for clarity: finished runs are always skipped")
    p.add_argument(
        "--baselines",
        default="none,se,cbam",
        metavar="A,B,...",
        help="variant labels every other one is paired against in the report; default: %(default)s",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild the report from the runs under --out (runs/*.json, else runs.csv)",
    )
    p.add_argument("--no-figures", action="store_true", help="skip the PNGs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (none anyway when not a TTY)")
    p.set_defaults(func=_run)
    return p


def _ints(flag: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated ints, got {text!r}") from None


def _norm(args: argparse.Namespace) -> str:
    """``--norm``, with ``--no-znorm`` as its old spelling of ``none``."""
    if not args.no_znorm:
        return "auto" if args.norm is None else str(args.norm)
    if args.norm not in (None, "none"):
        raise ValueError(f"--no-znorm means --norm none; it contradicts --norm {args.norm}")
    return "none"


def config_from_args(args: argparse.Namespace) -> Any:
    """The validated CompareConfig of the parsed options (one-line ValueError/TypeError otherwise)."""
    from cafusion.compare.config import CompareConfig, default_budgets, parse_variant
    from cafusion.training.config import parse_options

    common = parse_options(args.attn_opt)
    names = [n.strip() for n in args.attention.split(",") if n.strip()]
    variants = [parse_variant(n, common) for n in names] + [parse_variant(v, common) for v in args.variant]
    sources = [s.strip() for d in args.data for s in d.split(",") if s.strip()]
    config = CompareConfig(
        data=sources,
        model=args.model,
        variants=variants,
        seeds=args.seeds,
        first_seed=args.first_seed,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr=args.min_lr,
        patience=args.patience,
        factor=args.factor,
        test_fraction=args.test_fraction,
        widths=_ints("--widths", args.widths),
        device=args.device,
        out=args.out,
        norm=_norm(args),
        lengths=args.lengths,
    ).validate()
    if args.budgets == "auto":
        config.budgets = default_budgets(config.epochs)
    else:
        config.budgets = _ints("--budgets", args.budgets)
    return config.validate()


def _run(args: argparse.Namespace) -> int:
    from cafusion import _validation as check
    from cafusion.compare import execute, plan
    from cafusion.compare.report import build_report, write_report

    out = Path(args.out)
    baselines = tuple(b.strip() for b in args.baselines.split(",") if b.strip())
    if not baselines:
        raise ValueError(f"--baselines must name at least one variant label, got {args.baselines!r}")
    if args.report_only:
        written = write_report(out, build_report(out, baselines), figures=not args.no_figures)
        print(f"report: {written[1]} ({len(written)} files)")
        return 0
    jobs = check.positive_int("--jobs", args.jobs)
    if args.threads is not None:
        check.positive_int("--threads", args.threads)
    k, n = plan.parse_shard(args.shard)
    devices, cluster = _scale_out(args, jobs)
    _use_archive(args.archive)
    config = config_from_args(args)
    _check_model_and_data(config)
    runs = plan.shard(plan.plan(config), k, n)
    pending = [r for r in runs if not plan.finished(out, r)]
    shard = "" if n == 1 else f" (shard {k}/{n})"
    where = (
        f"as a {cluster.executor} job array"
        if cluster is not None
        else f"one per device on {','.join(devices)}"
        if devices
        else f"{jobs} at once"
    )
    print(f"{len(runs)} runs{shard}: {len(runs) - len(pending)} already finished, {len(pending)} to run, {where}")
    progress = False if args.no_progress else None
    if cluster is not None:
        execute.submit(pending, out, cluster, wait_for=not args.no_wait, printer=_print_now)
        if args.no_wait and pending:
            return 0
    else:
        execute.execute(
            pending, out, jobs=jobs, devices=devices, threads=args.threads, progress=progress, printer=_print_now
        )
    written = write_report(out, build_report(out, baselines), figures=not args.no_figures)
    print(f"report: {written[1]} ({len(written)} files)")
    return 0


def _scale_out(args: argparse.Namespace, jobs: int) -> tuple[list[str], Any]:
    """--devices and --executor, checked: (the devices, one per worker; the submitit Cluster or None)."""
    from cafusion import _validation as check
    from cafusion.compare.execute import Cluster, require_submitit

    devices = [d.strip() for d in (args.devices or "").split(",") if d.strip()]
    bad = [d for d in devices if d != "cpu" and d != "cuda" and not (d.startswith("cuda:") and d[5:].isdigit())]
    if args.devices is not None and (bad or not devices):
        raise ValueError(f"--devices must be comma-separated cpu, cuda or cuda:N, got {args.devices!r}")
    if devices and jobs != 1:
        raise ValueError("--devices runs one run per device at once; it replaces --jobs, give one or the other")
    _check_devices(devices)
    if args.executor is None:
        given = [f for f, v in (("--partition", args.partition), ("--no-wait", args.no_wait)) if v]
        if given:
            raise ValueError(f"{given[0]} applies to --executor slurm or local only")
        return devices, None
    if devices or jobs != 1:
        raise ValueError("--executor submits one task per run; --jobs and --devices do not apply to it")
    require_submitit()  # before any work: a missing extra is one line now, not after the data loads
    cpus = args.cpus_per_task if args.cpus_per_task is not None else (args.threads or 1)
    cluster = Cluster(
        executor=args.executor,
        partition=args.partition,
        time_min=check.positive_int("--time", args.time),
        cpus=check.positive_int("--cpus-per-task", cpus),
        gpus=0 if args.gpus_per_task == 0 else check.positive_int("--gpus-per-task", args.gpus_per_task),
        parallel=None
        if args.array_parallelism is None
        else check.positive_int("--array-parallelism", args.array_parallelism),
    )
    return devices, cluster


def _check_devices(devices: list[str]) -> None:
    """Every cuda:N of --devices exists here, before any run starts."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for d in devices:
        index = 0 if d == "cuda" else int(d[5:]) if d.startswith("cuda:") else None
        if index is not None and index >= count:
            raise ValueError(f"--devices {d}: this machine has {count} CUDA device(s)")


def _use_archive(archive: str | None) -> None:
    """Point ``ucr:`` at ``--archive`` for this process and the job processes it starts (they inherit it)."""
    if archive is None:
        return
    from cafusion.training.ucr import ARCHIVE_ENV

    folder = Path(archive)
    if not folder.is_dir():
        raise ValueError(f"--archive {archive!r} is not a folder (it should hold the UCR/UEA archive)")
    os.environ[ARCHIVE_ENV] = str(folder.resolve())


def _check_model_and_data(config: Any) -> None:
    """Read every source and build the model once, so a bad name fails in a second, not mid-way."""
    import torch

    from cafusion.compare.runner import takes_lengths
    from cafusion.compare.sources import load_split
    from cafusion.training.model_factory import ModelSpec, build_model

    for source in config.data:
        split = load_split(source, config.first_seed, config.test_fraction, config.norm)
        print(split.description)
        with torch.random.fork_rng():
            model = build_model(
                ModelSpec(
                    config.model,
                    split.train.in_channels,
                    split.train.num_classes,
                    split.train.spatial_dims,
                    attention="none",
                    widths=config.widths,
                )
            )
        if config.lengths and split.lengths_train is not None and not takes_lengths(model):
            raise ValueError(
                f"--lengths: model {config.model!r} takes no lengths; use fcn, resnet, inception or small_cnn"
            )


def _print_now(line: str) -> None:
    """One line per finished run, flushed: a log file shows progress while the comparison runs."""
    print(line, flush=True)
