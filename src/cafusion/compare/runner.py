"""One run of a comparison: train one variant for one seed on one source, test it, return a result dict.

The recipe is Fawaz et al. 2019's for FCN/ResNet (InceptionTime's too, with its batch of 64): Adam,
ReduceLROnPlateau on the training loss, and the model with the lowest training loss is the one
tested. Pairing: for a seed, every variant starts from the same backbone weights (copied from the
``none`` model built with that seed), sees the same batches in the same order (a permutation drawn
from (seed, epoch) only), and the same split. So per-seed differences between variants come from
the blocks, not from luck of the draw.

For blocks with a router the result also carries the router diagnostics: FusionMonitor's w_avg,
share preferring max, gate saturation and T on the test set, w_avg per epoch during training, the
router's gradient norm per epoch, and the scale of the avg and max statistics the router reads.
"""

from __future__ import annotations

import copy
import inspect
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import cafusion.compare.probes  # noqa: F401  (registers the caft_rn probe in worker processes too)
from cafusion.compare.plan import RunSpec, batch_size_for
from cafusion.compare.sources import Split, load_split
from cafusion.diagnostics import FusionMonitor
from cafusion.layers import ChannelAttentionFusionT
from cafusion.models import recipe
from cafusion.models.recipe import epoch_order
from cafusion.training.model_factory import ModelSpec, build_model

EpochHook = Callable[[int], None]
COLLAPSED = 0.01  # a router whose mean w_avg is below this (or above 1 - this) has collapsed to one path


def _spec(run: RunSpec, split: Split, attention: str, options: dict[str, Any]) -> ModelSpec:
    return ModelSpec(
        name=run.config.model,
        in_channels=split.train.in_channels,
        num_classes=split.train.num_classes,
        dims=split.train.spatial_dims,
        attention=attention,
        attention_kwargs=options,
        widths=run.config.widths,
    )


def build_paired_model(run: RunSpec, split: Split) -> tuple[nn.Module, int]:
    """The variant's model with the seed's shared backbone weights; returns (model, tensors copied)."""

    def build(attention: str | None) -> nn.Module:
        if attention is None:
            return build_model(_spec(run, split, run.variant.attention, dict(run.variant.options)))
        return build_model(_spec(run, split, attention, {}))

    return recipe.paired_model(build, run.seed)


def takes_lengths(model: nn.Module) -> bool:
    """True for models whose forward takes ``lengths`` (masked padding: fcn, resnet, inception, small_cnn)."""
    return "lengths" in inspect.signature(model.forward).parameters


def _forward(model: nn.Module, x: Tensor, lengths: Tensor | None) -> Tensor:
    out: Tensor = model(x) if lengths is None else model(x, lengths=lengths)
    return out


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    device: torch.device,
    batch: int = 256,
    lengths: Tensor | None = None,
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) in eval mode; ``lengths`` mask the padding of each series."""
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(y), batch):
        xb, yb = x[i : i + batch].to(device), y[i : i + batch].to(device)
        lb = None if lengths is None else lengths[i : i + batch].to(device)
        logits = _forward(model, xb, lb).float()
        loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    return correct / max(len(y), 1), loss / max(len(y), 1)


def _routers(model: nn.Module) -> dict[str, ChannelAttentionFusionT]:
    return {n: m for n, m in model.named_modules() if isinstance(m, ChannelAttentionFusionT)}


def _grad_norm(modules: list[nn.Module | None]) -> float:
    grads = [p.grad for m in modules if m is not None for p in m.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))) if grads else 0.0


def _block_grads(block: ChannelAttentionFusionT) -> tuple[float, float]:
    """Gradient norms of the router and, as a control, of the block's MLP (both shrink as the loss does)."""
    return _grad_norm([block.fusion_router]), _grad_norm([block.fc1, block.fc2])


class _InputScales:
    """Mean |avg| and |max| channel statistics at each block's input: the two halves of the router's input."""

    def __init__(self, blocks: dict[str, ChannelAttentionFusionT]) -> None:
        self.sums: dict[str, list[float]] = {name: [0.0, 0.0, 0.0] for name in blocks}
        self.handles = [b.register_forward_pre_hook(self._hook(name)) for name, b in blocks.items()]

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            flat = inputs[0].detach().flatten(2).float()
            s = self.sums[name]
            s[0] += float(flat.mean(2).abs().mean()) * flat.shape[0]
            s[1] += float(flat.amax(2).abs().mean()) * flat.shape[0]
            s[2] += flat.shape[0]

        return hook

    def close(self) -> dict[str, dict[str, float]]:
        for h in self.handles:
            h.remove()
        return {n: {"avg_abs": s[0] / max(s[2], 1), "max_abs": s[1] / max(s[2], 1)} for n, s in self.sums.items()}


def train_run(run: RunSpec, on_epoch: EpochHook | None = None) -> dict[str, Any]:
    """Train and test ``run``; the returned dict is what goes into its result file."""
    cfg = run.config
    device = torch.device(cfg.device)
    split = load_split(run.source, run.seed, cfg.test_fraction, cfg.norm)
    train_set, test_set = split.train, split.test
    batch = batch_size_for(cfg, len(train_set))
    model, copied = build_paired_model(run, split)
    model.to(device)
    lengths_train, lengths_test = _lengths(run, split, model)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.factor, patience=cfg.patience, min_lr=cfg.min_lr
    )
    blocks = _routers(model)
    monitor = FusionMonitor(model, num_classes=train_set.num_classes, attach=False) if blocks else None
    budgets = set(cfg.budgets) | {cfg.epochs}
    best_loss, best_state, best_epoch = math.inf, copy.deepcopy(model.state_dict()), 0
    history: list[dict[str, Any]] = []
    budget_acc: dict[str, float] = {}
    traces = ("w_avg", "grad", "mlp_grad")
    router_trace: dict[str, dict[str, list[float | None]]] = {n: {k: [] for k in traces} for n in blocks}
    seconds = 0.0
    x_all, y_all = train_set.x, train_set.y
    for epoch in range(cfg.epochs):
        started = time.perf_counter()
        model.train()
        if monitor is not None:
            monitor.attach()
        order = epoch_order(run.seed, epoch, len(train_set))
        loss_sum, correct = 0.0, 0
        grad, mlp_grad = dict.fromkeys(blocks, 0.0), dict.fromkeys(blocks, 0.0)
        for i in range(0, len(order), batch):
            index = order[i : i + batch]
            xb, yb = x_all[index].to(device), y_all[index].to(device)
            logits = _forward(model, xb, None if lengths_train is None else lengths_train[index].to(device))
            loss = F.cross_entropy(logits.float(), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            for name, block in blocks.items():
                router_grad, block_mlp_grad = _block_grads(block)
                grad[name] += router_grad
                mlp_grad[name] += block_mlp_grad
            optimizer.step()
            loss_sum += float(loss.detach()) * len(index)
            correct += int((logits.argmax(1) == yb).sum())
        seconds += time.perf_counter() - started
        train_loss = loss_sum / len(order)
        scheduler.step(train_loss)
        if monitor is not None:
            monitor.detach()
            for stats in monitor.step():
                router_trace[stats.block]["w_avg"].append(stats.w_avg_mean)
        steps = max(1, math.ceil(len(order) / batch))
        for name in blocks:
            router_trace[name]["grad"].append(grad[name] / steps)
            router_trace[name]["mlp_grad"].append(mlp_grad[name] / steps)
        if train_loss < best_loss:
            best_loss, best_state, best_epoch = train_loss, copy.deepcopy(model.state_dict()), epoch + 1
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "train_acc": correct / len(order)})
        if epoch + 1 in budgets and epoch + 1 != cfg.epochs:
            budget_acc[str(epoch + 1)] = _test_state(model, best_state, test_set, device, lengths_test)[0]
        if on_epoch is not None:
            on_epoch(epoch + 1)
    model.load_state_dict(best_state)
    test_acc, test_loss = evaluate(model, test_set.x, test_set.y, device, lengths=lengths_test)
    budget_acc[str(cfg.epochs)] = test_acc
    result: dict[str, Any] = {
        "run_id": run.run_id,
        "dataset": run.dataset,
        "settings": run.settings(),
        "data": split.description + ("; the model masks the padding (--lengths)" if lengths_test is not None else ""),
        "published_split": split.published_split,
        "batch_size": batch,
        "test_acc": test_acc,
        "test_loss": test_loss,
        "best_epoch": best_epoch,
        "best_train_loss": best_loss,
        "final_lr": optimizer.param_groups[0]["lr"],
        "params": params,
        "shared_tensors_copied": copied,
        "seconds_per_epoch": seconds / cfg.epochs,
        "threads": torch.get_num_threads(),
        "budget_acc": budget_acc,
        "history": history,
    }
    if blocks:
        result["router"] = _diagnose(model, blocks, test_set, device, router_trace, lengths_test)
    return result


def _lengths(run: RunSpec, split: Split, model: nn.Module) -> tuple[Tensor | None, Tensor | None]:
    """The true lengths to give the model, or (None, None): only with --lengths, on padded data."""
    if not run.config.lengths or split.lengths_train is None or split.lengths_test is None:
        return None, None
    if not takes_lengths(model):
        raise ValueError(
            f"--lengths: model {run.config.model!r} takes no lengths; use fcn, resnet, inception or small_cnn"
        )
    return split.lengths_train, split.lengths_test


def _test_state(
    model: nn.Module, state: dict[str, Tensor], test_set: Any, device: torch.device, lengths: Tensor | None
) -> tuple[float, float]:
    """Test ``state`` without disturbing the model being trained."""
    probe = copy.deepcopy(model)
    probe.load_state_dict(state)
    return evaluate(probe, test_set.x, test_set.y, device, lengths=lengths)


def _diagnose(
    model: nn.Module,
    blocks: dict[str, ChannelAttentionFusionT],
    test_set: Any,
    device: torch.device,
    trace: dict[str, dict[str, list[float | None]]],
    lengths: Tensor | None,
) -> dict[str, Any]:
    """FusionMonitor's per-block stats over the test set, the input scales, and the training traces."""
    scales = _InputScales(blocks)
    monitor = FusionMonitor(model, num_classes=test_set.num_classes)
    model.eval()
    with torch.no_grad():
        for i in range(0, len(test_set), 256):
            with monitor.labels(test_set.y[i : i + 256].to(device)):
                lb = None if lengths is None else lengths[i : i + 256].to(device)
                _forward(model, test_set.x[i : i + 256].to(device), lb)
    stats = {s.block: s for s in monitor.step()}
    monitor.detach()
    inputs = scales.close()
    out: dict[str, Any] = {}
    for name in blocks:
        s = stats[name]
        w = s.w_avg_mean
        out[name] = {
            "w_avg_mean": w,
            "w_avg_std": s.w_avg_std,
            "prefer_max": s.prefer_max,
            "collapsed": None if w is None else bool(w < COLLAPSED or w > 1 - COLLAPSED),
            "gate_saturation": s.saturation,
            "T": s.T,
            "input_avg_abs": inputs[name]["avg_abs"],
            "input_max_abs": inputs[name]["max_abs"],
            "w_avg_per_epoch": trace[name]["w_avg"],
            "router_grad_per_epoch": trace[name]["grad"],
            "mlp_grad_per_epoch": trace[name]["mlp_grad"],
        }
    return out
