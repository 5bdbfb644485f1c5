"""Build the model a training run asks for: the small CNN, or a timm/torchvision model by name.

Names: ``small_cnn`` (any input rank: 1D signals, images, volumes), ``fcn``, ``resnet`` and
``inception`` (1D signals: Wang et al. 2017's time-series baselines and one InceptionTime network,
Ismail Fawaz et al. 2020), ``timm:<name>`` and
``torchvision:<name>`` (2D images only, random init: nothing is ever downloaded). The attention
block comes from the registry by name with its options; ``--norm`` can swap batch norm for group
norm or nothing, which is what makes a multi-process CPU run reproduce a single-process one (batch
statistics are per process under DDP; SyncBatchNorm would fix that but runs on GPUs only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from torch import nn

MODEL_PREFIXES = ("timm:", "torchvision:")
TIMESERIES_MODELS = ("fcn", "resnet", "inception")  # 1D signals (N, C, L) only
NORMS = ("batch", "group", "none")
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class ModelError(ValueError):
    """A model name, option or input shape that this builder cannot honour."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything that decides the architecture; a checkpoint only fits a model with the same spec."""

    name: str
    in_channels: int
    num_classes: int
    dims: int
    attention: str = "caft"
    attention_kwargs: Mapping[str, Any] = field(default_factory=dict)
    widths: tuple[int, ...] = (32, 64)
    norm: str = "batch"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "dims": self.dims,
            "attention": self.attention,
            "attention_kwargs": dict(self.attention_kwargs),
            "widths": list(self.widths),
            "norm": self.norm,
        }


def build_model(spec: ModelSpec) -> nn.Module:
    """Instantiate ``spec`` with random weights (seed the global RNG first for a reproducible init)."""
    if spec.norm not in NORMS:
        raise ModelError(f"--norm must be one of {list(NORMS)}, got {spec.norm!r}")
    if spec.name == "small_cnn":
        from cafusion.models import SmallCNN

        model: nn.Module = SmallCNN(
            spec.in_channels,
            spec.num_classes,
            attention=spec.attention,
            attention_kwargs=dict(spec.attention_kwargs),
            dims=spec.dims,
            widths=spec.widths,
        )
    elif spec.name.startswith(MODEL_PREFIXES):
        if spec.dims != 2:
            raise ModelError(
                f"model {spec.name!r} takes images (N, C, H, W); this data has {spec.dims} spatial dim(s): "
                "use --model small_cnn for 1D signals or volumes"
            )
        library, _, arch = spec.name.partition(":")
        model = _build_timm(spec, arch) if library == "timm" else _build_torchvision(spec, arch)
    elif spec.name in TIMESERIES_MODELS:
        model = _build_timeseries(spec)
    else:
        raise ModelError(
            f"--model must be 'small_cnn', 'timm:<name>' or 'torchvision:<name>' (or, for 1D signals, "
            f"{' or '.join(map(repr, TIMESERIES_MODELS))}), got {spec.name!r}"
        )
    if spec.norm != "batch" and not spec.name.startswith("torchvision:"):  # torchvision: done before insertion
        replace_batch_norm(model, spec.norm)
    return model


def replace_batch_norm(model: nn.Module, norm: str) -> None:
    """Swap every BatchNorm for GroupNorm (``group``) or Identity (``none``), in place."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, _BATCH_NORMS):
                channels = child.num_features
                new: nn.Module = nn.GroupNorm(math.gcd(channels, 8), channels) if norm == "group" else NoNorm(channels)
                setattr(parent, child_name, new)


class NoNorm(nn.Identity):
    """Identity that still reports ``num_features``, so code that reads a norm layer's width keeps working."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}"


def _block_factory(spec: ModelSpec) -> Any:
    from cafusion.layers.registry import get_attention

    factory = get_attention(spec.attention)
    return partial(factory, **dict(spec.attention_kwargs)) if spec.attention_kwargs else factory


def _build_timeseries(spec: ModelSpec) -> nn.Module:
    if spec.dims != 1:
        raise ModelError(
            f"model {spec.name!r} takes 1D signals (N, C, L); this data has {spec.dims} spatial dims: "
            "use --model small_cnn, timm:<name> or torchvision:<name>"
        )
    from cafusion.models.timeseries import FCN, InceptionTime, ResNet

    cls = {"fcn": FCN, "resnet": ResNet, "inception": InceptionTime}[spec.name]
    return cls(spec.in_channels, spec.num_classes, attention=spec.attention, attention_kwargs=spec.attention_kwargs)


def _build_timm(spec: ModelSpec, arch: str) -> nn.Module:
    import timm

    if arch not in timm.list_models():
        raise ModelError(f"timm has no model {arch!r} (see timm.list_models())")
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": spec.num_classes, "in_chans": spec.in_channels}
    if spec.attention != "none":
        _block_factory(spec)  # a bad attention name fails here, with the registry's message
        kwargs["block_args"] = {"attn_layer": _block_factory(spec)}
    try:
        model: nn.Module = timm.create_model(arch, **kwargs)
    except TypeError as exc:
        if "block_args" in str(exc):
            raise ModelError(
                f"timm model {arch!r} takes no attention blocks (no block_args); use --attention none or a "
                "ResNet-family model"
            ) from None
        raise
    return model


def _build_torchvision(spec: ModelSpec, arch: str) -> nn.Module:
    import torchvision

    if arch not in torchvision.models.list_models():
        raise ModelError(f"torchvision has no model {arch!r} (see torchvision.models.list_models())")
    model: nn.Module = torchvision.models.get_model(arch, weights=None, num_classes=spec.num_classes)
    if spec.in_channels != 3:
        _adapt_first_conv(model, spec.in_channels, arch)
    if spec.norm != "batch":  # before insertion: the block hangs off the last norm layer of each residual branch
        replace_batch_norm(model, spec.norm)
    if spec.attention != "none":
        from cafusion.integrations.torchvision import insert_attention

        model = insert_attention(model, spec.attention, **dict(spec.attention_kwargs))
    return model


def _adapt_first_conv(model: nn.Module, in_channels: int, arch: str) -> None:
    """torchvision models are built for RGB; rebuild the first 3-channel conv for other channel counts."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                conv = nn.Conv2d(
                    in_channels,
                    child.out_channels,
                    child.kernel_size,  # type: ignore[arg-type]
                    stride=child.stride,  # type: ignore[arg-type]
                    padding=child.padding,  # type: ignore[arg-type]
                    dilation=child.dilation,  # type: ignore[arg-type]
                    groups=child.groups,
                    bias=child.bias is not None,
                )
                setattr(parent, child_name, conv)
                return
    raise ModelError(f"torchvision model {arch!r} has no RGB input conv to adapt to {in_channels} channels")
