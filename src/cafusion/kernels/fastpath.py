"""When the fast path applies, and the call that runs it with the functional form's signature.

The custom op covers torch.compile (and torch.export with impl="fast"), an autograd.Function with the
same math covers eager mode (``eager``). Everything that needs
to see the block as ordinary torch ops gets the reference composite instead: TorchScript, the
TorchScript-based tracers and ONNX export (which cannot translate a custom op), autocast (which
must pick each matmul's precision), and functorch transforms (vmap/grad have no rule for the op).
"""

from __future__ import annotations

import torch
from torch import Tensor

from cafusion._dtypes import FLOAT_DTYPES, compute_dtype
from cafusion.kernels import small
from cafusion.kernels.eager import FusedChannelAttention
from cafusion.kernels.op import caft_forward, fused_forward


def _functorch_active() -> bool:
    """True inside vmap/grad/jacrev; a private probe, so a torch without it counts as 'not active'."""
    if torch.compiler.is_compiling():  # dynamo answers this probe with its own tracing state
        return False
    peek = getattr(torch._C._functorch, "peek_interpreter_stack", None)
    return peek is not None and peek() is not None


def blocker(x: Tensor, weights: list[Tensor | None], temperature: Tensor | float, impl: str = "fast") -> str | None:
    """Why the fast path cannot (or, for impl="auto", should not) run this call; None when it runs.

    ``weights``: the MLP and router tensors. Under torch.export, "auto" records the composite: an
    exported program of plain ATen ops decomposes and runs anywhere (ExecuTorch, AOTInductor, ONNX),
    while one holding the custom op needs cafusion at run time. impl="fast" exports the op.
    """
    if torch.jit.is_scripting() or torch.jit.is_tracing():  # type: ignore[attr-defined,no-untyped-call]
        return "TorchScript scripting/tracing is active"
    if torch.compiler.is_compiling():  # dynamo/export tracing: the only time ONNX (dynamo) export can be on
        if impl == "auto" and torch.compiler.is_exporting():
            return "torch.export is active (impl='auto' exports the portable composite)"
        if torch.onnx.is_in_onnx_export():
            return "ONNX export is active"
    if torch.is_autocast_enabled(x.device.type):
        return "autocast is enabled"
    if _functorch_active():
        return "a functorch transform (vmap/grad/jacrev) is active"
    if x.dtype not in FLOAT_DTYPES:
        return f"x has dtype {x.dtype}"
    present = [t for t in weights if t is not None]
    dtype = present[0].dtype
    if any(t.dtype != dtype for t in present):
        return "the weights have different dtypes"
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1:
            return f"temperature has {temperature.numel()} elements, not 1"
        present.append(temperature)
    # is_cpu is a flag; .device builds an object (~0.4 µs each, ten of them per call at small maps)
    if any(not t.is_cpu for t in present) if x.is_cpu else any(t.device != x.device for t in present):
        return "the weights, temperature and x are on different devices"
    return None


def channel_attention_fusion_fast(
    x: Tensor, weights: list[Tensor | None], temperature: Tensor | float, fusion: str, gate: str, act: str
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(y, ca (B, C, 1, ...), fusion_w or None) through the custom op; arguments already validated.

    ``weights``: fc1 weight/bias, fc2 weight/bias, router layer 1 weight/bias, layer 2 weight/bias.
    """
    fc1_weight, fc1_bias, fc2_weight, fc2_bias, router1_weight, router1_bias, router2_weight, router2_bias = weights
    assert fc1_weight is not None and fc2_weight is not None
    if not isinstance(temperature, Tensor):
        dtype = compute_dtype(x.dtype, fc1_weight.dtype)
        temperature = torch.tensor(temperature, dtype=dtype, device=x.device)
    if fusion == "sum":  # the router does not take part; its tensors must get no gradient at all
        router1_weight = router1_bias = router2_weight = router2_bias = None
    grad = torch.is_grad_enabled()
    need_index = grad and x.requires_grad
    args = (fc1_weight, fc1_bias, fc2_weight, fc2_bias, router1_weight, router1_bias, router2_weight, router2_bias)
    fusion_w: Tensor | None
    if torch.compiler.is_compiling():  # torch.compile / torch.export: the op with fake kernels
        y, ca, fusion_w, _, _, _ = caft_forward(x, *args, temperature, fusion, gate, act, need_index)
    elif grad and any(t is not None and t.requires_grad for t in (x, *args, temperature)):
        # eager training: the same math as an autograd.Function, without the op's dispatch overhead
        y, ca, fusion_w = FusedChannelAttention.apply(x, *args, temperature, fusion, gate, act, need_index)
    else:  # nothing to differentiate (inference): no graph node at all
        p = small.Params(*args, temperature)
        y, ca, fusion_w, *_ = fused_forward(x, p, fusion, gate, act, False)
    ca = ca.view(ca.shape + (1,) * (x.dim() - 2))
    return y, ca, fusion_w if fusion == "softmax" else None
