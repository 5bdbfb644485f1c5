"""The block's small path is written once (``composite.attend``): the scripted layer, the router probes
and the PyTorch backend's backward all run it, so they agree with the composite exactly."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from cafusion.functional import composite
from cafusion.kernels.backends.pytorch import small
from cafusion.kernels.contract import SMALL_GRAD_NAMES, Options, Weights
from cafusion.layers.caft_layer import ChannelAttentionFusionTLayer

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")

CONFIGS = [("softmax", "sigmoid", "relu"), ("softmax", "hardsigmoid", "silu"), ("sum", "hardsigmoid", "relu")]


def _params(c: int, h: int, r: int, dtype: torch.dtype = torch.float64) -> Weights:
    def w(*shape: int) -> Tensor:
        return torch.randn(*shape, dtype=dtype)

    temperature = torch.randn((), dtype=dtype).exp()
    return Weights(w(h, c, 1, 1), w(h), w(c, h, 1, 1), w(c), w(r, 2 * c), w(r), w(2, r), w(2), temperature)


@pytest.mark.parametrize(("fusion", "gate", "act"), CONFIGS)
def test_scripted_layer_is_the_composite_bit_for_bit_ties_included(fusion: str, gate: str, act: str) -> None:
    """torch.jit.script compiles the composite itself: same bits (silu's gradient to the last bit), and the
    max's gradient goes to the first of tied positions, as in the eager composite (a copy with x.max(-1)
    would not promise that: a misplaced max gradient is off by whole units, not by 1e-16)."""
    torch.manual_seed(0)
    layer = ChannelAttentionFusionTLayer(8, reduction=2, fusion=fusion, gate=gate, act=act, impl="reference")
    layer.double()
    scripted = torch.jit.script(layer)
    x = torch.randint(-2, 3, (3, 8, 4, 5)).double().requires_grad_()  # many ties in each channel's max
    y_script, y_eager = scripted(x), layer(x)
    torch.testing.assert_close(y_script, y_eager, rtol=0, atol=0)
    (g_script,) = torch.autograd.grad(y_script.sum(), x)
    (g_eager,) = torch.autograd.grad(y_eager.sum(), x)
    # TorchScript differentiates silu by its own formula, eager by silu_backward's kernel: on some CPUs
    # (an AVX-512 Xeon) the two round differently in the last bit. Everything else is bit for bit.
    tol = 4e-16 if act == "silu" else 0.0
    torch.testing.assert_close(g_script, g_eager, rtol=tol, atol=tol)


@pytest.mark.parametrize(("fusion", "gate", "act"), CONFIGS)
def test_backward_is_autograd_of_attend_even_below_the_autograd_key(fusion: str, gate: str, act: str) -> None:
    """Inside the op's kernel autograd records nothing (the autograd keys are excluded, grad mode off in
    a backward); small.backward turns it back on and returns autograd's gradients of composite.attend."""
    torch.manual_seed(1)
    b, c = 4, 6
    p = _params(c, 3, 5)
    if fusion == "sum":
        p = p._replace(r1_w=None, r1_b=None, r2_w=None, r2_b=None)
    avg, mx = torch.randn(b, c, dtype=torch.float64), torch.randn(b, c, dtype=torch.float64)
    avg[1, 2] = float("nan")  # sample 1 turns NaN, the others stay exact
    g_ca, g_w = torch.randn(b, c, dtype=torch.float64), torch.randn(b, 2, dtype=torch.float64)
    with torch.no_grad(), torch._C._AutoDispatchBelowAutograd():
        fw = small.forward(avg, mx, p, Options(fusion, gate, act))
        got = small.backward(fw, p, g_ca, g_w if fusion == "softmax" else None, Options(fusion, gate, act))

    leaves = [None if t is None else t.clone().requires_grad_() for t in (avg, mx, *p)]
    s_avg, s_mx, fc1_w, fc1_b, fc2_w, fc2_b, r1_w, r1_b, r2_w, r2_b, temperature = leaves
    assert s_avg is not None and s_mx is not None and fc1_w is not None and fc2_w is not None
    assert temperature is not None
    ca, w = composite.attend(
        s_avg, s_mx, fc1_w, fc1_b, fc2_w, fc2_b, fusion, r1_w, r1_b, r2_w, r2_b, temperature, gate, act
    )
    outputs = [ca] if w is None else [ca, w]
    wanted = [t for t in leaves if t is not None]
    want = iter(torch.autograd.grad(outputs, wanted, [g_ca, g_w][: len(outputs)]))
    for name, g, leaf in zip(SMALL_GRAD_NAMES, got.flat(), leaves, strict=True):
        if leaf is None:
            assert g is None, name
            continue
        expected = next(want)
        assert g is not None and g.shape == leaf.shape and g.dtype == leaf.dtype, name
        torch.testing.assert_close(g, expected, rtol=0, atol=0, equal_nan=True, msg=name)
    assert not got.avg[[0, 2, 3]].isnan().any()
    if gate == "sigmoid":  # hardsigmoid's slope is 0 outside (-3, 3), and for NaN, as in torch
        assert got.avg[1].isnan().all()


def test_route_hook_changes_the_router_input_and_softmax() -> None:
    """``route``'s hook sees cat(avg, max) and the logits; what it returns is what the composite uses."""
    torch.manual_seed(2)
    p = _params(4, 2, 3)
    avg, mx = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    seen: dict[str, Tensor] = {}

    class Hook:
        def router_input(self, router_in: Tensor) -> Tensor:
            seen["input"] = router_in
            return 2 * router_in

        def router_softmax(self, logits: Tensor) -> Tensor:
            seen["logits"] = logits
            return torch.full_like(logits, 0.5)

    assert p.r1_w is not None and p.r2_w is not None
    w = composite.route(avg, mx, p.r1_w, p.r1_b, p.r2_w, p.r2_b, Hook())
    torch.testing.assert_close(seen["input"], torch.cat([avg, mx], 1), rtol=0, atol=0)
    plain_logits = torch.log(composite.route(2 * avg, 2 * mx, p.r1_w, p.r1_b, p.r2_w, p.r2_b))
    torch.testing.assert_close(seen["logits"].log_softmax(1), plain_logits)
    assert torch.equal(w, torch.full((5, 2), 0.5, dtype=torch.float64))
