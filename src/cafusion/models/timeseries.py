"""FCN and ResNet for time-series classification (Wang et al. 2017, as benchmarked by Fawaz et al. 2019).

Both take (B, in_channels, L) and return (B, num_classes) logits. An attention block, chosen by
registry name, sits after each conv block of FCN (the squeeze-excite FCN of MLSTM-FCN, Karim et al.
2019) and after the last batch norm of each residual branch of ResNet, before the addition (the
SE-ResNet position). With ``attention="none"`` the models are the published baselines, and every
variant has the same backbone parameter names, so paired ablations can give all of them the same
initial backbone weights.

Padded batches: ``forward(x, lengths)`` makes the result for each series what it would be alone,
unpadded (in eval mode): every convolution sees zeros past a series' end, as 'same' padding gives a
lone series, the attention blocks squeeze over real positions (``cafusion.masking.padding``) and the
head averages real positions only. Batch norm in training mode still pools statistics over the
padding, as it pools over the batch.
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


def _check_args(in_channels: int, num_classes: int, attention: str, attention_kwargs: Any) -> dict[str, Any]:
    check.positive_int("in_channels", in_channels)
    check.positive_int("num_classes", num_classes)
    if not isinstance(attention, str):
        raise TypeError(f"attention must be a registry name (str), got {attention!r}")
    if attention_kwargs is not None and not isinstance(attention_kwargs, Mapping):
        raise TypeError(f"attention_kwargs must be a mapping or None, got {type(attention_kwargs).__name__}")
    return dict(attention_kwargs or {})


class SameConv1d(nn.Conv1d):
    """Conv1d that keeps the length like Keras' ``padding='same'`` (an even kernel pads one more on the right).

    Torch's own ``padding="same"`` does the same but warns about an extra copy for even kernels; padding
    explicitly does that copy once, silently.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int) -> None:
        super().__init__(in_channels, out_channels, kernel)
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
    lengths, mask = masking.current(x)
    valid = masking.valid_mask(x, lengths, mask)
    if valid is None:
        return x
    keep = valid.view(x.shape[0], 1, *x.shape[2:])
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


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
        kwargs = _check_args(in_channels, num_classes, attention, attention_kwargs)
        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "attention": attention,
            "attention_kwargs": kwargs,
        }
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
        kwargs = _check_args(in_channels, num_classes, attention, attention_kwargs)
        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "attention": attention,
            "attention_kwargs": kwargs,
        }
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
