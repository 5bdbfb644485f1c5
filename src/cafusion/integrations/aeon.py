"""FCN / ResNet time-series classifiers for aeon and scikit-learn, trained with the ``cafusion compare`` recipe.

``FCNClassifier`` / ``ResNetClassifier`` are aeon ``BaseClassifier`` estimators (3D numpy ``(n, C, L)``
or a list of ``(C, L_i)`` arrays for unequal lengths); ``SklearnFCNClassifier`` /
``SklearnResNetClassifier`` are plain scikit-learn estimators on the same core, for use without aeon
(2D ``(n, L)`` is one channel). Unequal lengths are zero-padded at the end and passed as ``lengths``
to the model, so each series is classified as if it were alone. The classes are built on first
access, so importing this module imports neither aeon nor scikit-learn.

Training is ``cafusion.models.recipe`` (Adam, ReduceLROnPlateau on the training loss, the batch size
and epoch order of ``cafusion compare``, the model of lowest training loss kept), on the CPU. A given
``random_state`` seeds the backbone as ``cafusion compare`` does for that seed: the ``none`` model's
weights, so two ``attention`` values with the same ``random_state`` start from the same backbone.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cafusion import _validation as check
from cafusion.layers.registry import get_attention
from cafusion.models import recipe
from cafusion.models.timeseries import FCN, ResNet

_MODELS: dict[str, type[nn.Module]] = {"fcn": FCN, "resnet": ResNet}
_NAMES = {"fcn": "FCN", "resnet": "ResNet"}
_PREDICT_BATCH = 256

Array = np.ndarray[Any, Any]


def pad_series(X: Any) -> tuple[Array, Array | None]:
    """(n, C, L) float32 and lengths: None for a 3D array, the real lengths for a list of (C, L_i)."""
    if isinstance(X, np.ndarray):
        if X.ndim == 2:
            X = X[:, None, :]
        if X.ndim != 3:
            raise ValueError(f"X must be (n, C, L) or a list of (C, L_i) arrays, got shape {X.shape}")
        return np.ascontiguousarray(X, dtype=np.float32), None
    if not isinstance(X, Sequence) or len(X) == 0:
        raise TypeError(f"X must be a 3D numpy array or a non-empty list of (C, L_i) arrays, got {type(X).__name__}")
    series = [np.asarray(s, dtype=np.float32) for s in X]
    series = [s[None, :] if s.ndim == 1 else s for s in series]
    if any(s.ndim != 2 or s.shape[0] != series[0].shape[0] or s.shape[1] == 0 for s in series):
        raise ValueError("X must be a list of non-empty (C, L_i) arrays with the same C")
    lengths = np.array([s.shape[1] for s in series], dtype=np.int64)
    out = np.zeros((len(series), series[0].shape[0], int(lengths.max())), dtype=np.float32)
    for i, s in enumerate(series):
        out[i, :, : s.shape[1]] = s
    return out, lengths


def _check_params(model: str, est: Any) -> dict[str, Any]:
    """The estimator's hyper-parameters, each checked with a one-line error naming it."""
    if not isinstance(est.attention, str):
        raise TypeError(f"attention must be a registry name (str), got {est.attention!r}")
    get_attention(est.attention)  # ValueError naming the unknown attention and the known names
    if est.attention_kwargs is not None and not isinstance(est.attention_kwargs, Mapping):
        raise TypeError(f"attention_kwargs must be a mapping or None, got {type(est.attention_kwargs).__name__}")
    check.positive_int("n_epochs", est.n_epochs)
    if est.batch_size is not None:
        check.positive_int("batch_size", est.batch_size)
    rs = est.random_state
    if rs is not None and (isinstance(rs, bool) or not isinstance(rs, (int, np.integer)) or rs < 0):
        raise ValueError(f"random_state must be a non-negative int or None, got {rs!r}")
    filters = est.filters
    if filters is not None:
        if not isinstance(filters, (tuple, list)) or not filters:
            raise TypeError(f"filters must be a non-empty tuple of positive ints or None, got {filters!r}")
        for width in filters:
            check.positive_int("filters", width)
        if model == "fcn" and len(filters) != len(FCN.FILTERS):
            raise ValueError(f"filters must hold {len(FCN.FILTERS)} widths for FCN, got {tuple(filters)!r}")
    keys = ("attention", "attention_kwargs", "n_epochs", "batch_size", "filters")
    params = {k: getattr(est, k) for k in keys}
    params["seed"] = int(np.random.randint(0, 2**31 - 1)) if rs is None else int(rs)
    return params


class _TorchCore:
    """Fit/predict of one FCN or ResNet on padded arrays; the estimators hold one, pickled by state_dict."""

    def __init__(self, model: str, params: dict[str, Any]) -> None:
        self.model_name = model
        self.params = params
        self.module: nn.Module | None = None
        self.config: dict[str, Any] = {}
        self.train_loss: list[float] = []  # per epoch, as ``cafusion compare`` records it

    def _build(self, in_channels: int, num_classes: int, attention: str | None = None) -> nn.Module:
        cls = _MODELS[self.model_name]
        filters = self.params["filters"]
        if filters is not None:  # smaller widths, e.g. for fast tests; None is the published model
            cls = type(cls.__name__, (cls,), {"FILTERS": tuple(filters)})
        self.config = {"in_channels": in_channels, "num_classes": num_classes}
        name = self.params["attention"] if attention is None else attention
        kwargs = self.params["attention_kwargs"] if attention is None else None
        return cls(in_channels, num_classes, name, kwargs)

    def initial(self, in_channels: int, num_classes: int) -> nn.Module:
        """The untrained model of the seed: the ``none`` model's backbone weights, as ``cafusion compare``."""
        with torch.random.fork_rng(devices=[]):  # the caller's torch RNG is left as it was
            model, _ = recipe.paired_model(
                lambda attention: self._build(in_channels, num_classes, attention),
                self.params["seed"],
                reseed=torch.default_generator.manual_seed,  # the CPU generator only: these train on the CPU
            )
        return model

    def fit(self, x: Array, lengths: Array | None, y: Array, k: int) -> None:
        if x.shape[2] < 2:
            raise ValueError(f"X has {x.shape[2]} feature(s) (time steps) per series; training needs at least 2")
        p, n = self.params, len(y)
        model = self.initial(x.shape[1], k)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
        lt = None if lengths is None else torch.from_numpy(lengths)
        batch = p["batch_size"] or recipe.recipe_batch_size(self.model_name, n)
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.LR)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=recipe.FACTOR, patience=recipe.PATIENCE, min_lr=recipe.MIN_LR
        )
        best_loss, best_state = math.inf, copy.deepcopy(model.state_dict())
        self.train_loss = []
        for epoch in range(p["n_epochs"]):
            model.train()
            order = recipe.epoch_order(p["seed"], epoch, n)
            loss_sum = 0.0
            for i in range(0, n, batch):
                index = order[i : i + batch]
                logits = model(xt[index], None if lt is None else lt[index])
                loss = F.cross_entropy(logits.float(), yt[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                loss_sum += float(loss.detach()) * len(index)
            train_loss = loss_sum / n
            self.train_loss.append(train_loss)
            scheduler.step(train_loss)
            if train_loss < best_loss:  # the recipe keeps the model of the lowest training loss
                best_loss, best_state = train_loss, copy.deepcopy(model.state_dict())
        model.load_state_dict(best_state)
        self.module = model.eval()

    def proba(self, x: Array, lengths: Array | None) -> Array:
        if self.module is None:
            raise RuntimeError("the classifier is not fitted; call fit first")
        if x.shape[1] != self.config["in_channels"]:
            raise ValueError(f"X has {x.shape[1]} channels, but the classifier was fit on {self.config['in_channels']}")
        xt = torch.from_numpy(x)
        lt = None if lengths is None else torch.from_numpy(lengths)
        outs: list[Tensor] = []
        with torch.no_grad():
            for i in range(0, len(xt), _PREDICT_BATCH):
                part = slice(i, i + _PREDICT_BATCH)
                logits = self.module(xt[part], None if lt is None else lt[part])
                outs.append(torch.softmax(logits.float(), dim=1))
        return torch.cat(outs).numpy().astype(np.float64)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        module = state.pop("module")
        state["state_dict"] = None if module is None else module.state_dict()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        sd = state.pop("state_dict")
        self.__dict__.update(state)
        self.module = None
        if sd is not None:
            self.module = self._build(self.config["in_channels"], self.config["num_classes"])
            self.module.load_state_dict(sd)
            self.module.eval()


class _Params:
    """The hyper-parameters of all four estimators: one ``__init__``, so both libraries see one signature.

    ``filters`` None is the published widths; ``random_state`` None draws a seed from numpy's global RNG.
    """

    def __init__(
        self,
        attention: str = "caft",
        n_epochs: int = recipe.EPOCHS,
        batch_size: int | None = None,
        random_state: int | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        filters: tuple[int, ...] | None = None,
    ) -> None:
        self.attention = attention
        self.n_epochs = n_epochs
        self.batch_size = batch_size
        self.random_state = random_state
        self.attention_kwargs = attention_kwargs
        self.filters = filters
        super().__init__()


def _is_series_list(X: Any) -> bool:
    """A list of (C, L_i) arrays, or of 1D arrays of unequal length: aeon's np-list, not a 2D table."""
    if not isinstance(X, (list, tuple)) or not X or not all(isinstance(s, np.ndarray) for s in X):
        return False
    return any(s.ndim == 2 for s in X) or len({s.shape for s in X}) > 1


def _make_sklearn(model: str) -> type:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import (
        check_array,
        check_consistent_length,
        check_is_fitted,
        column_or_1d,
        validate_data,
    )

    def series(est: Any, X: Any, reset: bool) -> tuple[Array, Array | None]:
        if not _is_series_list(X):
            return pad_series(validate_data(est, X, reset=reset, allow_nd=True, dtype=[np.float64, np.float32]))
        x, lengths = pad_series(X)
        check_array(x.reshape(len(x), -1))  # NaN / inf refused as for arrays
        if reset:
            est.n_features_in_ = x.shape[1]
        return x, lengths

    class SklearnClassifier(_Params, ClassifierMixin, BaseEstimator):  # type: ignore[misc]
        __doc__ = (
            f"scikit-learn {_NAMES[model]} classifier on (n, C, L) arrays, (n, L) as one channel, or (C, L_i) lists."
        )

        def fit(self, X: Any, y: Any) -> Any:
            params = _check_params(model, self)
            if y is None:
                raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
            x, lengths = series(self, X, reset=True)
            y = np.asarray(y)
            if y.ndim == 2 and y.shape[1] == 1:
                y = column_or_1d(y, warn=True)
            check_consistent_length(x, y)
            check_classification_targets(y)
            self.classes_, codes = np.unique(y, return_inverse=True)
            core = _TorchCore(model, params)
            core.fit(x, lengths, codes, len(self.classes_))
            self.core_ = core
            return self

        def predict_proba(self, X: Any) -> Array:
            check_is_fitted(self, "core_")
            x, lengths = series(self, X, reset=False)
            return self.core_.proba(x, lengths)

        def predict(self, X: Any) -> Array:
            proba = self.predict_proba(X)  # first, so an unfitted estimator raises NotFittedError
            return self.classes_[proba.argmax(axis=1)]  # type: ignore[no-any-return]

    return SklearnClassifier


def _make_aeon(model: str) -> type:
    from aeon.classification.base import BaseClassifier

    class AeonClassifier(_Params, BaseClassifier):  # type: ignore[misc]
        __doc__ = f"aeon {_NAMES[model]} classifier: numpy3D (n, C, L) or np-list of (C, L_i) for unequal lengths."

        _tags: ClassVar[dict[str, Any]] = {
            "capability:multivariate": True,
            "capability:unequal_length": True,
            "X_inner_type": ["numpy3D", "np-list"],
            "algorithm_type": "deeplearning",
            "non_deterministic": False,
            "cant_pickle": False,
            "python_dependencies": "torch",
        }

        def _fit(self, X: Any, y: Any) -> Any:
            params = _check_params(model, self)
            x, lengths = pad_series(X)
            core = _TorchCore(model, params)
            core.fit(x, lengths, np.searchsorted(self.classes_, y), len(self.classes_))
            self.core_ = core
            return self

        def _predict_proba(self, X: Any) -> Array:
            return self.core_.proba(*pad_series(X))

        def _predict(self, X: Any) -> Array:
            return self.classes_[self._predict_proba(X).argmax(axis=1)]  # type: ignore[no-any-return]

        @classmethod
        def _get_test_params(cls, parameter_set: str = "default") -> dict[str, Any]:
            """Tiny settings (2 epochs, 4-8 filters) so aeon's checks run in seconds."""
            return {"n_epochs": 2, "filters": (4, 8, 4), "random_state": 0}

    return AeonClassifier


_FACTORIES = {
    "FCNClassifier": lambda: _make_aeon("fcn"),
    "ResNetClassifier": lambda: _make_aeon("resnet"),
    "SklearnFCNClassifier": lambda: _make_sklearn("fcn"),
    "SklearnResNetClassifier": lambda: _make_sklearn("resnet"),
}
_CACHE: dict[str, type] = {}
__all__ = ["pad_series", *_FACTORIES]


def __getattr__(name: str) -> type:
    """Build the estimator classes on first use, so importing this module imports neither aeon nor sklearn."""
    if name not in _FACTORIES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _CACHE:
        cls = _FACTORIES[name]()
        cls.__name__ = cls.__qualname__ = name  # pickle finds the class here, through this __getattr__
        cls.__module__ = __name__
        _CACHE[name] = cls
    return _CACHE[name]
