"""The training loop behind ``cafusion train``: one process or N under torchrun, exact resume.

Reproducibility contract: with the same seed and GLOBAL batch size, a run with N processes takes
the same steps as a run with one (up to float summation order). Three things make that true:

* the order of each epoch comes from ``DistributedSampler(seed, epoch)``, which permutes the same
  way on every rank and deals rank r the strided part r::N of every global batch;
* every rank takes an equal share of every global batch (the last incomplete batch is dropped), so
  the mean loss per rank, averaged over ranks by DDP, is the mean over the global batch;
* the model has no cross-sample statistics that differ per process (``--norm group|none``, or
  SyncBatchNorm, which this trainer switches on under DDP on CUDA).

Batch norm on the CPU (SyncBatchNorm has no CPU kernels) normalises each process's share of the
batch by that share's statistics, so N processes train close to, not exactly like, one process;
its running statistics are made equal across ranks at the end of every epoch (``--dist-bn``).

A checkpoint is written after every epoch, atomically, with optimizer, grad-scaler and RNG states,
so ``--resume`` repeats nothing and skips nothing.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DistributedSampler

from cafusion._files import atomic_write_text
from cafusion.diagnostics import FusionMonitor
from cafusion.training import distributed as dist_utils
from cafusion.training.config import TrainConfig, check_resume_compatible
from cafusion.training.data import load_dataset, split_dataset
from cafusion.training.dataset import DataError, Dataset
from cafusion.training.distributed import DistContext
from cafusion.training.model_factory import ModelSpec, build_model
from cafusion.training.run_checkpoint import (
    POINTER,
    CheckpointError,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)

Printer = Callable[[str], None]


@dataclass
class TrainResult:
    """What a finished (or already complete) run leaves behind."""

    out: Path
    epochs_done: int
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None
    rank: int = 0


class ReplicasDiffer(RuntimeError):
    """The processes of a finished run hold different parameters: a real fault, never expected."""


class TrainInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; carries the last complete checkpoint so the CLI can say how to resume."""

    def __init__(self, checkpoint: Path | None, epoch: int) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.epoch = epoch


def train(config: TrainConfig, printer: Printer = print) -> TrainResult:
    """Run ``config`` in this process (joining the torchrun group if launched by torchrun)."""
    config.validate()
    ctx = dist_utils.init_distributed(config.device)
    finished = False
    try:
        result = _Run(config, ctx, printer if ctx.is_main else (lambda _: None)).run()
        finished = True
        return result
    finally:
        dist_utils.shutdown(ctx, finished)


class _Run:
    def __init__(self, config: TrainConfig, ctx: DistContext, printer: Printer) -> None:
        self.config = config
        self.ctx = ctx
        self.print = printer
        self.out = Path(config.out)
        self.history: list[dict[str, Any]] = []
        self.last_checkpoint: Path | None = None

    # -- setup -----------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg, ctx = self.config, self.ctx
        if cfg.batch_size % ctx.world_size:
            raise ValueError(
                f"--batch-size {cfg.batch_size} is the global batch and must divide evenly over "
                f"{ctx.world_size} processes"
            )
        if cfg.resume is None and (self.out / POINTER).exists():
            raise ValueError(
                f"run folder {str(self.out)!r} already holds a checkpoint; continue it with --resume, "
                "or pick another --out"
            )
        prepare_out(self.out, ctx.rank)
        data = load_dataset(cfg.data)
        train_set, val_set = split_dataset(data, cfg.val_fraction, cfg.seed)
        if cfg.batch_size > len(train_set):
            raise DataError(
                f"--batch-size {cfg.batch_size} is larger than the {len(train_set)} training samples "
                f"of {cfg.data!r} (after the {cfg.val_fraction} validation split)"
            )
        checkpoint = self._load_resume()
        spec = ModelSpec(
            name=cfg.model,
            in_channels=data.in_channels,
            num_classes=data.num_classes,
            dims=data.spatial_dims,
            attention=cfg.attention,
            attention_kwargs=cfg.attention_kwargs,
            widths=cfg.widths,
            norm=cfg.norm,
        )
        torch.manual_seed(cfg.seed)
        model = build_model(spec).to(ctx.device)
        if ctx.distributed and ctx.device.type == "cuda" and cfg.norm == "batch":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]
        optimizer = self._optimizer(model)
        amp_dtype = self._amp_dtype()
        scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp_dtype == torch.float16)
        start_epoch = 0
        if checkpoint is not None:
            start_epoch = self._restore(checkpoint, model, optimizer, scaler, spec)
        meta = {"config": cfg.as_dict(), "model": spec.as_dict(), "world_size": ctx.world_size}
        meta["data"] = {
            "samples": len(data),
            "train": len(train_set),
            "val": len(val_set or ()),
            "classes": data.classes,
        }
        if ctx.is_main:
            atomic_write_text(self.out / "config.json", json.dumps(meta, indent=2, default=str) + "\n")
        if start_epoch >= cfg.epochs:
            self.print(f"nothing to do: the checkpoint already has {start_epoch} of {cfg.epochs} epochs")
            return TrainResult(self.out, start_epoch, self.history, self.last_checkpoint, ctx.rank)
        ddp: nn.Module = model
        if ctx.distributed:
            device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            ddp = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        monitor = FusionMonitor(model, num_classes=data.num_classes, attach=False)
        self.print(
            f"training {cfg.model} ({cfg.attention}) on {len(train_set)} samples, {data.num_classes} classes, "
            f"{ctx.world_size} process(es), global batch {cfg.batch_size}, device {ctx.device}"
        )
        epoch = start_epoch
        try:
            for epoch in range(start_epoch, cfg.epochs):
                self._epoch(epoch, model, ddp, optimizer, scaler, amp_dtype, monitor, train_set, val_set, spec)
        except KeyboardInterrupt:
            raise TrainInterrupted(self._checkpoint_on_disk(), epoch) from None
        self._check_ranks_agree(model)
        return TrainResult(self.out, cfg.epochs, self.history, self.last_checkpoint, ctx.rank)

    def _check_ranks_agree(self, model: nn.Module) -> None:
        """Each rank hashes its own final weights; rank 0 records them (ranks.json) and reports a mismatch.

        DDP keeps parameters identical by construction; this makes that observable, and catches a
        rank that silently trained on something else (ReplicasDiffer: a failed run, checkpoints kept).
        Buffers alone differ only with ``--dist-bn none`` (per-rank batch-norm statistics): one
        warning line, since that is what the option asks for.
        """
        per_key = dist_utils.all_gather_object(self.ctx, tensor_digests(model))
        digests = [state_digest_of(d) for d in per_key]
        if self.ctx.is_main:
            info = {"world_size": self.ctx.world_size, "state_sha256": digests}
            atomic_write_text(self.out / "ranks.json", json.dumps(info, indent=2) + "\n")
        differ = [key for key in per_key[0] if len({d.get(key) for d in per_key}) > 1]
        if not differ:
            return
        params = {name for name, _ in model.named_parameters()}
        where = f"{', '.join(differ[:3])}{' ...' if len(differ) > 3 else ''}"
        kept = f"the checkpoints in {str(self.out)!r} hold rank 0's copy"
        if any(key in params for key in differ):
            raise ReplicasDiffer(
                f"the {self.ctx.world_size} processes ended with different parameters ({where}); {kept}"
            )
        if self.ctx.is_main:
            print(
                f"cafusion: warning: the processes ended with different buffers ({where}), as --dist-bn "
                f"{self.config.dist_bn} leaves batch-norm statistics per process; {kept}",
                file=sys.stderr,
            )

    def _checkpoint_on_disk(self) -> Path | None:
        """The checkpoint ``latest.json`` names: the truth even if Ctrl-C hit between the rename and our bookkeeping."""
        try:
            return resolve_checkpoint(self.out)
        except CheckpointError:
            return self.last_checkpoint

    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        cfg = self.config
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def _amp_dtype(self) -> torch.dtype | None:
        """bf16 where the GPU supports it, else fp16 with a grad scaler; on the CPU fp32 unless bf16 is asked."""
        if self.ctx.device.type != "cuda":
            return torch.bfloat16 if self.config.precision == "bf16" else None
        if self.config.precision == "fp32":
            return None
        if self.config.precision == "fp16":
            return torch.float16
        if self.config.precision == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16

    def _load_resume(self) -> Any:
        cfg = self.config
        if cfg.resume is None:
            return None
        source = cfg.resume or cfg.out  # a bare --resume continues the run in --out
        checkpoint = load_checkpoint(source)
        check_resume_compatible(cfg, checkpoint.config, str(checkpoint.path))
        return checkpoint

    def _restore(
        self,
        checkpoint: Any,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        spec: ModelSpec,
    ) -> int:
        stored_spec = checkpoint.state.get("model_spec")
        if stored_spec is not None and stored_spec != spec.as_dict():
            raise CheckpointError(
                f"checkpoint {str(checkpoint.path)!r} is from another model: it was built as {stored_spec}, "
                f"this run builds {spec.as_dict()}"
            )
        try:
            model.load_state_dict(checkpoint.weights, strict=True)
            optimizer.load_state_dict(checkpoint.state["optimizer"])
            if checkpoint.state["scaler"]:  # empty when saved without fp16 (CPU, bf16): nothing to restore
                scaler.load_state_dict(checkpoint.state["scaler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise CheckpointError(f"checkpoint {str(checkpoint.path)!r} does not fit this model: {first}") from None
        rng = checkpoint.state["rng_cpu"]
        torch.set_rng_state(rng[self.ctx.rank] if len(rng) == self.ctx.world_size else rng[0])
        cuda_rng = checkpoint.state.get("rng_cuda")
        if cuda_rng and self.ctx.device.type == "cuda":
            state = cuda_rng[self.ctx.rank] if len(cuda_rng) == self.ctx.world_size else cuda_rng[0]
            torch.cuda.set_rng_state(state, self.ctx.device)
        self.history = list(checkpoint.state.get("history", []))
        self.last_checkpoint = checkpoint.path
        self.print(f"resumed from {checkpoint.path} after epoch {checkpoint.epoch}")
        return int(checkpoint.epoch)

    # -- one epoch -------------------------------------------------------------------------------
    def _epoch(
        self,
        epoch: int,
        model: nn.Module,
        ddp: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        amp_dtype: torch.dtype | None,
        monitor: FusionMonitor,
        train_set: Dataset,
        val_set: Dataset | None,
        spec: ModelSpec,
    ) -> None:
        cfg, ctx = self.config, self.ctx
        started = time.perf_counter()
        batches = self._batches(len(train_set), epoch)
        sums = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # loss * n, correct, n
        ddp.train()
        monitor.attach()
        for index in self._progress(batches, f"epoch {epoch + 1}/{cfg.epochs}"):
            x, y, lengths = train_set.batch(index)
            x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
            with monitor.labels(y), self._autocast(amp_dtype):
                logits = forward(ddp, x, lengths)
                loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            scaler.step(optimizer)
            scaler.update()
            with torch.no_grad():
                correct = (logits.argmax(1) == y).sum()
                sums += torch.stack([loss.detach().double() * y.numel(), correct.double(), sums.new_tensor(y.numel())])
        monitor.detach()
        dist_utils.distribute_bn(ctx, model, cfg.dist_bn)  # before validation and the checkpoint
        blocks = [s.as_dict() for s in monitor.step()]
        train_loss, train_acc, seen = _means(dist_utils.all_reduce_sum(ctx, sums))
        val_loss, val_acc = self._validate(model, val_set, amp_dtype)
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "train_samples": int(seen),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "seconds": time.perf_counter() - started,
        }
        self.history.append(record)
        state = self._state(optimizer, scaler, spec)
        if ctx.is_main:
            self._write_epoch_files(epoch + 1, blocks, monitor)
            self.last_checkpoint = save_checkpoint(
                self.out, epoch + 1, model.state_dict(), state, cfg.as_dict(), model_spec=spec.as_dict()
            )
        dist_utils.barrier(ctx)
        val = "" if val_loss is None else f"  val_loss {val_loss:.4f}  val_acc {val_acc:.3f}"
        self.print(
            f"epoch {epoch + 1}/{cfg.epochs}  train_loss {train_loss:.4f}  train_acc {train_acc:.3f}{val}"
            f"  ({duration(record['seconds'])})"
        )

    def _batches(self, n: int, epoch: int) -> list[Tensor]:
        """This rank's index batches: its strided share of each global batch of the epoch's permutation."""
        ctx, cfg = self.ctx, self.config
        # The sampler only needs len(); the samples themselves stay in the in-memory tensors.
        sampler: DistributedSampler[int] = DistributedSampler(
            cast(Any, range(n)), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
        sampler.set_epoch(epoch)
        mine = torch.tensor(list(sampler), dtype=torch.int64)
        per_rank = cfg.batch_size // ctx.world_size
        steps = n // cfg.batch_size
        return [mine[s * per_rank : (s + 1) * per_rank] for s in range(steps)]

    def _progress(self, batches: list[Tensor], desc: str) -> Iterator[Tensor]:
        """A tqdm bar on an interactive stderr only: in a log, the per-epoch line is the progress."""
        if not (self.ctx.is_main and self.config.progress and sys.stderr.isatty()):
            yield from batches
            return
        try:
            from tqdm import tqdm
        except ImportError:  # tqdm is an extra (demo); without it the per-epoch lines remain
            yield from batches
            return
        yield from tqdm(batches, desc=desc, leave=False, unit="step", file=sys.stderr)

    def _autocast(self, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.ctx.device.type, dtype=amp_dtype)

    @torch.no_grad()
    def _validate(
        self, model: nn.Module, val_set: Dataset | None, amp_dtype: torch.dtype | None
    ) -> tuple[float | None, float | None]:
        """Each rank scores its strided share of the validation set; the sums are exact over ranks."""
        if val_set is None:
            return None, None
        ctx = self.ctx
        model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=ctx.device)
        index = torch.arange(ctx.rank, len(val_set), ctx.world_size)
        per_rank = max(self.config.batch_size // ctx.world_size, 1)
        for chunk in torch.split(index, per_rank):
            x, y, lengths = val_set.batch(chunk)
            x, y = x.to(ctx.device), y.to(ctx.device)
            with self._autocast(amp_dtype):
                logits = forward(model, x, lengths).float()
            loss = F.cross_entropy(logits, y, reduction="sum")
            sums += torch.stack([loss.double(), (logits.argmax(1) == y).sum().double(), sums.new_tensor(y.numel())])
        model.train()
        loss_mean, acc, _ = _means(dist_utils.all_reduce_sum(ctx, sums))
        return loss_mean, acc

    def _state(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, spec: ModelSpec) -> dict[str, Any]:
        """Sidecar state; gathering RNG states is collective, so every rank calls this."""
        ctx = self.ctx
        cuda = torch.cuda.get_rng_state(ctx.device) if ctx.device.type == "cuda" else None
        return {
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "rng_cpu": dist_utils.all_gather_object(ctx, torch.get_rng_state()),
            "rng_cuda": dist_utils.all_gather_object(ctx, cuda) if cuda is not None else None,
            "history": list(self.history),
            "model_spec": spec.as_dict(),
            "world_size": ctx.world_size,
        }

    def _write_epoch_files(self, epoch: int, blocks: list[dict[str, Any]], monitor: FusionMonitor) -> None:
        """Metrics and FusionMonitor diagnostics; rewritten whole each epoch, so a resume never duplicates."""
        diag = {"epoch": epoch, "blocks": blocks}
        atomic_write_text(self.out / "diagnostics" / f"epoch-{epoch:04d}.json", json.dumps(diag, indent=2) + "\n")
        if blocks:
            stats = monitor.history[-len(blocks) :]
            atomic_write_text(self.out / "diagnostics" / "latest.txt", monitor.summary_table(stats) + "\n")
        atomic_write_text(self.out / "metrics.json", json.dumps(self.history, indent=2) + "\n")
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(self.history[0]))
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write_text(self.out / "metrics.csv", buffer.getvalue())


def forward(model: nn.Module, x: Tensor, lengths: Tensor | None) -> Tensor:
    """model(x), with the series' lengths for variable-length data (small_cnn, fcn, resnet take them)."""
    out: Tensor = model(x) if lengths is None else model(x, lengths=lengths.to(x.device))
    return out


def tensor_digests(model: nn.Module) -> dict[str, str]:
    """SHA-256 of each tensor of the state dict (raw bytes): equal iff bit-identical."""
    return {
        key: hashlib.sha256(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()).hexdigest()
        for key, value in model.state_dict().items()
    }


def state_digest_of(digests: dict[str, str]) -> str:
    """One SHA-256 over the per-tensor digests, in key order."""
    return hashlib.sha256("".join(f"{k}:{v};" for k, v in digests.items()).encode()).hexdigest()


def prepare_out(out: Path, rank: int) -> None:
    """Create the run folder and prove it is writable before any data is read (each rank probes)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file, not a folder; pick a folder for the run")
    probe = out / f".write-test-{rank}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"--out {str(out)!r}: cannot write to the run folder ({exc.strerror or exc})") from None


def duration(seconds: float) -> str:
    """``0.042`` -> ``42 ms``, ``3.14`` -> ``3.1 s``: sub-second epochs do not read ``0.0s``."""
    return f"{1000 * seconds:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _means(sums: Tensor) -> tuple[float, float, float]:
    loss_sum, correct, n = (float(v) for v in sums)
    return loss_sum / max(n, 1.0), correct / max(n, 1.0), n
