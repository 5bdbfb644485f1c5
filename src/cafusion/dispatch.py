"""Which implementation runs a call of the block: the one place that decides.

Two implementations exist: the readable composite (``cafusion.functional.composite``, the ground truth)
and the operator ``cafusion::caft_forward`` (``cafusion.kernels.op``), whose kernel per device the
PyTorch dispatcher picks (native C++ on the CPU, Triton on CUDA, plain PyTorch elsewhere). ``impl``
says which one the caller wants: "reference" the composite, "fast" the op (an error where it cannot
run), "auto" the op wherever it applies. The op applies unless something needs the block as ordinary
torch ops: TorchScript and its tracer, ONNX export (no translation for a custom op), functorch
transforms (vmap/grad have no rule for it), or torch.export with impl="auto" (an exported program of
plain ATen ops runs anywhere, one holding the op needs cafusion at run time). Autocast runs the op.
On the CPU without the C++ kernels (no compiler, or ``CAFUSION_NATIVE=0``) "auto" takes the composite:
there the op would run its PyTorch backend, which measured slower than the composite.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cafusion import masking
from cafusion._dtypes import FLOAT_DTYPES
from cafusion.functional import composite
from cafusion.kernels import op
from cafusion.kernels.backends import native
from cafusion.kernels.contract import Options, Weights, reference

IMPLS = ("auto", "fast", "reference")


def cpu_kernels_ready() -> bool:
    """Build (first use on a machine) or load the C++ CPU kernels now; False where they cannot run.

    The dispatcher loads them on the first CPU call anyway; a caller that times what follows (the demo,
    benchmarks) calls this first, so that a one-time compile is not counted against any block.
    """
    return native.library() is not None


def _functorch_active() -> bool:
    """True inside vmap/grad/jacrev (not compiling: dynamo answers this probe with its own tracing
    state); a private probe, so a torch without it counts as 'not active'."""
    peek = getattr(torch._C._functorch, "peek_interpreter_stack", None)
    return peek is not None and peek() is not None


def blocker(x: Tensor, weights: list[Tensor | None], temperature: Tensor | float, impl: str = "fast") -> str | None:
    """Why the op cannot (or, for impl="auto", should not) run this call; None when it runs.

    ``weights``: the MLP and router weights and biases (absent ones None). An eager CPU call loads the
    C++ kernels here (``cpu_kernels_ready``), before the op's first call, so that they serve it.
    """
    if torch.jit.is_scripting() or torch.jit.is_tracing():  # type: ignore[attr-defined,no-untyped-call]
        return "TorchScript scripting/tracing is active"
    compiling = torch.compiler.is_compiling()
    if impl == "auto" and x.is_cpu and not compiling and not cpu_kernels_ready():
        # First, because every later check would pick the composite too: a CPU without the C++ kernels
        # takes it on every call, and the checks below cost ~5% of a small call there. Measured: the op's
        # PyTorch backend was slower than the composite in 9 of 12 rows of
        # `CAFUSION_NATIVE=0 cafusion bench --quick --sweep 1d,2d,3d` (0.67-0.98x).
        return "the C++ CPU kernels are not available (no compiler, or CAFUSION_NATIVE=0)"
    if compiling:
        if impl == "auto" and torch.compiler.is_exporting():
            return "torch.export is active (impl='auto' exports the portable composite)"
        if torch.onnx.is_in_onnx_export():
            return "ONNX export is active"
    elif _functorch_active():
        return "a functorch transform (vmap/grad/jacrev) is active"
    if x.dtype not in FLOAT_DTYPES:
        return f"x has dtype {x.dtype}"
    # Plain loops: any() over a generator cost a twelfth of a small block's whole forward. is_cpu is a
    # flag, .device builds an object.
    on_cpu, dtype = x.is_cpu, weights[0].dtype  # type: ignore[union-attr]
    for t in weights:
        if t is None:
            continue
        if t.dtype != dtype:
            return "the weights have different dtypes"
        if not t.is_cpu if on_cpu else t.device != x.device:
            return "the weights, temperature and x are on different devices"
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1:
            return f"temperature has {temperature.numel()} elements, not 1"
        if not temperature.is_cpu if on_cpu else temperature.device != x.device:
            return "the weights, temperature and x are on different devices"
    if impl != "auto" and x.is_cpu and not compiling:
        cpu_kernels_ready()  # impl="fast": load them now (auto did above), so that the op's first call runs them
    return None


def run(
    x: Tensor,
    weights: list[Tensor | None],
    temperature: Tensor | float,
    fusion: str,
    gate: str,
    act: str,
    impl: str,
    valid: Tensor | None = None,
) -> composite.FusionOutput:
    """Run the block with the implementation ``impl`` asks for; arguments already checked.

    ``weights``: fc1 weight/bias, fc2 weight/bias, router layer 1 weight/bias, layer 2 weight/bias.
    ``valid``: the padding of a padded batch as ``masking.valid_arg`` gives it ((B, N) mask, or (B,)
    lengths of a (B, C, L) x, checked but for their values), or None.
    """
    opts = Options(fusion, gate, act)
    if impl != "reference":
        reason = blocker(x, weights, temperature, impl)
        if reason is None:
            return op.run(x, Weights.build(weights, temperature, x), opts, valid)
        if impl == "fast":
            raise RuntimeError(f"impl='fast' cannot run here: {reason}; use impl='auto' or 'reference'")
    return reference(x, weights, temperature, opts, masking.as_mask(valid, x))
