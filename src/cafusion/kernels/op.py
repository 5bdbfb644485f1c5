"""The block as one operator, ``cafusion::caft_forward`` with its gradient ``cafusion::caft_backward``.

The schema is defined here, once. Each dispatch key gets one kernel:

- ``CompositeExplicitAutograd``: the PyTorch backend (``backends.pytorch``), for any device without a
  kernel of its own: the CPU when the native kernels are not built, CUDA without Triton, others.
- ``CPU``: the native C++ backend (``backends.native``), registered by the compiled library when it loads.
- ``CUDA``: the Triton backend (``backends.triton``).
- fake (Meta): output shapes, for torch.compile and torch.export.
- ``Autograd``: the formula below (save x, the statistics and the argmax; call ``caft_backward``).
  The native library registers the same formula in C++ for ``AutogradCPU``: through Python a step costs
  ~9 µs more than even an ``autograd.Function`` (docs/performance.md), per block and step.
- ``AutocastCPU``/``AutocastCUDA``: run with x in its own dtype and the small path in float32 (the op
  already computes the small path in at least float32), instead of letting autocast cast x.

``valid`` is the padding of a padded batch: a (B, N) boolean mask of real positions, or the (B,)
integer lengths of a (B, C, L) x (``cafusion.masking.valid_arg``); every kernel range-checks lengths
before any work, and the native one pools each row's real prefix without building a mask.

Only x, y, dy and dx are full-size: nothing full-size is saved for the backward but x itself.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cafusion._dtypes import compute_dtype
from cafusion.functional.composite import FusionOutput
from cafusion.kernels.backends import native, pytorch, triton
from cafusion.kernels.contract import (
    N_WEIGHTS,
    SCHEMA_OPTIONS,
    SCHEMA_WEIGHTS,
    Backend,
    Gradients,
    Options,
    Outputs,
    Saved,
    Weights,
)
from cafusion.kernels.double_backward import differentiable_backward

BACKENDS: tuple[Backend, ...] = (native, pytorch, triton)  # mypy holds each backend module to the contract


def _tensors(names: tuple[str, ...]) -> str:
    return ", ".join(["Tensor"] * len(names))


_lib: Any = torch.library.Library("cafusion", "DEF")  # type: ignore[no-untyped-call]
_lib.define(
    f"caft_forward(Tensor x, Tensor? valid, {SCHEMA_WEIGHTS}, {SCHEMA_OPTIONS}, bool need_index) "
    f"-> ({_tensors(Outputs._fields)})"
)
_lib.define(
    f"caft_backward(Tensor dy, Tensor? g_ca, Tensor? g_fusion_w, Tensor x, Tensor? valid, Tensor avg, Tensor mx, "
    f"Tensor idx, {SCHEMA_WEIGHTS}, {SCHEMA_OPTIONS}, bool need_x) -> ({_tensors(Gradients._fields)})"
)
caft_forward = torch.ops.cafusion.caft_forward.default
caft_backward = torch.ops.cafusion.caft_backward.default


# ---------------------------------------------------------------------------------------------------
# Kernels per device


def _any_backend(x: Tensor) -> Backend:
    """PyTorch; on the CPU the first call builds/loads the native library, which then takes over the CPU key."""
    return native if x.is_cpu and native.library() is not None else pytorch


def _cuda_backend(x: Tensor) -> Backend:
    return triton if triton.is_available(x) else pytorch


def _forward_args(args: tuple[Any, ...]) -> tuple[Weights, Options, bool]:
    """The op's flat arguments after (x, valid): the weights, the options, need_index."""
    return Weights.of(args), Options(*args[N_WEIGHTS : N_WEIGHTS + 3]), args[N_WEIGHTS + 3]


def _backward_args(args: tuple[Any, ...]) -> tuple[Saved, Weights, Options, bool]:
    """caft_backward's flat arguments after (dy, g_ca, g_fusion_w, x, valid)."""
    saved, rest = Saved(*args[:3]), args[3:]
    return saved, Weights.of(rest), Options(*rest[N_WEIGHTS : N_WEIGHTS + 3]), rest[N_WEIGHTS + 3]


def _forward_on(choose: Any) -> Any:
    def kernel(x: Tensor, valid: Tensor | None, *args: Any) -> tuple[Tensor, ...]:
        w, opts, need_index = _forward_args(args)
        return tuple(choose(x).forward(x, w, opts, need_index, valid))

    return kernel


def _backward_on(choose: Any) -> Any:
    def kernel(
        dy: Tensor, g_ca: Tensor | None, g_w: Tensor | None, x: Tensor, valid: Tensor | None, *args: Any
    ) -> tuple[Tensor, ...]:
        saved, w, opts, need_x = _backward_args(args)
        return tuple(choose(x).backward(dy, g_ca, g_w, x, saved, w, opts, need_x, valid))

    return kernel


_forward_any, _backward_any = _forward_on(_any_backend), _backward_on(_any_backend)
_forward_cuda, _backward_cuda = _forward_on(_cuda_backend), _backward_on(_cuda_backend)
_lib.impl("caft_forward", _forward_any, "CompositeExplicitAutograd")
_lib.impl("caft_backward", _backward_any, "CompositeExplicitAutograd")
_lib.impl("caft_forward", _forward_cuda, "CUDA")
_lib.impl("caft_backward", _backward_cuda, "CUDA")


@torch.library.register_fake("cafusion::caft_forward")  # type: ignore[untyped-decorator]
def _forward_fake(x: Tensor, valid: Tensor | None, *args: Any) -> tuple[Tensor, ...]:
    w, opts, need_index = _forward_args(args)
    fusion, fc1_w = opts.fusion, w.fc1_w
    b, c = x.shape[0], x.shape[1]
    acc = compute_dtype(x.dtype)
    dtype = compute_dtype(acc, fc1_w.dtype)
    y = pytorch.unflat(torch.empty_like(x.flatten(2)), x)
    fusion_w = x.new_empty((b, 2 if fusion == "softmax" else 0), dtype=dtype)
    index = x.new_empty((b, c) if need_index else (0,), dtype=torch.int64)
    ca = x.new_empty(pytorch.gate_shape(x))
    return y, ca, fusion_w, x.new_empty((b, c), dtype=acc), x.new_empty((b, c), dtype=acc), index


@torch.library.register_fake("cafusion::caft_backward")  # type: ignore[untyped-decorator]
def _backward_fake(
    dy: Tensor, g_ca: Tensor | None, g_w: Tensor | None, x: Tensor, valid: Tensor | None, *args: Any
) -> tuple[Tensor, ...]:
    _, w, _, need_x = _backward_args(args)
    dx = pytorch.unflat(torch.empty_like(dy.flatten(2)), x) if need_x else pytorch.empty(x)
    return (dx, *(pytorch.empty(x) if t is None else torch.empty_like(t) for t in w))


# ---------------------------------------------------------------------------------------------------
# Autograd (every device; the native library overrides AutogradCPU with the same formula in C++)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, valid, *params = inputs[: 2 + N_WEIGHTS]
    ctx.config = inputs[2 + N_WEIGHTS : 5 + N_WEIGHTS]
    ctx.need_x = bool(ctx.needs_input_grad[0])
    _, _, _, avg, mx, idx = output
    ctx.mark_non_differentiable(avg, mx, idx)
    ctx.save_for_backward(x, valid, avg, mx, idx, *params)


def _backward(ctx: Any, dy: Tensor | None, g_ca: Tensor | None, g_w: Tensor | None, *_: Any) -> tuple[Any, ...]:
    x, valid, avg, mx, idx, *params = ctx.saved_tensors
    fusion, gate, act = ctx.config
    if torch.is_grad_enabled():  # create_graph=True: the gradient itself must be differentiable
        dx, *grads = differentiable_backward(x, valid, *params, fusion, gate, act, dy, g_ca, g_w)
        return (dx, None, *grads, None, None, None, None)
    dy = torch.zeros_like(x) if dy is None else dy
    dx, *d_params = caft_backward(dy, g_ca, g_w, x, valid, avg, mx, idx, *params, fusion, gate, act, ctx.need_x)
    grads = [d if p is not None else None for d, p in zip(d_params, params, strict=True)]
    return (dx if ctx.need_x else None, None, *grads, None, None, None, None)


torch.library.register_autograd("cafusion::caft_forward", _backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------------
# Autocast: x keeps its dtype (the big passes run in it); the small path computes in float32 or wider.


def _no_autocast(op: Any, key: torch._C.DispatchKey) -> Any:
    def kernel(*args: Any) -> Any:
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            return op(*args)

    return kernel


for _key in (torch._C.DispatchKey.AutocastCPU, torch._C.DispatchKey.AutocastCUDA):
    _lib.impl("caft_forward", _no_autocast(caft_forward, _key), _key.name)
    _lib.impl("caft_backward", _no_autocast(caft_backward, _key), _key.name)


# ---------------------------------------------------------------------------------------------------
# The call the dispatcher (cafusion.dispatch) makes


def run(x: Tensor, w: Weights, opts: Options, valid: Tensor | None = None) -> FusionOutput:
    """(y, ca (B, C, 1, ...), fusion_w or None) through the op; ``valid`` the padding of a padded batch: the
    (B, N) mask of real positions, or the (B,) lengths of a (B, C, L) x (``cafusion.masking.valid_arg``),
    which each kernel range-checks before any work.
    """
    if opts.fusion == "sum":  # the router does not take part; its tensors must get no gradient at all
        w = w.without_router()
    need_index = torch.is_grad_enabled() and x.requires_grad
    y, ca, fusion_w, *_ = caft_forward(x, valid, *w, *opts, need_index)
    return FusionOutput(y, ca, fusion_w if opts.fusion == "softmax" else None)
