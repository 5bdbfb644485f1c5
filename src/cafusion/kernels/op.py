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
from cafusion.kernels.backends import native, pytorch, triton
from cafusion.kernels.backends.pytorch.small import Params
from cafusion.kernels.double_backward import differentiable_backward

_PARAMS = (
    "Tensor fc1_w, Tensor? fc1_b, Tensor fc2_w, Tensor? fc2_b, "
    "Tensor? r1_w, Tensor? r1_b, Tensor? r2_w, Tensor? r2_b, Tensor temperature"
)
_CONFIG = "str fusion, str gate, str act"
_N_PARAMS = len(Params._fields)

_lib: Any = torch.library.Library("cafusion", "DEF")  # type: ignore[no-untyped-call]
_lib.define(
    f"caft_forward(Tensor x, Tensor? valid, {_PARAMS}, {_CONFIG}, bool need_index) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)
_lib.define(
    f"caft_backward(Tensor dy, Tensor? g_ca, Tensor? g_fusion_w, Tensor x, Tensor? valid, Tensor avg, Tensor mx, "
    "Tensor idx, "
    f"{_PARAMS}, {_CONFIG}, bool need_x) -> ({', '.join(['Tensor'] * (1 + _N_PARAMS))})"
)
caft_forward = torch.ops.cafusion.caft_forward.default
caft_backward = torch.ops.cafusion.caft_backward.default


# ---------------------------------------------------------------------------------------------------
# Kernels per device


def _any_backend(x: Tensor) -> Any:
    """PyTorch; on the CPU the first call builds/loads the native library, which then takes over the CPU key."""
    return native if x.is_cpu and native.library() is not None else pytorch


def _forward_any(x: Tensor, valid: Tensor | None, *args: Any) -> tuple[Tensor, ...]:
    fusion, gate, act, need_index = args[_N_PARAMS:]
    out: tuple[Tensor, ...] = _any_backend(x).forward(
        x, Params(*args[:_N_PARAMS]), fusion, gate, act, need_index, valid
    )
    return out


def _backward_any(
    dy: Tensor, g_ca: Tensor | None, g_w: Tensor | None, x: Tensor, valid: Tensor | None, *args: Any
) -> tuple[Tensor, ...]:
    avg, mx, idx = args[:3]
    fusion, gate, act, need_x = args[3 + _N_PARAMS :]
    p = Params(*args[3 : 3 + _N_PARAMS])
    out: tuple[Tensor, ...] = _any_backend(x).backward(
        dy, g_ca, g_w, x, avg, mx, idx, p, fusion, gate, act, need_x, valid
    )
    return out


def _forward_cuda(x: Tensor, valid: Tensor | None, *args: Any) -> tuple[Tensor, ...]:
    fusion, gate, act, need_index = args[_N_PARAMS:]
    backend = triton if triton.is_available(x) else pytorch
    out: tuple[Tensor, ...] = backend.forward(x, Params(*args[:_N_PARAMS]), fusion, gate, act, need_index, valid)
    return out


def _backward_cuda(
    dy: Tensor, g_ca: Tensor | None, g_w: Tensor | None, x: Tensor, valid: Tensor | None, *args: Any
) -> tuple[Tensor, ...]:
    avg, mx, idx = args[:3]
    fusion, gate, act, need_x = args[3 + _N_PARAMS :]
    backend = triton if triton.is_available(x) else pytorch
    p = Params(*args[3 : 3 + _N_PARAMS])
    out: tuple[Tensor, ...] = backend.backward(dy, g_ca, g_w, x, avg, mx, idx, p, fusion, gate, act, need_x, valid)
    return out


_lib.impl("caft_forward", _forward_any, "CompositeExplicitAutograd")
_lib.impl("caft_backward", _backward_any, "CompositeExplicitAutograd")
_lib.impl("caft_forward", _forward_cuda, "CUDA")
_lib.impl("caft_backward", _backward_cuda, "CUDA")


@torch.library.register_fake("cafusion::caft_forward")  # type: ignore[untyped-decorator]
def _forward_fake(x: Tensor, valid: Tensor | None, fc1_w: Tensor, *args: Any) -> tuple[Tensor, ...]:
    fusion, need_index = args[_N_PARAMS - 1], args[-1]
    b, c = x.shape[0], x.shape[1]
    acc = compute_dtype(x.dtype)
    dtype = compute_dtype(acc, fc1_w.dtype)
    y = pytorch.unflat(torch.empty_like(x.flatten(2)), x)
    fusion_w = x.new_empty((b, 2 if fusion == "softmax" else 0), dtype=dtype)
    index = x.new_empty((b, c) if need_index else (0,), dtype=torch.int64)
    return y, x.new_empty((b, c)), fusion_w, x.new_empty((b, c), dtype=acc), x.new_empty((b, c), dtype=acc), index


@torch.library.register_fake("cafusion::caft_backward")  # type: ignore[untyped-decorator]
def _backward_fake(
    dy: Tensor, g_ca: Tensor | None, g_w: Tensor | None, x: Tensor, valid: Tensor | None, *args: Any
) -> tuple[Tensor, ...]:
    params, need_x = args[3 : 3 + _N_PARAMS], args[-1]
    dx = pytorch.unflat(torch.empty_like(dy.flatten(2)), x) if need_x else pytorch.empty(x)
    return (dx, *(pytorch.empty(x) if t is None else torch.empty_like(t) for t in params))


# ---------------------------------------------------------------------------------------------------
# Autograd (every device; the native library overrides AutogradCPU with the same formula in C++)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, valid, *params = inputs[: 2 + _N_PARAMS]
    ctx.config = inputs[2 + _N_PARAMS : 5 + _N_PARAMS]
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


def run(
    x: Tensor, params: list[Tensor | None], fusion: str, gate: str, act: str, valid: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(y, ca (B, C, 1, ...), fusion_w or None) through the op; ``params`` as ``Params`` orders them,
    ``valid`` the padding of a padded batch: the (B, N) mask of real positions, or the (B,) lengths of a
    (B, C, L) x (``cafusion.masking.valid_arg``), which each kernel range-checks before any work.
    """
    fc1_w, fc1_b, fc2_w, fc2_b, r1_w, r1_b, r2_w, r2_b, temperature = params
    if fusion == "sum":  # the router does not take part; its tensors must get no gradient at all
        r1_w = r1_b = r2_w = r2_b = None
    need_index = torch.is_grad_enabled() and x.requires_grad
    y, ca, fusion_w, *_ = caft_forward(
        x, valid, fc1_w, fc1_b, fc2_w, fc2_b, r1_w, r1_b, r2_w, r2_b, temperature, fusion, gate, act, need_index
    )
    ca = ca.view(ca.shape + (1,) * (x.dim() - 2))
    return y, ca, fusion_w if fusion == "softmax" else None
