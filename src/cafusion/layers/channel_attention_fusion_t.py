"""ChannelAttentionFusionT: channel attention with per-sample avg/max fusion and a temperature gate.

Parameters are stored exactly as the reference stores them (1x1 ``Conv2d`` layers ``fc1``, ``fc2``
and ``fusion_router.{0,2}``, and the buffer ``T`` or the parameter ``t_raw``), so checkpoints move
between the two in both directions. The convolutions are weight holders only: the forward runs the
functional math on (B, C) matrices, which is what lets one module serve 1D, 2D and 3D inputs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from cafusion import _validation as check
from cafusion.dispatch import IMPLS
from cafusion.functional import ACTS, FUSIONS, GATES, channel_attention_fusion
from cafusion.functional.temperature import fill_raw, raw_from_temperature, temperature_from_raw

_ABSENT = object()
Inspector = Callable[["ChannelAttentionFusionT", Tensor, "Tensor | None", Tensor], None]


class ChannelAttentionFusionT(nn.Module):
    """Channel attention for (B, C, *spatial) maps with learned avg/max fusion and temperature.

    ``forward(x)`` returns ``(y, ca)``, or ``(y, ca, fusion_w)`` when ``return_fusion_weights`` is
    set and ``fusion == "softmax"``; y = x * ca, ca is (B, C, 1, ..., 1), fusion_w is (B, 2) with
    column 0 the weight of the average path.
    """

    T: Tensor  # the fixed temperature buffer (absent when learnable)
    t_raw: nn.Parameter  # the learnable temperature's raw value (absent when fixed)

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        min_hidden: int = 4,
        fusion: str = "softmax",
        gate: str = "sigmoid",
        temperature: float = 1.0,
        learnable_temperature: bool = False,
        eps: float = 1e-6,
        act: str = "relu",
        bias: bool = True,
        fusion_router_hidden: int = 16,
        return_fusion_weights: bool = False,
        *,
        impl: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.channels = check.positive_int("channels", channels)
        self.reduction = check.positive_int("reduction", reduction)
        self.min_hidden = check.positive_int("min_hidden", min_hidden)
        self.fusion_router_hidden = check.positive_int("fusion_router_hidden", fusion_router_hidden)
        self.fusion = check.choice("fusion", fusion, FUSIONS)
        self.gate = check.choice("gate", gate, GATES)
        self.act = check.choice("act", act, ACTS)
        self.temperature = check.positive_finite("temperature", temperature)
        self.eps = check.positive_finite("eps", eps)
        self.learnable_temperature = check.boolean("learnable_temperature", learnable_temperature)
        self.bias = check.boolean("bias", bias)
        self.return_fusion_weights = check.boolean("return_fusion_weights", return_fusion_weights)
        # "auto" | "fast" | "reference": which implementation forward uses (see functional); not state.
        self.impl = check.choice("impl", impl, IMPLS)
        if self.learnable_temperature:
            raw_from_temperature(self.temperature, self.eps)  # fails early if temperature <= eps
        self.hidden = max(self.min_hidden, self.channels // self.reduction)

        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        # Built in the reference's order so that the same seed gives the same initial weights.
        self.fc1 = nn.Conv2d(channels, self.hidden, kernel_size=1, bias=bias, **factory)
        self.fc2 = nn.Conv2d(self.hidden, channels, kernel_size=1, bias=bias, **factory)
        self.fusion_router: nn.Sequential | None = None
        if self.fusion == "softmax":
            self.fusion_router = nn.Sequential(
                nn.Conv2d(2 * channels, fusion_router_hidden, kernel_size=1, bias=True, **factory),
                nn.ReLU(),
                nn.Conv2d(fusion_router_hidden, 2, kernel_size=1, bias=True, **factory),
            )
        if self.learnable_temperature:
            self.t_raw = nn.Parameter(torch.empty((), **factory))
        else:
            self.register_buffer("T", torch.empty((), **factory))
        self._reset_temperature()
        self._inspectors: OrderedDict[int, Inspector] = OrderedDict()
        self._load_notes: tuple[str, list[tuple[str, str]]] = ("", [])
        self.register_load_state_dict_post_hook(ChannelAttentionFusionT._annotate_keys)  # type: ignore[no-untyped-call]

    def _reset_temperature(self) -> None:
        if self.learnable_temperature:
            fill_raw(self.t_raw, self.temperature, self.eps)
        else:
            with torch.no_grad():
                self.T.fill_(self.temperature)

    def reset_parameters(self) -> None:
        """Re-draw the MLP and router weights (PyTorch's conv init) and restore the initial temperature."""
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()
        for layer in self._router_layers():
            if layer is not None:
                layer.reset_parameters()
        self._reset_temperature()

    def get_T(self) -> Tensor:
        """The temperature in effect: the buffer T, or softplus(t_raw) + eps when learnable."""
        if self.learnable_temperature:
            return temperature_from_raw(self._parameters["t_raw"], self.eps)  # type: ignore[arg-type]
        return self._buffers["T"]  # type: ignore[return-value]

    def _router_layers(self) -> tuple[nn.Conv2d | None, nn.Conv2d | None]:
        """The router's two 1x1 convolutions (weight holders), or Nones for sum fusion."""
        router = self._modules.get("fusion_router")
        if router is None:
            return None, None
        first, second = router._modules["0"], router._modules["2"]
        assert isinstance(first, nn.Conv2d) and isinstance(second, nn.Conv2d)
        return first, second

    def register_inspector(self, hook: Inspector) -> RemovableHandle:
        """Call ``hook(module, ca, fusion_w, T)`` after every forward; remove it with ``handle.remove()``.

        Diagnostics need the fusion weights even when forward does not return them; an inspector sees
        them without changing what user code receives. With no inspector the cost is one dict check.
        """
        handle = RemovableHandle(self._inspectors)
        self._inspectors[handle.id] = hook
        return handle

    def _tensors(self) -> list[Tensor | None]:
        """fc1, fc2, router layer 1 and 2 weights and biases, in the functional form's order.

        Read from the submodules' dicts: nn.Module.__getattr__ costs ~1-2 µs a lookup, and at small
        maps the whole fused forward is tens of µs. Anything that is not a plain registered tensor (a
        parametrization, a wrapper that replaced it) goes through ``getattr`` as usual.
        """
        out: list[Tensor | None] = []
        for layer in (self._modules["fc1"], self._modules["fc2"], *self._router_layers()):
            for name in ("weight", "bias"):
                if layer is None:
                    out.append(None)
                    continue
                value = layer._parameters.get(name, _ABSENT)
                out.append(getattr(layer, name) if value is _ABSENT else value)  # type: ignore[arg-type]
        return out

    def forward(self, x: Tensor, lengths: Tensor | None = None, mask: Tensor | None = None) -> tuple[Tensor, ...]:
        """(y, ca[, fusion_w]); ``lengths`` (B,) or ``mask`` (B, *spatial) for padded batches (``cafusion.masking``)."""
        fc1_w, fc1_b, fc2_w, fc2_b, r1_w, r1_b, r2_w, r2_b = self._tensors()
        assert fc1_w is not None and fc2_w is not None
        temperature = self.get_T()
        y, ca, fusion_w = channel_attention_fusion(
            x,
            fc1_w,
            fc1_b,
            fc2_w,
            fc2_b,
            fusion=self.fusion,
            router1_weight=r1_w,
            router1_bias=r1_b,
            router2_weight=r2_w,
            router2_bias=r2_b,
            temperature=temperature,
            gate=self.gate,
            act=self.act,
            impl=self.impl,
            lengths=lengths,
            mask=mask,
        )
        for hook in self._inspectors.values():
            hook(self, ca, fusion_w, temperature)
        if self.return_fusion_weights and fusion_w is not None:
            return y, ca, fusion_w
        return y, ca

    def extra_repr(self) -> str:
        t = f"{self.temperature:g}" + (" (learnable)" if self.learnable_temperature else "")
        return (
            f"channels={self.channels}, hidden={self.hidden}, fusion={self.fusion}, gate={self.gate}, "
            f"act={self.act}, temperature={t}, eps={self.eps:g}, bias={self.bias}, "
            f"fusion_router_hidden={self.fusion_router_hidden}, "
            f"return_fusion_weights={self.return_fusion_weights}, impl={self.impl}"
        )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Say what differs when a checkpoint was saved with another configuration.

        Other channels or hidden width is an error (the shapes cannot load). Another fusion, temperature
        kind or bias shows up as missing/unexpected keys; torch hands every submodule strict=True, so the
        block cannot tell whether the caller asked for strict loading. It annotates those keys instead
        (in ``_annotate_keys``, after the children have loaded), which puts the explanation into a strict
        load's error and into a non-strict load's returned key lists without refusing the latter.
        """
        error_msgs.extend(self._shape_mismatches(state_dict, prefix))
        self._load_notes = (prefix, self._key_mismatches(state_dict, prefix))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @staticmethod
    def _annotate_keys(module: nn.Module, incompatible: Any) -> None:
        """Load post-hook: append the configuration difference to this block's missing/unexpected keys."""
        prefix, notes = getattr(module, "_load_notes", ("", []))
        object.__setattr__(module, "_load_notes", ("", []))
        said: set[str] = set()
        for keys in (incompatible.missing_keys, incompatible.unexpected_keys):
            for i, key in enumerate(keys):
                rel = key[len(prefix) :] if key.startswith(prefix) else None
                note = next((n for k, n in notes if rel == k or (k.endswith(".") and rel and rel.startswith(k))), None)
                if note is not None and note not in said:  # once per difference, on its first key
                    keys[i] = f"{key} ({note})"
                    said.add(note)

    def _block_name(self, prefix: str) -> str:
        return f"{type(self).__name__} at '{prefix.rstrip('.') or '<root>'}'"

    def _shape_mismatches(self, state_dict: dict[str, Any], prefix: str) -> list[str]:
        w1 = state_dict.get(prefix + "fc1.weight")
        if isinstance(w1, Tensor) and w1.dim() >= 2 and tuple(w1.shape[:2]) != (self.hidden, self.channels):
            return [
                f"{self._block_name(prefix)}: checkpoint has channels={w1.shape[1]}, hidden={w1.shape[0]} "
                f"but this block has channels={self.channels}, hidden={self.hidden}"
            ]
        return []

    def _key_mismatches(self, state_dict: dict[str, Any], prefix: str) -> list[tuple[str, str]]:
        """(key or key prefix ending in '.', explanation) for each configuration the checkpoint differs in."""
        if (prefix + "fc1.weight") not in state_dict:
            # No weights for this block at all (e.g. a backbone checkpoint loaded into a model with
            # inserted blocks): there is no saved configuration to compare with.
            return []
        name, notes = self._block_name(prefix), []
        has_router = (prefix + "fusion_router.0.weight") in state_dict
        if has_router != (self.fusion == "softmax"):
            saved = "softmax" if has_router else "sum"
            notes.append(
                (
                    "fusion_router.",
                    f"{name}: checkpoint was saved with fusion='{saved}' but this block has fusion='{self.fusion}'",
                )
            )
        has_raw, has_t = (prefix + "t_raw") in state_dict, (prefix + "T") in state_dict
        if (has_raw or has_t) and has_raw != self.learnable_temperature:
            kinds = {True: "learnable (t_raw)", False: "fixed (buffer T)"}
            mine = kinds[self.learnable_temperature]
            note = f"{name}: checkpoint has a {kinds[has_raw]} temperature but this block's is {mine}"
            notes += [("t_raw", note), ("T", note)]
        has_bias = (prefix + "fc1.bias") in state_dict
        if has_bias != self.bias:
            note = f"{name}: checkpoint has bias={has_bias} but this block has bias={self.bias}"
            notes += [("fc1.bias", note), ("fc2.bias", note)]
        return notes
