"""The fast path (the operator ``cafusion::caft_forward`` and its hand-written backward) through the
public block: what reaches the op, and what the dispatcher (``cafusion.dispatch``) does around it.

The parity of every backend in every configuration, rank, layout and dtype against the reference
composite is tests/test_backends.py's; here each check runs the same block twice, switching only
``impl``, under the same upstream gradients for y, ca and fusion_w, and compares outputs and the
gradients of x and every parameter, for the cases that are about the block and the op themselves:
ties, empty and 1-position maps, partial upstream gradients, mixed dtypes, autocast, TorchScript,
functorch, torch.compile and torch.export, the op's registrations (opcheck) and its autograd node.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from cafusion import ChannelAttentionFusionT
from cafusion.functional import channel_attention_fusion
from tests import opcall

TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-6),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (2e-3, 2e-3),
}


def run(
    block: ChannelAttentionFusionT,
    x: Tensor,
    impl: str,
    upstream: str = "all",
    call: Callable[..., Any] | None = None,
    state: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Forward (through ``call``, default the block) + backward with ``impl``; outputs and gradients by name."""
    if state is not None:
        block.load_state_dict({k: v.to(next(block.parameters()).dtype) for k, v in state.items()})
    block.impl = impl
    block.zero_grad(set_to_none=True)
    xin = x.detach().clone().requires_grad_(True)
    outs = (block if call is None else call)(xin)
    gen = torch.Generator().manual_seed(7)
    loss = torch.zeros((), dtype=torch.float64)
    result: dict[str, Tensor] = {}
    for name, t in zip(("y", "ca", "fusion_w"), outs, strict=False):
        result[name] = t.detach()
        if upstream == "all" or upstream == name:
            g = torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)
            loss = loss + (t * g).sum().to(torch.float64)
    loss.backward()
    assert xin.grad is not None
    result["grad_x"] = xin.grad
    for pname, p in block.named_parameters():
        result["grad_" + pname] = torch.zeros_like(p) if p.grad is None else p.grad.clone()
    return result


def assert_same(fast: dict[str, Tensor], ref: dict[str, Tensor], dtype: torch.dtype) -> None:
    rtol, atol = TOL[dtype]
    assert fast.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(fast[name], ref[name], rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


def compare(block: ChannelAttentionFusionT, x: Tensor, upstream: str = "all") -> dict[str, Tensor]:
    fast = run(block, x, "fast", upstream)
    assert_same(fast, run(block, x, "reference", upstream), x.dtype)
    return fast


def make(channels: int = 16, dtype: torch.dtype = torch.float64, **cfg: Any) -> ChannelAttentionFusionT:
    cfg.setdefault("temperature", 0.7)
    return ChannelAttentionFusionT(channels, reduction=4, return_fusion_weights=True, dtype=dtype, **cfg)


@pytest.mark.parametrize("shape", [(2, 16, 5, 6), (2, 16, 3, 4, 6)], ids=["2d", "3d"])
def test_channels_last_outputs_and_gradients_keep_the_memory_format(shape: tuple[int, ...]) -> None:
    fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    x = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=fmt)
    fast = compare(make(fusion="softmax"), x)
    assert fast["y"].is_contiguous(memory_format=fmt)
    assert fast["grad_x"].is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("shape", [(2, 16, 5, 6), (2, 16, 3, 4, 6)], ids=["2d", "3d"])
def test_spatial_dims_that_do_not_flatten_into_a_view(shape: tuple[int, ...]) -> None:
    """Transposed spatial dims (no unit stride along the last one): a layout test_backends.py does not
    build (its strided maps still flatten), where the op must copy before its passes."""
    x = torch.randn(shape, dtype=torch.float64).transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not x.flatten(2)._is_view()  # flatten has to copy
    compare(make(fusion="softmax", learnable_temperature=True), x)


@pytest.mark.parametrize("upstream", ["all", "ca"])
def test_ties_in_the_max_send_the_gradient_to_the_first_position(upstream: str) -> None:
    x = torch.relu(torch.randn(2, 16, 6, 6, dtype=torch.float64))  # post-ReLU zeros
    x[:, :4] = 0.0  # all-zero channels: the max is tied at every position
    x[:, 4:8] = torch.randint(0, 3, (2, 4, 6, 6)).double()  # repeated integer maxima
    fast = compare(make(), x, upstream=upstream)
    if upstream == "ca":  # dy = 0: dx is the avg share everywhere plus the max share at position 0 only
        g = fast["grad_x"][:, :4].flatten(2)
        assert (g[..., 0] != g[..., 1]).all()
        assert (g[..., 1:] == g[..., 1:2]).all()


@pytest.mark.parametrize("shape", [(3, 16, 1, 1), (3, 16, 1), (0, 16, 4, 4)], ids=["hw1", "n1", "empty"])
def test_single_position_and_empty_batch(shape: tuple[int, ...]) -> None:
    fast = compare(make(), torch.randn(shape, dtype=torch.float64))
    assert fast["y"].shape == shape and fast["grad_x"].shape == shape


@pytest.mark.parametrize("upstream", ["y", "ca", "fusion_w"])
def test_gradient_through_one_output_only(upstream: str) -> None:
    compare(make(learnable_temperature=True), torch.randn(2, 16, 4, 4, dtype=torch.float64), upstream=upstream)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype: torch.dtype) -> None:
    block = make(dtype=torch.float32, fusion="softmax")
    x = torch.randn(2, 16, 6, 6).to(dtype)
    fast = compare(block, x)
    assert fast["y"].dtype == dtype and fast["grad_x"].dtype == dtype and fast["ca"].dtype == dtype
    assert fast["fusion_w"].dtype == torch.float32  # statistics and the small path stay in float32


def test_parameters_only_when_x_needs_no_gradient() -> None:
    block = make(learnable_temperature=True)
    x = torch.randn(2, 16, 5, 5, dtype=torch.float64)
    grads = {}
    for impl in ("fast", "reference"):
        block.impl = impl
        block.zero_grad(set_to_none=True)
        block(x)[0].square().sum().backward()
        grads[impl] = [p.grad.clone() for p in block.parameters() if p.grad is not None]
    assert len(grads["fast"]) == len(list(block.parameters()))
    for a, b in zip(grads["fast"], grads["reference"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_float64_weights_with_float32_input_run_the_small_path_in_float64() -> None:
    block = make(dtype=torch.float64)
    x = torch.randn(2, 16, 5, 5)
    fast = run(block, x, "fast")
    ref = run(block, x, "reference")
    assert fast["fusion_w"].dtype == torch.float64
    assert_same(fast, ref, torch.float32)


def test_functional_form_takes_impl() -> None:
    block = make(dtype=torch.float32)
    x = torch.randn(2, 16, 4, 4)
    args = (x, block.fc1.weight, block.fc1.bias, block.fc2.weight, block.fc2.bias)
    router = block.fusion_router
    assert router is not None
    kw: dict[str, Any] = {
        "router1_weight": router[0].weight,
        "router1_bias": router[0].bias,
        "router2_weight": router[2].weight,
        "router2_bias": router[2].bias,
        "temperature": 0.5,
    }
    fast = channel_attention_fusion(*args, impl="fast", **kw)
    ref = channel_attention_fusion(*args, impl="reference", **kw)
    for a, b in zip(fast, ref, strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="impl"):
        channel_attention_fusion(*args, impl="turbo", **kw)


def test_impl_is_validated_shown_and_kept_out_of_the_state_dict() -> None:
    with pytest.raises(ValueError, match="impl"):
        ChannelAttentionFusionT(8, impl="triton")
    with pytest.raises(TypeError, match="impl"):
        ChannelAttentionFusionT(8, impl=1)  # type: ignore[arg-type]
    block = ChannelAttentionFusionT(8, impl="reference")
    assert "impl=reference" in repr(block)
    assert ChannelAttentionFusionT(8).impl == "auto"
    assert not any("impl" in k for k in block.state_dict())


def test_default_runs_the_op_forward_and_backward_in_eager_mode() -> None:
    block = ChannelAttentionFusionT(8)
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    with torch.profiler.profile() as prof:
        block(x)[0].sum().backward()
    names = {e.name for e in prof.events()}
    assert "cafusion::caft_forward" in names and "cafusion::caft_backward" in names
    assert not any("max_pool" in n or "adaptive" in n for n in names)  # not the composite's pooling


def test_inference_runs_without_a_graph_node_and_matches_training_mode() -> None:
    """Nothing needs a gradient (no_grad, or frozen weights and a plain x): no autograd.Function, same y."""
    block = ChannelAttentionFusionT(16, reduction=4, return_fusion_weights=True, dtype=torch.float64)
    x = torch.randn(3, 16, 5, 5, dtype=torch.float64)
    trained = block(x.clone().requires_grad_(True))
    with torch.no_grad():
        inferred = block(x)
    for p in block.parameters():
        p.requires_grad_(False)
    frozen = block(x)
    for a, b, c in zip(trained, inferred, frozen, strict=True):
        assert b.grad_fn is None and c.grad_fn is None
        torch.testing.assert_close(b, a.detach(), rtol=0, atol=0)
        torch.testing.assert_close(c, a.detach(), rtol=0, atol=0)


def test_parametrized_weights_are_the_ones_used() -> None:
    """The block reads plain parameters straight from the submodules; a parametrization still applies."""
    from torch.nn.utils import parametrize

    class Double(torch.nn.Module):
        def forward(self, w: Tensor) -> Tensor:
            return 2 * w

    block = ChannelAttentionFusionT(16, reduction=4, dtype=torch.float64)
    plain = ChannelAttentionFusionT(16, reduction=4, dtype=torch.float64)
    plain.load_state_dict(block.state_dict())
    parametrize.register_parametrization(block.fc1, "weight", Double())
    parametrize.register_parametrization(block.fusion_router[2], "bias", Double())  # type: ignore[index]
    with torch.no_grad():
        plain.fc1.weight.mul_(2)
        plain.fusion_router[2].bias.mul_(2)  # type: ignore[index,union-attr]
    x = torch.randn(2, 16, 3, 3, dtype=torch.float64)
    for impl in ("auto", "reference"):
        block.impl = plain.impl = impl
        torch.testing.assert_close(block(x)[0], plain(x)[0], rtol=1e-12, atol=1e-12)


def test_backward_saves_no_full_size_tensor_beyond_x() -> None:
    block = ChannelAttentionFusionT(16, learnable_temperature=True)
    x = torch.randn(4, 16, 8, 8, requires_grad=True)
    saved: list[Tensor] = []

    def pack(t: Tensor) -> Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, _ = block(x)
    big = [t for t in saved if t.numel() >= x.numel()]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr()  # x itself; no copy, no y, no mask
    params = list(block.parameters())
    rest = [t for t in saved if t is not big[0] and not any(t is p for p in params)]
    b, c = x.shape[:2]
    assert rest and all(t.numel() <= 2 * b * max(c, block.fusion_router_hidden) for t in rest)  # (B, C)-sized
    y.sum().backward()
    assert x.grad is not None


def _op_calls(fn: Callable[[], object]) -> set[str]:
    """The cafusion operators that ran during fn (forward and backward)."""
    with torch.profiler.profile() as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith("cafusion::")}


def test_cpu_autocast_runs_the_op_on_x_in_its_own_dtype() -> None:
    """Under bf16 autocast the op runs (no cast of x, small path in float32): a float32 x gives exactly
    what it gives without autocast, which is the float32 reference within float32 tolerance."""
    block = make(dtype=torch.float32, learnable_temperature=True)
    x = torch.randn(2, 16, 5, 5)
    plain, ref = run(block, x, "fast"), run(block, x, "reference")
    got: dict[str, dict[str, Tensor]] = {}
    for impl in ("auto", "fast"):

        def step(impl: str = impl) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got[impl] = run(block, x, impl)

        assert _op_calls(step) == {"cafusion::caft_forward", "cafusion::caft_backward"}, impl
    for impl, out in got.items():
        assert out["y"].dtype == torch.float32 and out["fusion_w"].dtype == torch.float32, impl
        for name in plain:  # bit for bit: the very same kernels on the very same inputs
            assert torch.equal(out[name], plain[name]), (impl, name)
        assert_same(out, ref, torch.float32)


def test_cpu_autocast_with_bfloat16_x_matches_the_reference_within_bfloat16_rounding() -> None:
    """x coming out of an autocast conv is bf16: y, ca and dx stay bf16, fusion_w and the parameter
    gradients float32, all within bf16 tolerance of the reference on the same x without autocast."""
    block = make(dtype=torch.float32)
    x = torch.randn(2, 16, 6, 6).to(torch.bfloat16)
    ref = run(block, x, "reference")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = run(block, x, "fast")
    assert got["y"].dtype == got["ca"].dtype == got["grad_x"].dtype == torch.bfloat16
    assert got["fusion_w"].dtype == got["grad_fc1.weight"].dtype == torch.float32
    assert_same(got, ref, torch.bfloat16)


def test_jit_trace_records_the_reference_composite() -> None:
    block = ChannelAttentionFusionT(16).eval()
    x = torch.randn(2, 16, 4, 4)
    traced = torch.jit.trace(block, x)
    assert "caft_forward" not in str(traced.inlined_graph) and "max_pool" in str(traced.inlined_graph)
    torch.testing.assert_close(traced(x)[0], block(x)[0])


def test_functorch_transforms_fall_back() -> None:
    block = ChannelAttentionFusionT(16, impl="reference")
    x = torch.randn(3, 16, 4, 4)
    block.impl = "auto"
    out = torch.func.vmap(lambda xi: block(xi[None])[0][0])(x)
    torch.testing.assert_close(out, block(x)[0])


def test_torch_compile_fullgraph_forward_and_backward() -> None:
    """Dynamo and AOTAutograd trace the op with its fake kernels and autograd formula (eager graphs: inductor
    codegen is slow here): the forward graph holds caft_forward, the backward graph caft_backward, and
    neither the composite's pooling."""
    from torch._dynamo.backends.common import aot_autograd

    graphs: list[str] = []

    def keep(gm: torch.fx.GraphModule, example_inputs: list[Tensor]) -> Callable[..., Any]:
        graphs.append(gm.code)
        return gm.forward

    block = make(dtype=torch.float32, learnable_temperature=True)
    compiled = torch.compile(block, fullgraph=True, backend=aot_autograd(fw_compiler=keep, bw_compiler=keep))
    x = torch.randn(2, 16, 5, 5)
    got = run(block, x, "fast", call=compiled)
    assert_same(got, run(block, x, "reference"), torch.float32)
    forward, backward = graphs
    assert "cafusion.caft_forward" in forward and "caft_backward" not in forward
    assert "cafusion.caft_backward" in backward
    assert not any("max_pool" in g or "adaptive" in g for g in graphs)


@pytest.mark.parametrize("impl", ["fast", "auto"])
def test_torch_export(impl: str) -> None:
    """impl="fast" exports the custom op; "auto" exports the portable ATen composite."""
    block = make(dtype=torch.float32, impl=impl).eval()
    x = torch.randn(2, 16, 5, 5)
    ep = torch.export.export(block, (x,))
    assert ("cafusion.caft_forward" in ep.graph_module.code) == (impl == "fast")
    for a, b in zip(ep.module()(x), block(x), strict=True):
        torch.testing.assert_close(a, b)


def test_compiled_output_can_be_modified_in_place() -> None:
    """The op's y is not a view of an internal tensor, so a residual ``y += identity`` works."""
    block = make(dtype=torch.float32)
    x = torch.randn(2, 16, 5, 5, requires_grad=True)

    def residual(inp: Tensor) -> Tensor:
        y = block(inp)[0]
        y += inp
        return y

    compiled = torch.compile(residual, fullgraph=True, backend="eager")  # the op runs with its autograd
    compiled(x).sum().backward()
    assert x.grad is not None
    got = x.grad.clone()
    x.grad = None
    block.impl = "reference"
    residual(x).sum().backward()
    torch.testing.assert_close(got, x.grad)


def _op_inputs(fusion: str, need_index: bool) -> tuple[Tensor, list[Tensor | None]]:
    """x and the nine parameters of a small float32 block (no biases and no router for the sum fusion)."""
    block = make(dtype=torch.float32, fusion=fusion, bias=fusion == "softmax", learnable_temperature=True)
    x = torch.randn(2, 16, 3, 5, requires_grad=need_index)  # as op.run calls it: no argmax, no dx
    params = [None if t is None else t.detach().requires_grad_(True) for t in block._tensors()]
    if fusion == "sum":
        params[4:] = [None] * 4
    return x, [*params, block.get_T().detach().requires_grad_(True)]


OPCHECK_CASES = [("softmax", True), ("sum", True), ("softmax", False)]


def opcheck_all() -> int:
    """torch.library.opcheck on both ops (schema, fake kernels, autograd registration, AOT dispatch)
    for the kernels registered in this process; returns how many checks ran."""
    from cafusion.kernels import op

    count = 0
    for fusion, need_index in OPCHECK_CASES:
        config = (fusion, "hardsigmoid", "silu")
        x, params = _op_inputs(fusion, need_index)
        args = opcall.forward_args(x, params, config, need_index)
        torch.library.opcheck(op.caft_forward, args)
        y, ca, w, avg, mx, idx = op.caft_forward(*args)
        assert y.shape == x.shape and ca.shape == (2, 16, 1, 1) and w.shape == (2, 2 if fusion == "softmax" else 0)
        assert idx.shape == ((2, 16) if need_index else (0,))
        count += 1
        if need_index:
            g_w = torch.randn_like(w) if fusion == "softmax" else None
            plain = [None if t is None else t.detach() for t in params]
            back = opcall.backward_args(
                torch.randn_like(y), torch.randn_like(ca), g_w, x.detach(), (avg, mx, idx), plain, config, True
            )
            torch.library.opcheck(op.caft_backward, back)
            count += 1
    return count


def test_opcheck_with_the_kernels_registered_here() -> None:
    """The CPU kernels of this process: the native ones where they are built (CI), else the PyTorch backend."""
    assert opcheck_all() == 5


def test_opcheck_with_the_pytorch_backend() -> None:
    """CAFUSION_NATIVE=0: the CPU runs the CompositeExplicitAutograd kernel (the PyTorch backend) and the
    Python autograd formula; both must pass opcheck too."""
    code = "from tests.test_fastpath import opcheck_all; print('checked', opcheck_all())"
    env = {**os.environ, "CAFUSION_NATIVE": "0"}
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "checked 5"


def test_the_composite_imports_nothing_from_the_fast_path() -> None:
    """The ground truth stays independent of what it checks: the composite module, loaded on its own
    (the packages above it stubbed, since ``cafusion/__init__`` loads everything), brings in neither the
    kernels nor the dispatcher, and no import anywhere in its source (a lazy one in a function) names them."""
    import ast

    import cafusion.functional.composite as composite

    source = Path(str(composite.__file__))
    tree = ast.parse(source.read_text())
    named = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    named |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "cafusion._dtypes" in named  # the walk sees the module's imports
    assert not [m for m in named if m.startswith(("cafusion.kernels", "cafusion.dispatch", "cafusion.functional"))]
    code = (
        "import sys, types\n"
        f"root = {str(source.parents[1])!r}\n"
        "for name, path in (('cafusion', root), ('cafusion.functional', root + '/functional')):\n"
        "    pkg = types.ModuleType(name); pkg.__path__ = [path]; sys.modules[name] = pkg\n"
        "import cafusion.functional.composite as c\n"
        "assert c.channel_attention_fusion and 'cafusion._dtypes' in sys.modules\n"
        "print(sorted(m for m in sys.modules if m.startswith(('cafusion.kernels', 'cafusion.dispatch'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
