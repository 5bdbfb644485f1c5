"""Experimental router variants for the router-collapse study, registered for comparisons only.

The softmax router of ``caft`` reads cat(avg, max) of the block's input and tends to collapse onto
one path; once its softmax saturates it passes almost no gradient and stays there (docs/results.md,
docs/router.md). The probes here are the same block with one change to the router, so that the
paired comparison against ``caft`` is about that change alone: same weights, same state_dict keys,
same initial weights for a seed, same diagnostics hook. A probe runs the block's composite
(``cafusion.functional.composite``) with itself as the router hook, so the router is the only thing
that differs; with every option off it computes exactly what the block computes (tested). They live
here rather than as options of ``ChannelAttentionFusionT``; a remedy the comparison supports belongs
in the block.

- ``caft_rn`` (``RouterNormProbe``): a LayerNorm (no affine) on the router's input.
- ``caft_router`` (``RouterProbe``), every option off by default:

  - ``router_tau``: a temperature on the router's softmax, w = softmax(r / tau);
  - ``router_floor``: a floor on the weights, w = eps + (1 - 2 eps) softmax(r), so w is in
    [eps, 1 - eps];
  - ``router_entropy``: lambda of a per-sample penalty lambda * mean_b KL(s_b || uniform) =
    lambda * mean_b (log 2 - H(s_b)) on the router's softmax s, added to the training loss of
    whatever is trained through the block's output (see ``AuxLoss``);
  - ``router_norm``: as ``caft_rn``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cafusion.functional.composite import channel_attention_fusion
from cafusion.layers.caft_layer import ChannelAttentionFusionTLayer
from cafusion.layers.registry import list_attentions, register_attention

NAME = "caft_rn"
ROUTER = "caft_router"


class AuxLoss(torch.autograd.Function):
    """``AuxLoss.apply(y, term)`` returns y; in backward, ``term`` gets the gradient 1.

    So a loss computed from y is trained as if ``term`` had been added to it (Megatron-Core's
    MoE auxiliary-loss trick): the block adds its own penalty without the training loop knowing.
    The reported loss value does not include the term. It assumes the loss's backward starts from
    an unscaled loss (a loss scaler would scale y's gradient but not this one).
    """

    @staticmethod
    def forward(ctx: Any, y: Tensor, term: Tensor) -> Tensor:
        ctx.save_for_backward(term)
        return y.view_as(y)

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        (term,) = ctx.saved_tensors
        return grad_y, torch.ones_like(term)


def kl_to_uniform(logits: Tensor) -> Tensor:
    """mean over the batch of KL(softmax(logits_b) || uniform) = log K - H(w_b); 0 at w = 1/K."""
    log_w = F.log_softmax(logits, dim=1)
    return (log_w.exp() * log_w).sum(1).mean() + math.log(logits.shape[1])


class RouterProbe(ChannelAttentionFusionTLayer):
    """``caft`` with one change to the softmax router; with every option off, exactly the block.

    Softmax fusion and the sigmoid/hardsigmoid gates only; no padding masks (``lengths``).
    ``last_router_penalty`` holds the last training forward's KL(s || uniform) when
    ``router_entropy`` > 0 (detached; None otherwise).
    """

    def __init__(
        self,
        channels: int,
        *,
        router_norm: bool = False,
        router_tau: float = 1.0,
        router_floor: float = 0.0,
        router_entropy: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("fusion", "softmax") != "softmax":
            raise ValueError(f"the router probes are softmax-router blocks; got fusion={kwargs['fusion']!r}")
        if not isinstance(router_norm, bool):
            raise TypeError(f"router_norm must be a bool, got {router_norm!r}")
        for name, value in (
            ("router_tau", router_tau),
            ("router_floor", router_floor),
            ("router_entropy", router_entropy),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if router_tau <= 0:
            raise ValueError(f"router_tau must be > 0, got {router_tau!r}")
        if not 0 <= router_floor < 0.5:
            raise ValueError(f"router_floor must be in [0, 0.5), got {router_floor!r}")
        if router_entropy < 0:
            raise ValueError(f"router_entropy must be >= 0, got {router_entropy!r}")
        super().__init__(channels, **kwargs)  # draws exactly the block's initial weights
        self.router_norm = router_norm
        self.router_tau = float(router_tau)
        self.router_floor = float(router_floor)
        self.router_entropy = float(router_entropy)
        self.last_router_penalty: Tensor | None = None
        self._router_logits: Tensor | None = None  # r of the forward in progress, for the entropy penalty

    def router_input(self, router_in: Tensor) -> Tensor:
        """The composite's router hook: cat(avg, max), layer-normed with ``router_norm``."""
        return F.layer_norm(router_in, router_in.shape[1:]) if self.router_norm else router_in

    def router_softmax(self, logits: Tensor) -> Tensor:
        """The composite's router hook: the weights from the logits r, w = softmax(r / tau), floored."""
        r = logits / self.router_tau if self.router_tau != 1.0 else logits
        self._router_logits = r
        w = torch.softmax(r, dim=1)
        return self.router_floor + (1 - 2 * self.router_floor) * w if self.router_floor else w

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        fc1_w, fc1_b, fc2_w, fc2_b, r1_w, r1_b, r2_w, r2_b = self._tensors()
        assert fc1_w is not None and fc2_w is not None
        t = self.get_T()
        y, ca, w = channel_attention_fusion(
            x, fc1_w, fc1_b, fc2_w, fc2_b, "softmax", r1_w, r1_b, r2_w, r2_b, t, self.gate, self.act, hook=self
        )
        r, self._router_logits = self._router_logits, None
        for hook in self._inspectors.values():  # FusionMonitor's diagnostics
            hook(self, ca, w, t)
        if self.router_entropy and torch.is_grad_enabled() and r is not None and r.requires_grad:
            penalty = kl_to_uniform(r)
            self.last_router_penalty = penalty.detach()
            y = AuxLoss.apply(y, self.router_entropy * penalty)
        return y

    def extra_repr(self) -> str:
        options = [
            f"router_norm={self.router_norm}" if self.router_norm else "",
            f"router_tau={self.router_tau}" if self.router_tau != 1.0 else "",
            f"router_floor={self.router_floor}" if self.router_floor else "",
            f"router_entropy={self.router_entropy}" if self.router_entropy else "",
        ]
        return ", ".join([super().extra_repr(), *[o for o in options if o]])


class RouterNormProbe(RouterProbe):
    """``caft_rn``: ``caft`` with ``router_norm`` on by default, a LayerNorm (no affine) on cat(avg, max)."""

    def __init__(self, channels: int, *, router_norm: bool = True, **kwargs: Any) -> None:
        super().__init__(channels, router_norm=router_norm, **kwargs)


for _name, _factory in ((NAME, RouterNormProbe), (ROUTER, RouterProbe)):
    if _name not in list_attentions():
        register_attention(_name, _factory)
