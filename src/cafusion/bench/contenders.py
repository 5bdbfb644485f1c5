"""The modules the benchmarks compare, built alike: same channels, dtype, device and (where the
parameter names match) the same weights, so only the implementation differs between them.

The reference file (the spec, ``reference_channel_attention_fusion_t.py``) is loaded from
``--reference PATH`` or ``../shared/seed`` when present; it only takes 2-D maps. timm is optional:
without it the timm contender is left out, and the tables say so with '-'.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from cafusion.bench.names import REFERENCE_FILE

REDUCTION = 4  # the ChannelAttentionFusionTLayer(C, reduction=4)


def load_reference(path: str | None) -> ModuleType | None:
    """The reference module from ``path`` or ../shared/seed (relative to the cwd, then to the repo)."""
    here = Path(__file__).resolve().parents[3]
    folders = [Path(path)] if path else [Path("../shared/seed"), Path("shared/seed"), here.parent / "shared/seed"]
    for folder in folders:
        file = folder / REFERENCE_FILE
        if file.is_file():
            spec = importlib.util.spec_from_file_location("cafusion_bench_reference", file)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    return None


def timm_channel_attn(channels: int) -> nn.Module | None:
    """timm's CBAM ``ChannelAttn`` (2-D maps only), or None without timm."""
    try:
        from timm.layers.cbam import ChannelAttn
    except ImportError:
        return None
    module: nn.Module = ChannelAttn(channels)
    return module


def first(out: Any) -> Tensor:
    """y from a block that returns y or (y, ...)."""
    return out[0] if isinstance(out, tuple) else out  # type: ignore[no-any-return]


def sweep_contenders(
    channels: int, rank: int, dtype: torch.dtype, device: torch.device, reference: ModuleType | None
) -> dict[str, nn.Module]:
    """name -> module for one sweep row: ``auto`` (the default path), ``reference`` (impl="reference",
    the composite), ``ref_file`` (the spec file, 2-D), ``se`` (cafusion's SE) and ``timm`` (2-D)."""
    from cafusion import ChannelAttentionFusionTLayer, create_attention

    auto = ChannelAttentionFusionTLayer(channels, reduction=REDUCTION)
    out: dict[str, nn.Module] = {"auto": auto}
    composite = ChannelAttentionFusionTLayer(channels, reduction=REDUCTION, impl="reference")
    composite.load_state_dict(auto.state_dict())
    out["reference"] = composite
    if reference is not None and rank == 2:
        spec = reference.ChannelAttentionFusionT(channels, reduction=REDUCTION)
        spec.load_state_dict(auto.state_dict())
        out["ref_file"] = spec
    out["se"] = create_attention("se", channels)
    timm = timm_channel_attn(channels) if rank == 2 else None
    if timm is not None:
        out["timm"] = timm
    return {name: m.to(device, dtype) for name, m in out.items()}
