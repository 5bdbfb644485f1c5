"""The settings of one training run, their checks, and the rule for which may change on ``--resume``.

The config is stored next to every checkpoint. Resuming compares the new settings with the stored
ones: a different architecture is "a checkpoint from another model"; a different learning rate,
batch size, seed, optimizer or split would silently break "continues exactly where it stopped", so
those are refused too. Only ``epochs`` (to train longer), ``device``, ``out`` and ``progress`` may differ.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from cafusion import _validation as check
from cafusion.training.distributed import DIST_BN
from cafusion.training.model_factory import NORMS

OPTIMIZERS = ("adamw", "sgd")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Settings that define the network; a checkpoint with other values belongs to another model.
MODEL_KEYS = ("model", "attention", "attention_kwargs", "widths", "norm")
# Settings that must match for the continued run to equal an uninterrupted one.
RUN_KEYS = (
    "batch_size",
    "lr",
    "weight_decay",
    "momentum",
    "optimizer",
    "seed",
    "val_fraction",
    "precision",
    "dist_bn",
)


@dataclass
class TrainConfig:
    """One run. ``batch_size`` is the GLOBAL batch: under N processes each one takes batch_size / N."""

    data: str
    out: str = "runs/train"
    model: str = "small_cnn"
    attention: str = "caft"
    attention_kwargs: dict[str, Any] = field(default_factory=dict)
    widths: tuple[int, ...] = (32, 64)
    norm: str = "batch"
    dist_bn: str = "reduce"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    optimizer: str = "adamw"
    seed: int = 0
    device: str = "cpu"
    precision: str = "auto"
    val_fraction: float = 0.2
    resume: str | None = None
    progress: bool = True

    def validate(self) -> TrainConfig:
        """Check every value (TypeError/ValueError naming the option) before any data is read."""
        if not isinstance(self.data, str) or not self.data:
            raise ValueError(f"--data must be a path, got {self.data!r}")
        if not isinstance(self.out, str) or not self.out:
            raise ValueError(f"--out must be a path, got {self.out!r}")
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"--model must be a name, got {self.model!r}")
        if not isinstance(self.attention, str) or not self.attention:
            raise ValueError(f"--attention must be a registry name, got {self.attention!r}")
        if not isinstance(self.attention_kwargs, dict):
            raise TypeError(f"attention options must be a dict, got {type(self.attention_kwargs).__name__}")
        _check_block(self.attention, self.attention_kwargs)  # a bad name or option fails now, not later
        self.widths = tuple(check.positive_int("--widths", w) for w in self.widths)
        if not self.widths:
            raise ValueError("--widths must list at least one width")
        self.norm = check.choice("--norm", self.norm, NORMS)
        self.dist_bn = check.choice("--dist-bn", self.dist_bn, DIST_BN)
        self.epochs = check.positive_int("--epochs", self.epochs)
        self.batch_size = check.positive_int("--batch-size", self.batch_size)
        self.lr = check.positive_finite("--lr", self.lr)
        self.weight_decay = _non_negative("--weight-decay", self.weight_decay)
        self.momentum = _non_negative("--momentum", self.momentum)
        if self.momentum >= 1:
            raise ValueError(f"--momentum must be in [0, 1), got {self.momentum!r}")
        self.optimizer = check.choice("--optimizer", self.optimizer, OPTIMIZERS)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"--seed must be an int >= 0, got {self.seed!r}")
        self.precision = check.choice("--precision", self.precision, PRECISIONS)
        if self.device != "cpu" and self.device != "cuda" and not self.device.startswith("cuda:"):
            raise ValueError(f"--device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.device == "cpu" and self.precision == "fp16":
            raise ValueError("--precision fp16 is mixed precision for CUDA; on the CPU use bf16 or fp32")
        self.val_fraction = _non_negative("--val-fraction", self.val_fraction)
        if self.val_fraction >= 1:
            raise ValueError(f"--val-fraction must be in [0, 1), got {self.val_fraction!r}")
        return self

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["widths"] = list(self.widths)
        return out


def check_resume_compatible(current: TrainConfig, stored: dict[str, Any], source: str) -> None:
    """Refuse to resume from a checkpoint of another model or of a run with other settings."""
    now = current.as_dict()
    defaults = TrainConfig(data="-").as_dict()  # a key a checkpoint predates had its default value
    stored = {**{k: defaults[k] for k in RUN_KEYS if k not in stored}, **stored}
    for key in MODEL_KEYS:
        if now[key] != stored.get(key):
            raise ValueError(
                f"checkpoint {source!r} is from another model: its {key} is {stored.get(key)!r}, "
                f"this run has {now[key]!r}"
            )
    for key in RUN_KEYS:
        if now[key] != stored.get(key):
            flag = "--" + key.replace("_", "-")
            raise ValueError(
                f"checkpoint {source!r} was trained with {flag} {stored.get(key)!r}, this run has {now[key]!r}; "
                "an exact resume needs the same value"
            )


def _check_block(name: str, options: dict[str, Any]) -> None:
    """Build the block once; an unknown option lists the options this block takes."""
    from cafusion.layers.registry import create_attention

    try:
        create_attention(name, 64, **options)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        unknown = sorted(set(options) - set(block_options(name)))
        raise ValueError(
            f"--attn-opt {', '.join(unknown) or str(exc)}: not an option of --attention {name!r}; "
            f"it takes {', '.join(block_options(name))}"
        ) from None


def block_options(name: str) -> list[str]:
    """The keyword options a registered block takes (for the caft layers: those of ChannelAttentionFusionT)."""
    from cafusion.layers import ChannelAttentionFusionT, ChannelAttentionFusionTLayer
    from cafusion.layers.registry import get_attention

    factory = get_attention(name)
    target = getattr(factory, "func", factory)  # a functools.partial names its class in .func
    fixed = set(getattr(factory, "keywords", {}) or {})
    params = list(inspect.signature(factory).parameters.values())
    if isinstance(target, type) and issubclass(target, ChannelAttentionFusionTLayer):
        params += list(inspect.signature(ChannelAttentionFusionT).parameters.values())
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    skip = {"channels", "device", "dtype", *fixed}
    return sorted({p.name for p in params if p.kind in kinds and p.name not in skip})


def _non_negative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["reduction=8", "fusion=sum"]`` -> ``{"reduction": 8, "fusion": "sum"}`` (bools, ints, floats)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--attn-opt must be KEY=VALUE, got {pair!r}")
        options[key.strip()] = _literal(raw.strip())
    return options


def _literal(raw: str) -> Any:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if raw.lower() in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw
