"""The FCN/ResNet training recipe of Wang et al. 2017 as run by Fawaz et al. 2019, as library constants.

InceptionTime (Ismail Fawaz et al. 2020) uses the same optimiser, schedule and model selection, with
batches of 64.

``cafusion compare`` and the aeon / scikit-learn classifiers train with the same numbers: Adam at
``LR``, ReduceLROnPlateau on the training loss (``FACTOR``, ``PATIENCE``, ``MIN_LR``), batches of
``recipe_batch_size`` in the order of ``epoch_order``, and the model of the lowest training loss is
the one kept. They live here, the only copy, so the library can use them without the application.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

BATCH_CAP = {"fcn": 16, "resnet": 64}
# InceptionTime's reference code trains with a fixed batch_size=64 (its N/10 rule is only for batch_size=None)
FIXED_BATCH = {"inception": 64}
LR = 1e-3
MIN_LR = 1e-4
PATIENCE = 50
FACTOR = 0.5
EPOCHS = 100


def recipe_batch_size(model: str, train_samples: int) -> int:
    """``int(min(N / 10, cap))``, at least 1, for ``fcn``/``resnet``; 64 (at most N) for ``inception``; else 32."""
    if model in FIXED_BATCH:
        return max(1, min(FIXED_BATCH[model], train_samples))
    cap = BATCH_CAP.get(model)
    if cap is None:
        return max(1, min(32, train_samples))
    return max(1, int(min(train_samples / 10, cap)))


def epoch_order(seed: int, epoch: int, n: int) -> Tensor:
    """The sample order of one epoch: a function of (seed, epoch) only, so paired runs see the same batches."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def paired_model(
    build: Callable[[str | None], nn.Module], seed: int, reseed: Callable[[int], object] = torch.manual_seed
) -> tuple[nn.Module, int]:
    """The variant's model for ``seed`` with the ``none`` model's backbone weights; returns (model, tensors copied).

    ``build(None)`` builds the variant, ``build("none")`` the same network without attention. Both are
    built after ``reseed(seed)`` (default: the global torch RNGs, as a run does at its start) and every
    tensor they share by name and shape is copied, so paired runs of one seed differ only by their blocks.
    """
    reseed(seed)
    reference = build("none").state_dict()
    reseed(seed)
    model = build(None)
    own = model.state_dict()
    shared = {k: v for k, v in reference.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(shared, strict=False)
    return model, len(shared)
