"""The backend contract, written once: what every backend of the op takes and returns, as types.

The op ``cafusion::caft_forward``/``caft_backward`` passes the block's nine parameters, its three
options and the saved statistics as flat arguments (a schema has no structs). Everything above the
schema sees them as the named tuples here, and every backend (``backends.native``, ``backends.pytorch``,
``backends.triton``) is a module that satisfies ``Backend``: mypy checks each one against it
(``cafusion.kernels.op.BACKENDS``). The C++ kernels hold the same weights in ``struct Params``
(``native/common.h``). This is the only file that knows the order of the weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from cafusion._dtypes import compute_dtype
from cafusion.functional import composite


class Weights(NamedTuple):
    """The block's parameters in the op's order; conv-shaped (out, in, 1, ...) weights are fine."""

    fc1_w: Tensor
    fc1_b: Tensor | None
    fc2_w: Tensor
    fc2_b: Tensor | None
    r1_w: Tensor | None
    r1_b: Tensor | None
    r2_w: Tensor | None
    r2_b: Tensor | None
    temperature: Tensor

    @classmethod
    def of(cls, args: Sequence[object]) -> Weights:
        """The weights from the op's flat arguments (the first ``len(Weights._fields)`` of ``args``)."""
        return cls(*args[:N_WEIGHTS])  # type: ignore[arg-type]

    @classmethod
    def build(cls, matrices: Sequence[Tensor | None], temperature: Tensor | float, x: Tensor) -> Weights:
        """The op's weights from the public signature's eight (fc1, fc2, router layers 1 and 2: weight,
        bias) and a temperature, a float one becoming a 0-d tensor in the compute dtype on x's device."""
        fc1_w = matrices[0]
        assert fc1_w is not None
        if not isinstance(temperature, Tensor):
            temperature = torch.tensor(temperature, dtype=compute_dtype(x.dtype, fc1_w.dtype), device=x.device)
        return cls(*matrices, temperature)  # type: ignore[arg-type,call-arg]

    def without_router(self) -> Weights:
        """Sum fusion: the router takes no part, so its tensors must get no gradient at all."""
        return self._replace(r1_w=None, r1_b=None, r2_w=None, r2_b=None)


N_WEIGHTS = len(Weights._fields)  # the eight matrices and biases, then the temperature
OPTIONAL = ("fc1_b", "fc2_b", "r1_w", "r1_b", "r2_w", "r2_b")
SCHEMA_WEIGHTS = ", ".join(f"Tensor{'?' if name in OPTIONAL else ''} {name}" for name in Weights._fields)


class Options(NamedTuple):
    """The block's switches: fusion "sum"/"softmax", gate "sigmoid"/"hardsigmoid", act "relu"/"silu"."""

    fusion: str
    gate: str
    act: str


SCHEMA_OPTIONS = ", ".join(f"str {name}" for name in Options._fields)


def attend(avg: Tensor, mx: Tensor, w: Weights, opts: Options) -> tuple[Tensor, Tensor | None]:
    """The composite's small path (``composite.attend``) on (B, C) statistics: (ca, fusion_w or None)."""
    return composite.attend(
        avg, mx, w.fc1_w, w.fc1_b, w.fc2_w, w.fc2_b, opts.fusion, w.r1_w, w.r1_b, w.r2_w, w.r2_b, w.temperature,
        opts.gate, opts.act,
    )  # fmt: skip


def reference(
    x: Tensor, matrices: Sequence[Tensor | None], temperature: Tensor | float, opts: Options, mask: Tensor | None
) -> composite.FusionOutput:
    """The whole block as the composite computes it, from the eight weights in ``Weights``' order and a
    temperature (a float stays a float there); ``mask``: the (B, N) real positions, or None."""
    fc1_w, fc1_b, fc2_w, fc2_b, r1_w, r1_b, r2_w, r2_b = matrices
    assert fc1_w is not None and fc2_w is not None
    return composite.channel_attention_fusion(
        x, fc1_w, fc1_b, fc2_w, fc2_b, opts.fusion, r1_w, r1_b, r2_w, r2_b, temperature, opts.gate, opts.act, mask
    )


class Outputs(NamedTuple):
    """The forward's results: y, ca (B, C, 1, ...) (x's rank), fusion_w (B, 2) or (B, 0), and what the backward needs:
    the (B, C) mean and max in the compute dtype and the first argmax (int64, or empty when no
    gradient is needed)."""

    y: Tensor
    ca: Tensor
    fusion_w: Tensor
    avg: Tensor
    mx: Tensor
    idx: Tensor


class Saved(NamedTuple):
    """The forward's statistics, saved for the backward."""

    avg: Tensor
    mx: Tensor
    idx: Tensor


class SmallGrads(NamedTuple):
    """The small path's gradients: of the (B, C) statistics, and ``weights``, one per weight in its dtype
    and shape (None where the weight is absent or, with sum fusion, takes no part)."""

    avg: Tensor
    mx: Tensor
    weights: Weights

    def flat(self) -> tuple[Tensor | None, ...]:
        """avg, mx, then the weights' gradients in the op's order: ``SMALL_GRAD_NAMES``, for comparisons."""
        return (self.avg, self.mx, *self.weights)


SMALL_GRAD_NAMES = ("avg", "mx", *Weights._fields)


class Gradients(NamedTuple):
    """dx (empty when x needs none), then one gradient per weight (empty where the weight is absent)."""

    dx: Tensor
    fc1_w: Tensor
    fc1_b: Tensor
    fc2_w: Tensor
    fc2_b: Tensor
    r1_w: Tensor
    r1_b: Tensor
    r2_w: Tensor
    r2_b: Tensor
    temperature: Tensor

    @classmethod
    def of(cls, dx: Tensor, g: SmallGrads, empty: Callable[[], Tensor]) -> Gradients:
        """dx and the small path's weight gradients, ``empty()`` standing in for absent ones (an op
        returns no None)."""
        return cls(dx, *(empty() if t is None else t for t in g.weights))


class Backend(Protocol):
    """A backend module: the op's forward and its hand-written backward, the same names everywhere.

    ``valid``: the padding of a padded batch, a (B, N) bool mask or the (B,) lengths of a (B, C, L)
    x (``cafusion.masking.valid_arg``), range-checked by the backend before any work; None without.
    """

    def forward(
        self, x: Tensor, w: Weights, opts: Options, need_index: bool, valid: Tensor | None = None
    ) -> Outputs: ...

    def backward(
        self,
        dy: Tensor,
        g_ca: Tensor | None,
        g_w: Tensor | None,
        x: Tensor,
        saved: Saved,
        w: Weights,
        opts: Options,
        need_x: bool,
        valid: Tensor | None = None,
    ) -> Gradients: ...
