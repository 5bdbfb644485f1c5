"""FCN, ResNet (Wang et al. 2017, as benchmarked by Fawaz et al. 2019) and InceptionTime (Ismail Fawaz et al. 2020).

All take (B, in_channels, L) and return (B, num_classes) logits. An attention block, chosen by
registry name, sits after each conv block of FCN (the squeeze-excite FCN of MLSTM-FCN, Karim et al.
2019), after the last batch norm of each residual branch of ResNet, before the addition (the
SE-ResNet position), and after each inception module of InceptionTime (after its ReLU, before any
shortcut addition). With ``attention="none"`` the models are the published baselines, and every
variant has the same backbone parameter names, so paired ablations can give all of them the same
initial backbone weights.

Padded batches: ``forward(x, lengths)`` makes the result for each series what it would be alone,
unpadded (in eval mode): every convolution sees zeros past a series' end, as 'same' padding gives a
lone series, max pooling never picks a padded position, the attention blocks squeeze over real
positions (``cafusion.masking.padding``) and the head averages real positions only. Batch norm in
training mode still pools statistics over the padding, as it pools over the batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cafusion import _validation as check
from cafusion import masking


def _attention(name: str, channels: int, kwargs: Mapping[str, Any]) -> nn.Module:
    """Build the block through the registry, imported late so the registry may import the models."""
    from cafusion.layers.registry import create_attention

    return create_attention(name, channels, **dict(kwargs))


def _config(in_channels: int, num_classes: int, attention: str, attention_kwargs: Any) -> dict[str, Any]:
    """The checked constructor arguments, as each model keeps them in ``config`` (checkpoints rebuild from it)."""
    check.positive_int("in_channels", in_channels)
    check.positive_int("num_classes", num_classes)
    if not isinstance(attention, str):
        raise TypeError(f"attention must be a registry name (str), got {attention!r}")
    if attention_kwargs is not None and not isinstance(attention_kwargs, Mapping):
        raise TypeError(f"attention_kwargs must be a mapping or None, got {type(attention_kwargs).__name__}")
    kwargs = dict(attention_kwargs or {})
    return {"in_channels": in_channels, "num_classes": num_classes, "attention": attention, "attention_kwargs": kwargs}


class SameConv1d(nn.Conv1d):
    """Conv1d that keeps the length like Keras' ``padding='same'`` (an even kernel pads one more on the right).

    Torch's own ``padding="same"`` does the same but warns about an extra copy for even kernels; padding
    explicitly does that copy once, silently.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel, bias=bias)
        self.pad = ((kernel - 1) // 2, kernel // 2)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():  # type: ignore[attr-defined]
            x = zero_padding(x)
        out: Tensor = self._conv_forward(F.pad(x, self.pad), self.weight, self.bias)
        return out


def zero_padding(x: Tensor) -> Tensor:
    """x with zeros at the padded positions of an enclosing ``masking.padding`` block (x itself outside one).

    A series alone sees zeros past its end; in a padded batch it would see the padding (or what the
    previous layers made of it), so a convolution zeroes it first.
    """
    keep = _real_positions(x)
    if keep is None:
        return x
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _real_positions(x: Tensor) -> Tensor | None:
    """(B, 1, L) True at the real positions of x under an enclosing ``masking.padding`` block, else None."""
    lengths, mask = masking.current(x)
    valid = masking.valid_mask(x, lengths, mask)
    return None if valid is None else valid.view(x.shape[0], 1, *x.shape[2:])


def masked_head(body: nn.Module, head: nn.Module, x: Tensor, lengths: Tensor | None) -> Tensor:
    """head(mean over time of body(x)), the body run inside ``masking.padding`` and the mean over real steps."""
    if lengths is None:
        logits: Tensor = head(body(x).mean(dim=2))
        return logits
    masking.valid_mask(x, lengths)  # one-line errors before any work
    with masking.padding(lengths, length=x.shape[-1]):
        features = body(x)
    valid = masking.valid_mask(features, masking.scale_lengths(lengths, features.shape[-1], x.shape[-1]))
    assert valid is not None
    out: Tensor = head(masking.masked_mean(features, valid, features.dtype))
    return out


def _conv_bn(in_channels: int, out_channels: int, kernel: int) -> list[nn.Module]:
    return [SameConv1d(in_channels, out_channels, kernel), nn.BatchNorm1d(out_channels)]


class ConvBlock(nn.Module):
    """conv -> BN -> ReLU -> attention: one FCN block."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, attention: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn = _conv_bn(in_channels, out_channels, kernel)
        self.act = nn.ReLU()
        self.attention = attention

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.attention(self.act(self.bn(self.conv(x))))
        return out


class FCN(nn.Module):
    """Fully convolutional network: blocks of 128/256/128 filters with kernels 8/5/3, GAP, linear head."""

    FILTERS = (128, 256, 128)
    KERNELS = (8, 5, 3)

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        attention: str = "none",
        attention_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.config = _config(in_channels, num_classes, attention, attention_kwargs)
        kwargs = self.config["attention_kwargs"]
        blocks: list[nn.Module] = []
        prev = in_channels
        for width, kernel in zip(self.FILTERS, self.KERNELS, strict=True):
            blocks.append(ConvBlock(prev, width, kernel, _attention(attention, width, kwargs)))
            prev = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(prev, num_classes)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``lengths`` (B,): real steps of each series in a batch padded at the end (see the module doc)."""
        return masked_head(self.blocks, self.head, x, lengths)


class ResidualBlock(nn.Module):
    """Three conv-BN layers (kernels 8/5/3, ReLU between), attention after the last BN, then + shortcut, ReLU.

    The shortcut is a 1x1 conv + BN where the width changes and a BN alone where it does not, as in
    the reference implementation of Fawaz et al. (their third block, 128 -> 128).
    """

    def __init__(self, in_channels: int, out_channels: int, attention: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_channels, out_channels, 8)
        self.conv2, self.bn2 = _conv_bn(out_channels, out_channels, 5)
        self.conv3, self.bn3 = _conv_bn(out_channels, out_channels, 3)
        self.attention = attention
        shortcut: list[nn.Module] = []
        if in_channels != out_channels:
            shortcut.append(nn.Conv1d(in_channels, out_channels, 1))
        shortcut.append(nn.BatchNorm1d(out_channels))
        self.shortcut = nn.Sequential(*shortcut)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.attention(self.bn3(self.conv3(out)))
        result: Tensor = self.act(out + self.shortcut(x))
        return result


class ResNet(nn.Module):
    """Residual network: three residual blocks of 64/128/128 filters, GAP, linear head."""

    FILTERS = (64, 128, 128)

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        attention: str = "none",
        attention_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.config = _config(in_channels, num_classes, attention, attention_kwargs)
        kwargs = self.config["attention_kwargs"]
        blocks: list[nn.Module] = []
        prev = in_channels
        for width in self.FILTERS:
            blocks.append(ResidualBlock(prev, width, _attention(attention, width, kwargs)))
            prev = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(prev, num_classes)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``lengths`` (B,): real steps of each series in a batch padded at the end (see the module doc)."""
        return masked_head(self.blocks, self.head, x, lengths)


def same_max_pool(x: Tensor, kernel: int = 3) -> Tensor:
    """Stride-1 max pool that keeps the length (Keras 'same': the window never sees the padding).

    Inside a ``masking.padding`` block the padded positions are out of every window too, and zero in
    the output, so a series in a padded batch pools exactly as it does alone.
    """
    if kernel % 2 != 1:
        raise ValueError(f"kernel must be an odd int, got {kernel!r}")
    if torch.jit.is_scripting():  # type: ignore[attr-defined]
        return F.max_pool1d(x, kernel, 1, kernel // 2)
    keep = _real_positions(x)
    if keep is None:
        return F.max_pool1d(x, kernel, 1, kernel // 2)
    low = torch.full((), float("-inf"), dtype=x.dtype, device=x.device)
    pooled = F.max_pool1d(torch.where(keep, x, low), kernel, 1, kernel // 2)
    return torch.where(keep, pooled, torch.zeros((), dtype=x.dtype, device=x.device))


class InceptionModule(nn.Module):
    """Bottleneck 1x1 (if more than one input channel), convs of three kernels beside max-pool -> 1x1; concat, BN, ReLU.

    Every convolution is bias-free as in the reference code (the batch norm that follows has the
    shift); the attention block takes the ReLU output.
    """

    def __init__(
        self, in_channels: int, filters: int, bottleneck: int, kernels: tuple[int, ...], attention: nn.Module
    ) -> None:
        super().__init__()
        self.bottleneck: nn.Module = nn.Identity()
        width = in_channels
        if in_channels > 1:
            self.bottleneck, width = nn.Conv1d(in_channels, bottleneck, 1, bias=False), bottleneck
        self.branches = nn.ModuleList(SameConv1d(width, filters, k, bias=False) for k in kernels)
        self.pool_conv = nn.Conv1d(in_channels, filters, 1, bias=False)
        self.bn = nn.BatchNorm1d(filters * (len(kernels) + 1))
        self.act = nn.ReLU()
        self.attention = attention

    def forward(self, x: Tensor) -> Tensor:
        inner = self.bottleneck(x)
        outs = [branch(inner) for branch in self.branches]
        outs.append(self.pool_conv(same_max_pool(x, 3)))
        out: Tensor = self.attention(self.act(self.bn(torch.cat(outs, dim=1))))
        return out


class InceptionBlock(nn.Module):
    """Three inception modules, then + shortcut (1x1 conv without bias, BN) and ReLU: one residual unit."""

    def __init__(self, in_channels: int, modules: list[InceptionModule]) -> None:
        super().__init__()
        self.inception = nn.Sequential(*modules)
        width = modules[-1].bn.num_features
        self.shortcut = nn.Sequential(nn.Conv1d(in_channels, width, 1, bias=False), nn.BatchNorm1d(width))
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.act(self.inception(x) + self.shortcut(x))
        return out


class InceptionTime(nn.Module):
    """One InceptionTime network: 6 inception modules (32 filters per branch), a shortcut every 3, GAP, linear head.

    Kernels 40/20/10 as the reference code builds them (``kernel_size=41`` minus one, halved twice),
    padded like Keras' 'same' (one more on the right for even kernels, see ``SameConv1d``). The
    published classifier is an ensemble of five of these; this is one member.
    """

    DEPTH = 6
    RESIDUAL_EVERY = 3
    FILTERS = 32
    BOTTLENECK = 32
    KERNELS = (40, 20, 10)

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        attention: str = "none",
        attention_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.config = _config(in_channels, num_classes, attention, attention_kwargs)
        kwargs = self.config["attention_kwargs"]
        width = self.FILTERS * (len(self.KERNELS) + 1)
        blocks: list[nn.Module] = []
        prev = in_channels
        for _ in range(self.DEPTH // self.RESIDUAL_EVERY):
            modules = [
                InceptionModule(
                    prev if i == 0 else width,
                    self.FILTERS,
                    self.BOTTLENECK,
                    self.KERNELS,
                    _attention(attention, width, kwargs),
                )
                for i in range(self.RESIDUAL_EVERY)
            ]
            blocks.append(InceptionBlock(prev, modules))
            prev = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``lengths`` (B,): real steps of each series in a batch padded at the end (see the module doc)."""
        return masked_head(self.blocks, self.head, x, lengths)
