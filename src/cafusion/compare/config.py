"""The settings of a comparison, the variants it compares, and the checks that run before any work.

A variant is an attention block by registry name, optionally with its own options and label
(``caft_T05=caft:temperature=0.5``), so a proposed remedy is one more row in the same paired
comparison. Every check raises a ValueError/TypeError naming the option, before data is read.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from cafusion import _validation as check
from cafusion.models import recipe

DEFAULT_ATTENTIONS = ("none", "se", "eca", "cbam", "caft", "caft_sum")
# Baselines every variant is paired against, when they are part of the comparison. cbam is one on
# purpose: with T = 1 and a sigmoid gate, caft_sum is CBAM's channel attention, so a caft variant
# has to beat cbam for its router and temperature to count.
BASELINES = ("none", "se", "cbam")
_LABEL = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass(frozen=True)
class Variant:
    """One row of the comparison: ``label`` in reports, the registry ``attention`` and its options."""

    label: str
    attention: str
    options: dict[str, Any] = field(default_factory=dict)


def parse_variant(text: str, common: dict[str, Any] | None = None) -> Variant:
    """``NAME`` or ``LABEL=NAME:KEY=VALUE,KEY=VALUE``; ``common`` (``--attn-opt``) applies to every block."""
    from cafusion.training.config import parse_options

    label, sep, rest = text.partition("=")
    if not sep:
        label, rest = text, text
    name, _, opts = rest.partition(":")
    label, name = label.strip(), name.strip()
    if not label or not name or not _LABEL.match(label):
        raise ValueError(
            f"--variant must be NAME or LABEL=NAME:KEY=VALUE,... with a label of letters, digits and _.+-, got {text!r}"
        )
    options = dict(common or {}) if name.lower() != "none" else {}
    options.update(parse_options([o for o in opts.split(",") if o.strip()]) if opts else {})
    return Variant(label, name.lower(), options)


@dataclass
class CompareConfig:
    """One comparison: data sources x variants x seeds, trained with one recipe."""

    data: list[str]
    model: str = "fcn"
    variants: list[Variant] = field(default_factory=lambda: [Variant(n, n) for n in DEFAULT_ATTENTIONS])
    seeds: int = 3
    first_seed: int = 0
    # the recipe's numbers (cafusion.models.recipe, shared with the aeon / scikit-learn classifiers)
    epochs: int = recipe.EPOCHS
    batch_size: int | None = None  # None: the recipe's min(N/10, cap) for fcn/resnet, min(N, 64) for inception, else 32
    lr: float = recipe.LR
    min_lr: float = recipe.MIN_LR
    patience: int = recipe.PATIENCE
    factor: float = recipe.FACTOR
    test_fraction: float = 0.2  # only for sources without a published split
    widths: tuple[int, ...] = (32, 64)  # small_cnn only
    device: str = "cpu"
    out: str = "runs/compare"
    budgets: tuple[int, ...] = ()  # extra epochs at which the best-so-far model is tested
    # ucr: "auto" as Fawaz et al. 2019 (univariate z-normalised per series, multivariate as stored),
    # "series" z-normalises every set, "none" keeps the archive's values
    norm: str = "auto"
    lengths: bool = False  # give fcn/resnet/inception/small_cnn the true lengths of padded series (masked padding)

    def validate(self) -> CompareConfig:
        if not isinstance(self.data, list) or not self.data or not all(isinstance(d, str) and d for d in self.data):
            raise ValueError(f"--data must name at least one source, got {self.data!r}")
        if len(set(self.data)) != len(self.data):
            raise ValueError(f"--data lists a source twice: {self.data}")
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"--model must be a name, got {self.model!r}")
        if not self.variants:
            raise ValueError("--attention / --variant must name at least one variant")
        labels = [v.label for v in self.variants]
        if len(set(labels)) != len(labels):
            raise ValueError(f"variant labels must be unique, got {labels}")
        import cafusion.compare.probes  # noqa: F401  (registers the caft_rn probe)
        from cafusion.layers.registry import create_attention

        for v in self.variants:  # an unknown name or a bad option fails now, not after an hour of runs
            try:
                create_attention(v.attention, 64, **v.options)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"variant {v.label!r}: {exc}") from None
        self.seeds = check.positive_int("--seeds", self.seeds)
        if isinstance(self.first_seed, bool) or not isinstance(self.first_seed, int) or self.first_seed < 0:
            raise ValueError(f"--first-seed must be an int >= 0, got {self.first_seed!r}")
        self.epochs = check.positive_int("--epochs", self.epochs)
        if self.batch_size is not None:
            self.batch_size = check.positive_int("--batch-size", self.batch_size)
        self.lr = check.positive_finite("--lr", self.lr)
        self.min_lr = check.positive_finite("--min-lr", self.min_lr)
        self.patience = check.positive_int("--patience", self.patience)
        self.factor = check.positive_finite("--factor", self.factor)
        if self.factor >= 1:
            raise ValueError(f"--factor must be in (0, 1), got {self.factor!r}")
        if not (
            isinstance(self.test_fraction, float) and 0 < self.test_fraction < 1 and math.isfinite(self.test_fraction)
        ):
            raise ValueError(f"--test-fraction must be in (0, 1), got {self.test_fraction!r}")
        self.widths = tuple(check.positive_int("--widths", w) for w in self.widths)
        if self.device != "cpu" and self.device != "cuda" and not self.device.startswith("cuda:"):
            raise ValueError(f"--device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        self.budgets = tuple(sorted({check.positive_int("--budgets", b) for b in self.budgets if b <= self.epochs}))
        from cafusion.training.ucr import check_norm

        check_norm(self.norm, "--norm")
        return self

    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["variants"] = [asdict(v) for v in self.variants]
        out["widths"] = list(self.widths)
        out["budgets"] = list(self.budgets)
        return out


def default_budgets(epochs: int) -> tuple[int, ...]:
    """Epoch budgets tested along the way: powers of two below ``epochs``, and ``epochs`` itself.

    Nothing in a run depends on its total epochs (the order of epoch e is a function of (seed, e),
    the scheduler looks back only), so the best-so-far model at epoch e is exactly the model a run
    of e epochs would end with: one run gives the whole accuracy-vs-budget curve.
    """
    budgets = {epochs}
    b = 1
    while b < epochs:
        budgets.add(b)
        b *= 2
    return tuple(sorted(budgets))
