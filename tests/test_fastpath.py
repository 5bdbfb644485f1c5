"""The fast path (custom op + hand-written backward) against the reference composite (impl="reference").

Each check runs the same block twice, switching only ``impl``, under the same upstream gradients for
y, ca and fusion_w, and compares outputs and the gradients of x and every parameter.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from cafusion import ChannelAttentionFusionT
from cafusion.functional import channel_attention_fusion

TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-6),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (2e-3, 2e-3),
}

AXES = {
    "fusion": ("sum", "softmax"),
    "gate": ("sigmoid", "hardsigmoid"),
    "act": ("relu", "silu"),
    "bias": (True, False),
    "learnable_temperature": (False, True),
}
CONFIGS = [dict(zip(AXES, v, strict=True)) for v in itertools.product(*AXES.values())]


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


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k[:5]}={v}" for k, v in c.items()))
def test_every_configuration_matches_reference_float64(cfg: dict[str, Any]) -> None:
    compare(make(**cfg), torch.randn(3, 16, 5, 6, dtype=torch.float64))


@pytest.mark.parametrize("cfg", CONFIGS[::3], ids=lambda c: "-".join(f"{k[:5]}={v}" for k, v in c.items()))
def test_configurations_match_reference_float32(cfg: dict[str, Any]) -> None:
    """Outputs and dx within rtol 1e-5/atol 1e-6; parameter gradients (sums over batch and space, where
    float32 rounding alone moves both paths by ~1e-6) no further from float64 truth than the reference,
    give or take a few float32 ulps of the gradient's magnitude (the two sum in different orders)."""
    block = make(dtype=torch.float32, **cfg)
    x = torch.randn(4, 16, 7, 7)
    fast, ref = run(block, x, "fast"), run(block, x, "reference")
    truth = run(make(dtype=torch.float64, **cfg), x.double(), "reference", state=block.state_dict())
    for name in ref:
        if name.startswith("grad_") and name != "grad_x":
            err_fast = (fast[name].double() - truth[name]).abs().max()
            err_ref = (ref[name].double() - truth[name]).abs().max()
            ulp = torch.finfo(torch.float32).eps * truth[name].abs().max()  # float32 spacing at the gradient's size
            assert err_fast <= 2 * err_ref + 1e-6 + 4 * ulp, (name, float(err_fast), float(err_ref))
        else:
            torch.testing.assert_close(fast[name], ref[name], rtol=1e-5, atol=1e-6)


LAYOUTS: dict[str, Callable[[Tensor], Tensor]] = {
    "contiguous": lambda x: x,
    "channels_last": lambda x: x.contiguous(
        memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    ),
    "transposed": lambda x: x.transpose(-1, -2).contiguous().transpose(-1, -2),
    "sliced": lambda x: x[..., ::2],
}


CASES = [(s, lay) for s in [(2, 16, 9), (2, 16, 5, 6), (2, 16, 3, 4, 6)] for lay in LAYOUTS]


@pytest.mark.parametrize(
    ("shape", "layout"), [c for c in CASES if not (len(c[0]) == 3 and c[1] == "channels_last")], ids=str
)
def test_ranks_and_layouts(shape: tuple[int, ...], layout: str) -> None:
    x = LAYOUTS[layout](torch.randn(shape, dtype=torch.float64))
    block = make(fusion="softmax")
    fast = compare(block, x)
    if layout == "channels_last":  # y and dx keep the input's memory format
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        assert fast["y"].is_contiguous(memory_format=fmt)
        assert fast["grad_x"].is_contiguous(memory_format=fmt)


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


def test_default_uses_the_fused_path_in_eager_mode() -> None:
    block = ChannelAttentionFusionT(8)
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    with torch.profiler.profile() as prof:
        block(x)[0].sum().backward()
    names = {e.name for e in prof.events()}
    assert "FusedChannelAttention" in names and "FusedChannelAttentionBackward" in names
    assert not any("max_pool" in n or "adaptive" in n for n in names)  # contiguous: max(dim), no pooling


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


def test_autocast_falls_back_to_the_reference_and_fast_refuses() -> None:
    block = ChannelAttentionFusionT(16)
    x = torch.randn(2, 16, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_auto = block(x)[0]
        block.impl = "reference"
        y_ref = block(x)[0]
        block.impl = "fast"
        with pytest.raises(RuntimeError, match="autocast"):
            block(x)
    torch.testing.assert_close(y_auto, y_ref, rtol=0, atol=0)


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
    """aot_eager traces through dynamo and AOTAutograd with the fake kernels (inductor codegen is slow here)."""
    block = make(dtype=torch.float32, learnable_temperature=True)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 16, 5, 5)
    got = run(block, x, "fast", call=compiled)
    assert_same(got, run(block, x, "reference"), torch.float32)


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


@pytest.mark.parametrize("fusion", ["sum", "softmax"])
def test_custom_op_path_matches_reference(fusion: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The op (what compile/export run) in eager mode, including its registered autograd formula."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with torch.profiler.profile() as prof:
        compare(make(fusion=fusion, learnable_temperature=True), torch.randn(3, 16, 5, 6, dtype=torch.float64))
    names = {e.name for e in prof.events()}
    assert "cafusion::caft_forward" in names and "cafusion::caft_backward" in names


def test_opcheck_fake_kernels_and_autograd_registration() -> None:
    block = make(dtype=torch.float32)
    router = block.fusion_router
    assert router is not None
    x = torch.randn(2, 16, 3, 5, requires_grad=True)
    weights = [block.fc1.weight, block.fc1.bias, block.fc2.weight, block.fc2.bias]
    weights += [router[0].weight, router[0].bias, router[2].weight, router[2].bias]
    args = (x, *weights, block.get_T(), "softmax", "sigmoid", "relu", True)
    torch.library.opcheck(torch.ops.cafusion.caft_forward.default, args)
