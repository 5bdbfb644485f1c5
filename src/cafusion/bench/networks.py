"""Whole networks: one training step (forward, cross-entropy, backward, optimizer step) per attention.

The block's cost only matters as a share of a real step, so each network is built once per attention
from the registry (same seed, same input) and the six are timed in one alternation:

- ``cnn1d``: the small CNN of the MNIST-1D paper (Greydanus 2020, ``ConvBase``): Conv1d 1->25 k5 s2,
  25->25 k3 s2 twice (padding 1), ReLU, the block after conv2 and conv3, flatten, linear to 10
  classes; batch 100 x length 40; Adam.
- ``resnet18``: timm's resnet18 with the block as ``attn_layer``, 16x3x64x64, 10 classes; SGD with momentum.
- ``resnet1d``: the 1-D ResNet of Wang et al. 2017 (``cafusion.models.timeseries.ResNet``), batch 64 x
  length 500, 1 channel, 10 classes; Adam.
- ``fcn-5x361``, ``fcn-16x150``, ``resnet1d-20x427``: the ``cafusion compare`` backbones (FCN and ResNet
  of Wang et al. 2017) at batch x length sizes the compare recipe trains with (its batch is min(N/10, 16)
  of a UCR training set); 1 channel, 10 classes; Adam.

Targets: caft <= 1.3x no attention and <= SE on cnn1d; <= SE + 5% on resnet18 and resnet1d; <= 1.3x no
attention and <= 1.1x SE on the compare backbones.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cafusion.bench import report
from cafusion.bench.measure import interleaved_ms

CLASSES = 10


class Mnist1dCNN(nn.Module):
    """The MNIST-1D ConvBase with an attention block after the 2nd and 3rd convolution (after ReLU)."""

    def __init__(self, attention: str, channels: int = 25, length: int = 40, num_classes: int = CLASSES) -> None:
        super().__init__()
        from cafusion import create_attention

        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.attn2 = create_attention(attention, channels)
        self.attn3 = create_attention(attention, channels)
        for kernel in (5, 3, 3):  # the length after each convolution (stride 2, padding 1)
            length = (length + 2 - kernel) // 2 + 1
        self.linear = nn.Linear(channels * length, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(x).relu()
        h = self.attn2(self.conv2(h).relu())
        h = self.attn3(self.conv3(h).relu())
        out: Tensor = self.linear(h.flatten(1))
        return out


def _resnet18(attention: str) -> nn.Module:
    import timm

    from cafusion import get_attention

    model: nn.Module = timm.create_model(
        "resnet18", num_classes=CLASSES, block_args={"attn_layer": get_attention(attention)}
    )
    return model


def _resnet1d(attention: str) -> nn.Module:
    from cafusion.models.timeseries import ResNet

    return ResNet(1, CLASSES, attention=attention)


def _fcn(attention: str) -> nn.Module:
    from cafusion.models.timeseries import FCN

    return FCN(1, CLASSES, attention=attention)


def _adam(params: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


def _sgd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.01, momentum=0.9)


@dataclass(frozen=True)
class Network:
    build: Callable[[str], nn.Module]
    input_shape: tuple[int, ...]
    optimizer: Callable[[Any], torch.optim.Optimizer]
    needs: str | None = None  # an optional package the network comes from


NETWORKS = {
    "cnn1d": Network(Mnist1dCNN, (100, 1, 40), _adam),
    "resnet18": Network(_resnet18, (16, 3, 64, 64), _sgd, needs="timm"),
    "resnet1d": Network(_resnet1d, (64, 1, 500), _adam),
    "fcn-5x361": Network(_fcn, (5, 1, 361), _adam),
    "fcn-16x150": Network(_fcn, (16, 1, 150), _adam),
    "resnet1d-20x427": Network(_resnet1d, (20, 1, 427), _adam),
}
_COMPARE = (("none", 1.3), ("se", 1.1))
# The targets: network -> (attention compared with, limit on caft's time / its time), each.
TARGETS: dict[str, tuple[tuple[str, float], ...]] = {
    "cnn1d": (("none", 1.3), ("se", 1.0)),
    "resnet18": (("se", 1.05),),
    "resnet1d": (("se", 1.05),),
    "fcn-5x361": _COMPARE,
    "fcn-16x150": _COMPARE,
    "resnet1d-20x427": _COMPARE,
}


def missing_package(name: str) -> str | None:
    """The optional package network ``name`` needs and this install lacks, or None."""
    import importlib.util

    needs = NETWORKS[name].needs
    return needs if needs is not None and importlib.util.find_spec(needs) is None else None


def run_network(
    name: str, attentions: list[str], device: torch.device, repeats: int, amp: bool = False
) -> list[dict[str, Any]]:
    """One row per attention: the median step time of ``name`` built with it (``amp``: forward and
    loss under bf16 autocast, as a mixed-precision run; weights, gradients and optimizer in float32)."""
    net = NETWORKS[name]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(net.input_shape, generator=gen).to(device)
    target = torch.randint(0, CLASSES, (net.input_shape[0],), generator=gen).to(device)
    steps: dict[str, Callable[[], object]] = {}
    for attention in attentions:
        torch.manual_seed(0)
        model = net.build(attention).to(device).train()
        opt = net.optimizer(model.parameters())

        def step(model: nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss: Tensor = F.cross_entropy(model(x), target)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()

        steps[attention] = step
    ms = interleaved_ms(steps, device, repeats)
    rows = []
    for attention in attentions:
        row: dict[str, Any] = {
            "network": name,
            "input": list(net.input_shape),
            "attention": attention,
            "amp": "bf16" if amp else None,
            "ms": ms[attention],
        }
        for base in ("none", "se"):
            if base in ms:
                row[f"over_{base}"] = ms[attention] / ms[base]
        rows.append(row)
    return rows


def check_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name, limits in TARGETS.items():
        caft = [r for r in rows if r["network"] == name and r["attention"] == "caft"]
        for base, limit in limits:
            if caft and f"over_{base}" in caft[0]:
                kind = f"caft step <= {limit}x {base}"
                out.append(report.target("networks", kind, name, caft[0][f"over_{base}"], limit, False))
    return out


def _verdict(target: dict[str, Any]) -> str:
    return "ok" if target["pass"] else "MISS"


def format_table(rows: list[dict[str, Any]], targets: list[dict[str, Any]]) -> str:
    head = ["network", "input", "attention", "step ms", "/none", "/se", "target"]
    lines = []
    for r in rows:
        mine = [t for t in targets if t["case"] == r["network"]] if r["attention"] == "caft" else []
        lines.append(
            [
                r["network"],
                "x".join(map(str, r["input"])),
                r["attention"],
                f"{r['ms']:.2f}",
                f"{r['over_none']:.2f}" if "over_none" in r else "-",
                f"{r['over_se']:.2f}" if "over_se" in r else "-",
                ", ".join(f"{t['target'].removeprefix('caft step ')}: {_verdict(t)}" for t in mine),
            ]
        )
    return report.table(head, lines)


def run(args: argparse.Namespace, device: torch.device, progress: Any = print) -> report.Part:
    """Every selected network x attention; networks whose optional package is missing are skipped, noted."""
    rows: list[dict[str, Any]] = []
    notes = []
    for name in args.networks:
        package = missing_package(name)
        if package is not None:
            notes.append(f"networks: {name} skipped: it needs {package}, which is not installed")
            continue
        rows += run_network(name, args.attentions, device, args.repeats, args.amp)
        progress(f"networks: done {name}")
    targets = check_targets(rows)
    precision = f"bf16 autocast on {device.type}" if args.amp else "fp32"
    title = f"networks: median ms of one training step (forward, cross-entropy, backward, optimizer step), {precision}"
    return report.Part("networks", title, rows, targets, format_table(rows, targets), notes)
