"""Run a block forward and backward under a fixed random upstream gradient and collect everything.

Both implementations get the same x, the same weights and the same upstream gradients for y, ca and
fusion_w, so comparing the returned dicts compares outputs and every gradient at once.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor, nn

CONFIG_AXES: dict[str, tuple[Any, ...]] = {
    "fusion": ("sum", "softmax"),
    "gate": ("sigmoid", "hardsigmoid"),
    "act": ("relu", "silu"),
    "bias": (True, False),
    "learnable_temperature": (False, True),
    "return_fusion_weights": (False, True),
}


def all_configs() -> list[dict[str, Any]]:
    """The 64 combinations of the reference's switches."""
    keys = list(CONFIG_AXES)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*CONFIG_AXES.values())]


def config_id(cfg: dict[str, Any]) -> str:
    return "-".join(f"{k[:5]}={v}" for k, v in cfg.items())


def run(module: nn.Module, x: Tensor, seed: int = 1, view_as: torch.Size | None = None) -> dict[str, Tensor]:
    """Forward + backward of ``module`` on a copy of x; returns outputs and gradients by name.

    ``view_as`` reshapes x before the call (to feed the 4-D reference the same data as a 1-D/3-D
    input); the x gradient is returned in x's original shape either way.
    """
    xin = x.detach().clone().requires_grad_(True)
    out = module(xin if view_as is None else xin.reshape(view_as))
    gen = torch.Generator().manual_seed(seed)
    loss = torch.zeros((), dtype=torch.float64)
    result: dict[str, Tensor] = {}
    for name, t in zip(("y", "ca", "fusion_w"), out, strict=False):
        flat = t.reshape(t.shape[0], -1) if name != "fusion_w" else t
        g = torch.randn(flat.shape, generator=gen, dtype=torch.float64).to(t.dtype)
        loss = loss + (flat * g).sum().to(torch.float64)
        result[name] = flat.detach()
    result["n_outputs"] = torch.tensor(len(out))
    loss.backward()
    assert xin.grad is not None
    result["grad_x"] = xin.grad.detach()
    for pname, p in module.named_parameters():
        result["grad_" + pname] = torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
    return result


def assert_same(ours: dict[str, Tensor], ref: dict[str, Tensor], rtol: float, atol: float) -> None:
    assert ours.keys() == ref.keys(), (sorted(ours), sorted(ref))
    for name in ref:
        torch.testing.assert_close(
            ours[name].reshape(ref[name].shape),
            ref[name],
            rtol=rtol,
            atol=atol,
            equal_nan=True,
            msg=lambda m, name=name: f"{name}: {m}",
        )


TOLERANCES = {torch.float32: (1e-5, 1e-6), torch.float64: (1e-10, 1e-10)}


def assert_same_or_more_accurate(
    ours: dict[str, Tensor], ref: dict[str, Tensor], exact: dict[str, Tensor], rtol: float, atol: float
) -> None:
    """Outputs as ``assert_same``; float32 gradients judged against a float64 run of the reference.

    A gradient that is a sum over the batch with cancellation (low temperatures amplify it) carries
    float32 rounding of the same size in both implementations, summed in different orders; there the
    fair test is that ours is about as close to the exact value as the reference is.
    """
    assert ours.keys() == ref.keys() == exact.keys()
    grads = [k for k in ref if k.startswith("grad_")]
    assert_same(
        {k: v for k, v in ours.items() if k not in grads}, {k: v for k, v in ref.items() if k not in grads}, rtol, atol
    )
    for k in grads:
        truth = exact[k].double()
        err_ours = (ours[k].double().reshape(truth.shape) - truth).abs()
        err_ref = (ref[k].double().reshape(truth.shape) - truth).abs()
        bound = 2 * err_ref + atol + rtol * truth.abs()
        worst = (err_ours - bound).max().item() if truth.numel() else 0.0
        assert worst <= 0, (
            f"{k}: ours is further from the float64 result than the reference allows (excess {worst:.3g})"
        )
