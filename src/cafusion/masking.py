"""Padded batches: which positions of a (B, C, *spatial) map are real, and statistics over those only.

Two ways to say it, both absolute (never guessed from the data):

- ``lengths``: an integer tensor (B,) of valid lengths along the LAST dim (NeMo's ``SqueezeExcite(x,
  lengths)`` convention), for (B, C, L) signals padded at the end; every length in [1, L].
- ``mask``: a boolean tensor (B, *spatial), True where the position is real, for 2D/3D maps or padding
  anywhere; every sample needs at least one True.

SpeechBrain's relative lengths (fractions of L) are not accepted: a float tensor of lengths is refused
rather than interpreted, since 0.5 could mean half of L or a bug. Convert with ``(rel * L).round().long()``.

Both become one (B, N) boolean ``valid`` over the flattened spatial positions, which every
implementation (the composite, each backend, the baselines) takes; the operator also takes the lengths
of a (B, C, L) batch as they are (``valid_arg``), which its native CPU kernel pools without a mask.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from cafusion._validation import checks_run


def valid_mask(x: Tensor, lengths: Tensor | None = None, mask: Tensor | None = None) -> Tensor | None:
    """The (B, N) boolean mask of real positions of x (B, C, *spatial), or None when everything is real.

    Checks the arguments before any work and raises a one-line error naming the wrong one.
    """
    return as_mask(valid_arg(x, lengths, mask), x)


def valid_arg(x: Tensor, lengths: Tensor | None = None, mask: Tensor | None = None) -> Tensor | None:
    """The padding in the form the operator takes: ``lengths`` itself for a (B, C, L) x, else the mask.

    Building a (B, L) mask from lengths costs a third of a small block's forward (13 µs against 36 µs
    at 32x16x16, ``scripts/profile_padding.py``), and the native kernels pool a prefix directly. So lengths
    travel as they are, checked here for everything but their values, which whoever uses them checks
    before any work (``as_mask`` below, or the native kernel with the same message).
    """
    if lengths is not None and mask is not None:
        raise ValueError("pass either lengths (B,) or mask (B, *spatial), not both")
    if lengths is None and mask is None:
        return None
    b, spatial = x.shape[0], tuple(x.shape[2:])
    if lengths is not None:
        if not isinstance(lengths, Tensor):
            raise TypeError(f"lengths must be an integer torch.Tensor of shape ({b},), got {type(lengths).__name__}")
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.is_complex():
            raise TypeError(
                f"lengths must hold integer (absolute) lengths, got dtype {lengths.dtype}; for relative lengths "
                "convert with (rel * L).round().long()"
            )
        if lengths.dim() != 1 or (checks_run() and lengths.shape[0] != b):
            raise ValueError(f"lengths must have shape ({b},) (one length per sample), got {tuple(lengths.shape)}")
        if lengths.is_cpu != x.is_cpu or (not x.is_cpu and lengths.device != x.device):
            raise ValueError(f"lengths must be on x's device ({x.device}), got {lengths.device}")
        return lengths if x.dim() == 3 else as_mask(lengths, x)
    assert mask is not None
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a boolean torch.Tensor of shape {(b, *spatial)}, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must have dtype torch.bool (True = real position), got {mask.dtype}")
    if checks_run() and tuple(mask.shape) != (b, *spatial):
        raise ValueError(f"mask must have shape {(b, *spatial)} (B, *spatial of x), got {tuple(mask.shape)}")
    if mask.device != x.device:
        raise ValueError(f"mask must be on x's device ({x.device}), got {mask.device}")
    valid = mask.reshape(b, -1)
    if checks_run() and b and not bool(valid.any(dim=1).all()):
        empty = int((~valid.any(dim=1)).nonzero()[0].item())
        raise ValueError(f"mask has no True position for sample {empty}: every sample needs at least one")
    return valid


def as_mask(valid: Tensor | None, x: Tensor, *, check: bool = True) -> Tensor | None:
    """``valid_arg``'s result as the (B, N) boolean mask; lengths (B,) are range-checked here first
    (``check=False`` in a backward, whose forward checked them: the check syncs a GPU)."""
    if valid is None or valid.dtype == torch.bool:
        return valid
    b, spatial = x.shape[0], tuple(x.shape[2:])
    size = spatial[-1]
    if check and checks_run() and b and not bool(((valid >= 1) & (valid <= size)).all()):
        bad = valid[(valid < 1) | (valid > size)][0].item()
        raise ValueError(f"lengths must lie in [1, {size}] (the last dim of x), got {bad}")
    positions = torch.arange(size, device=x.device)
    last = positions.view((1,) * len(spatial) + (size,)) < valid.view((b,) + (1,) * len(spatial))
    return last.expand((b, *spatial)).reshape(b, -1)


def masked_mean(x: Tensor, valid: Tensor, dtype: torch.dtype) -> Tensor:
    """Per-channel mean over the real positions, (B, C) in ``dtype``; padding values (even NaN) never enter."""
    x3 = x.flatten(2)
    keep = valid.unsqueeze(1)
    total = torch.where(keep, x3, torch.zeros((), dtype=x3.dtype, device=x3.device)).sum(dim=2, dtype=dtype)
    return total / valid.sum(dim=1, keepdim=True).to(dtype)


def masked_max(x: Tensor, valid: Tensor) -> Tensor:
    """Per-channel max over the real positions, (B, C); its gradient goes to the first maximal real position."""
    x3 = x.flatten(2)
    low = torch.full((), float("-inf"), dtype=x3.dtype, device=x3.device)
    return F.adaptive_max_pool1d(torch.where(valid.unsqueeze(1), x3, low), 1).squeeze(2)


# ---------------------------------------------------------------------------------------------------
# Lengths through models that pass one tensor (nn.Sequential, timm/torchvision blocks)


class _Padding(threading.local):
    """The enclosing ``padding`` block's (lengths, mask, length) in this thread, or None. A class-level
    default, so that the lookup on every layer call outside a block raises (and swallows) no AttributeError."""

    value: tuple[Tensor | None, Tensor | None, int | None] | None = None


_current = _Padding()


@contextlib.contextmanager
def padding(lengths: Tensor | None = None, mask: Tensor | None = None, *, length: int | None = None) -> Iterator[None]:
    """Within this block, every cafusion attention layer called without its own lengths/mask uses these.

    ``nn.Sequential`` and model zoos pass one tensor from layer to layer, so the padding cannot travel
    with it. ``lengths`` are measured on the model input's last axis of ``length`` positions (its padded
    length); a layer whose last axis a strided layer shortened to L' gets ceil(len * L' / length), the
    usual rule for 'same'-padded convolutions. Without ``length`` the lengths are used as they are
    (clamped to the layer's axis). A mask is only used by layers whose spatial shape equals it.
    Thread-local, so data-parallel threads do not see each other's batches.
    """
    previous = _current.value
    _current.value = (lengths, mask, length)
    try:
        yield
    finally:
        _current.value = previous


def current(x: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """The (lengths, mask) of the enclosing ``padding`` block, adapted to x's shape (or (None, None))."""
    value = _current.value
    if value is None:
        return None, None
    lengths, mask, full = value
    if lengths is not None:
        return scale_lengths(lengths, x.shape[-1], full), None
    if mask is not None and tuple(mask.shape[1:]) == tuple(x.shape[2:]) and mask.shape[0] == x.shape[0]:
        return None, mask
    return None, None


def scale_lengths(lengths: Tensor, size: int, full: int | None) -> Tensor:
    """Lengths measured on an axis of ``full`` positions, mapped onto one of ``size`` (strided layers).

    ceil(len * size / full) is exact for 'same'-padded strided convolutions; floor-mode pooling of an odd
    padded length keeps fewer real positions (length 5 of 7 pooled by 2: 2, not 3), so a model with such
    pooling passes its own exact lengths to each layer (as ``SmallCNN`` does).
    """
    if full is None or full == size:
        return lengths.clamp(1, size)
    return torch.div(lengths * size + full - 1, full, rounding_mode="floor").clamp(1, size)
