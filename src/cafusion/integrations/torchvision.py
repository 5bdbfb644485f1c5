"""Insert an attention block into an existing model, SE-ResNet style, keeping its state_dict keys.

The block becomes a child named ``attention`` of the module it follows (e.g. ``layer1.0.bn2``), and
a forward hook applies it to that module's output. Nothing else moves, so the original weights
(torchvision checkpoints included) still load by their old keys, and the new weights sit under
``<module>.attention.*``. Hooks are traced by torch.compile, torch.export, ONNX export and
torch.jit.trace like any module code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from cafusion.layers.registry import AttentionFactory, create_attention

Predicate = Callable[[str, nn.Module], bool]
ATTENTION_CHILD = "attention"


def _apply_attention(module: nn.Module, inputs: tuple[Tensor], output: Tensor) -> Tensor:
    """The forward hook: the module's output goes through its ``attention`` child (TorchScript-compatible)."""
    out: Tensor = module.attention(output)  # type: ignore[operator]
    return out


def resnet_last_bn(name: str, module: nn.Module) -> bool:
    """Where SE-ResNet puts SE: after the last BN of each residual branch (bn2 / bn3), before the add."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    del name
    return isinstance(module, (BasicBlock, Bottleneck))


def _last_bn(block: nn.Module) -> nn.Module:
    from torchvision.models.resnet import BasicBlock

    return block.get_submodule("bn2" if isinstance(block, BasicBlock) else "bn3")


def out_channels(module: nn.Module) -> int:
    """The channel count of a module's output, for the common layer types that follow a conv."""
    for attr in ("out_channels", "num_features", "num_channels"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    raise ValueError(
        f"cannot tell the output channels of {type(module).__name__}; pass channels=fn(module) -> int "
        "or select a Conv / BatchNorm / GroupNorm module"
    )


def insert_attention(
    model: nn.Module,
    attention: str | AttentionFactory = "caft",
    *,
    predicate: Predicate | None = None,
    channels: Callable[[nn.Module], int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Add ``attention`` (a registry name or factory, built with ``**kwargs``) to ``model``, in place.

    Without ``predicate``: after the last BN of every torchvision ResNet ``BasicBlock`` /
    ``Bottleneck`` (the SE-ResNet position). With ``predicate(name, module) -> bool``: after every
    module it selects, whose output channels come from ``channels(module)`` or the module's
    ``out_channels`` / ``num_features`` / ``num_channels``. Returns ``model``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if predicate is not None and not callable(predicate):
        raise TypeError(f"predicate must be callable as predicate(name, module) -> bool, got {predicate!r}")
    if predicate is None:
        targets = [_last_bn(m) for name, m in model.named_modules() if resnet_last_bn(name, m)]
        where = "torchvision ResNet blocks (BasicBlock / Bottleneck)"
    else:
        targets = [m for name, m in model.named_modules() if predicate(name, m)]
        where = "modules selected by predicate"
    if not targets:
        raise ValueError(f"insert_attention found no {where} in {type(model).__name__}; pass predicate=")
    count = channels or out_channels
    for target in targets:
        if hasattr(target, ATTENTION_CHILD):
            raise ValueError(f"{type(target).__name__} already has an '{ATTENTION_CHILD}' child; insert once")
        param = next(target.parameters(), None)
        factory = {} if param is None else {"device": param.device, "dtype": param.dtype}
        block = create_attention(attention, count(target), **factory, **kwargs)
        target.add_module(ATTENTION_CHILD, block)
        target.register_forward_hook(_apply_attention)
    return model
