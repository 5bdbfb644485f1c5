"""Load a user's data set into memory: an image folder, or a tensor file holding ``x`` and ``y``.

Everything is read up front so that a bad file fails the run before the first step, with its name,
rather than mid-epoch. The whole set is held as two tensors; this suits the small and medium data
sets this trainer is for, and it makes the per-epoch order a pure function of (seed, epoch).

Variable-length series (N, C, L_i) are held zero-padded to the longest, with their ``lengths``; a
batch is cut to its own longest series (``batch``) and the model gets the lengths.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cafusion.training.dataset import DataError, Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TENSOR_SUFFIXES = (".npz", ".pt")
_GRAY_MODES = ("1", "L", "I", "I;16", "F")


def load_dataset(path: str | Path) -> Dataset:
    """Read ``path``: a folder of class sub-folders of PNG/JPEG images, or a ``.npz``/``.pt`` file.

    ``ucr:NAME`` reads the published TRAIN split of a UCR/UEA set bundled in aeon (see ``ucr.py``).
    """
    if isinstance(path, str) and path.startswith("ucr:"):
        from cafusion.training.ucr import load_ucr

        return load_ucr(path[len("ucr:") :]).train
    p = Path(path)
    if not p.exists():
        raise DataError(f"data path {str(p)!r} does not exist")
    if p.is_dir():
        return _load_image_folder(p)
    if p.suffix.lower() in TENSOR_SUFFIXES:
        return _load_tensor_file(p)
    raise DataError(
        f"data path {str(p)!r} is neither a folder of class sub-folders nor a {' or '.join(TENSOR_SUFFIXES)} file"
    )


def split_dataset(data: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """Split off a seeded random ``val_fraction`` of the samples; the same seed gives the same split."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    n_val = round(len(data) * val_fraction)
    if n_val == 0:
        return data, None
    if n_val >= len(data):
        raise DataError(f"a validation fraction of {val_fraction} leaves no training samples out of {len(data)}")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.subset(order[n_val:]), data.subset(order[:n_val])


def _load_image_folder(root: Path) -> Dataset:
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(class_dirs) < 2:
        found = [d.name for d in class_dirs]
        raise DataError(f"image folder {str(root)!r} needs at least 2 class sub-folders, found {len(found)}: {found}")
    files: list[tuple[Path, int]] = []
    for label, d in enumerate(class_dirs):
        images = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"class folder {str(d)!r} holds no {'/'.join(IMAGE_SUFFIXES)} images")
        files.extend((f, label) for f in images)
    arrays = [_read_image(f) for f, _ in files]
    gray = all(a.ndim == 2 for a in arrays)
    if not gray:  # mixed grey and colour: read everything as RGB so the channel count is one number
        arrays = [_read_image(f, rgb=True) for f, _ in files]
    first_shape = arrays[0].shape
    for (f, _), a in zip(files, arrays, strict=True):
        if a.shape != first_shape:
            raise DataError(
                f"image {str(f)!r} has size {a.shape[1]}x{a.shape[0]}, but {str(files[0][0])!r} has "
                f"{first_shape[1]}x{first_shape[0]}; all images must have the same size"
            )
    stacked = torch.from_numpy(np.stack(arrays)).to(torch.float32) / 255.0
    x = stacked.unsqueeze(1) if gray else stacked.permute(0, 3, 1, 2).contiguous()
    y = torch.tensor([label for _, label in files], dtype=torch.int64)
    return Dataset(x, y, tuple(d.name for d in class_dirs))


def _read_image(path: Path, rgb: bool = False) -> np.ndarray:
    """Decode one image to uint8 (H, W) for grey or (H, W, 3) for colour; a bad file names itself."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ImportError("reading an image folder needs Pillow: pip install 'cafusion[images]'") from None

    try:
        with Image.open(path) as img:
            if rgb or img.mode not in _GRAY_MODES:
                return np.asarray(img.convert("RGB"), dtype=np.uint8)
            return np.asarray(img.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot read image {str(path)!r}: {exc}") from None


def _load_tensor_file(path: Path) -> Dataset:
    raw_x, raw_y, raw_lengths = _read_npz(path) if path.suffix.lower() == ".npz" else _read_pt(path)
    if isinstance(raw_x, list):
        raw_x, raw_lengths = _pad_series(path, raw_x)
    x = raw_x.to(torch.float32)
    if x.dim() < 3:
        raise DataError(
            f"{str(path)!r}: x must have shape (N, C, L), (N, C, H, W) or (N, C, D, H, W), got {tuple(x.shape)}"
        )
    if raw_y.dim() != 1:
        raise DataError(f"{str(path)!r}: y must be a 1-D tensor of class labels, got shape {tuple(raw_y.shape)}")
    if raw_y.is_floating_point() or raw_y.is_complex() or raw_y.dtype == torch.bool:
        raise DataError(f"{str(path)!r}: y must hold integer class labels, got dtype {raw_y.dtype}")
    if x.shape[0] != raw_y.shape[0]:
        raise DataError(f"{str(path)!r}: x has {x.shape[0]} samples but y has {raw_y.shape[0]} labels")
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"{str(path)!r}: x holds NaN or infinite values")
    y = raw_y.to(torch.int64)
    if y.numel() and int(y.min()) < 0:
        raise DataError(f"{str(path)!r}: y must hold labels >= 0, got {int(y.min())}")
    num_classes = int(y.max()) + 1 if y.numel() else 0
    present = int(torch.unique(y).numel())
    if present < 2:
        raise DataError(f"{str(path)!r}: y must hold at least 2 classes, found {present}")
    lengths = None if raw_lengths is None else _check_lengths(path, raw_lengths, x)
    return Dataset(x, y, tuple(str(i) for i in range(num_classes)), lengths)


def _check_lengths(path: Path, lengths: Tensor, x: Tensor) -> Tensor:
    """``lengths`` of a padded (N, C, Lmax) ``x``: integers in [1, Lmax], one per sample."""
    if x.dim() != 3:
        raise DataError(f"{str(path)!r}: lengths need x of shape (N, C, L) (series), got {tuple(x.shape)}")
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise DataError(f"{str(path)!r}: lengths must hold integer (absolute) lengths, got dtype {lengths.dtype}")
    if tuple(lengths.shape) != (x.shape[0],):
        raise DataError(f"{str(path)!r}: lengths must have shape ({x.shape[0]},), got {tuple(lengths.shape)}")
    lengths = lengths.to(torch.int64)
    bad = (lengths < 1) | (lengths > x.shape[2])
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise DataError(
            f"{str(path)!r}: lengths must lie in [1, {x.shape[2]}] (x's last dim), sample {i} has {int(lengths[i])}"
        )
    return lengths


def _pad_series(path: Path, series: list[Tensor]) -> tuple[Tensor, Tensor]:
    """A list of (C, L_i) series -> x zero-padded to (N, C, max L_i) and lengths (N,)."""
    if not series:
        raise DataError(f"{str(path)!r}: the list of series is empty")
    for i, s in enumerate(series):
        if s.dim() != 2 or s.shape[1] < 1 or s.is_complex() or s.dtype == torch.bool:
            raise DataError(
                f"{str(path)!r}: series {i} must be a real (C, L) tensor with L >= 1, got {s.dtype} {tuple(s.shape)}"
            )
        if s.shape[0] != series[0].shape[0]:
            raise DataError(f"{str(path)!r}: series {i} has {s.shape[0]} channels, series 0 has {series[0].shape[0]}")
    channels = series[0].shape[0]
    lengths = torch.tensor([s.shape[1] for s in series], dtype=torch.int64)
    x = torch.zeros(len(series), channels, int(lengths.max()), dtype=torch.float32)
    for i, s in enumerate(series):
        x[i, :, : s.shape[1]] = s
    return x, lengths


Raw = tuple["Tensor | list[Tensor]", Tensor, "Tensor | None"]  # x (or a list of series), y, lengths


def _read_npz(path: Path) -> Raw:
    """``x`` and ``y`` (and optionally ``lengths``), or unequal-length series ``x_0``, ``x_1``, ... and ``y``."""
    if not zipfile.is_zipfile(path):  # numpy would suggest allow_pickle=True here: never for a user's file
        raise DataError(f"cannot read {str(path)!r} as .npz: not a zip archive of .npy arrays (as np.savez writes)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = _npz_layout(path, archive.files)
            arrays = [archive[k] for k in names]
            y = archive["y"]
            lengths = archive["lengths"] if "lengths" in archive.files else None
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        if "pickle" in str(exc):  # object arrays: loading them would run code from the file
            raise DataError(
                f"cannot read {str(path)!r} as .npz: x or y is an object array (pickled Python objects, "
                "never loaded); save them as numeric arrays"
            ) from None
        raise DataError(f"cannot read {str(path)!r} as .npz: {exc}") from None
    for name, a in [*zip(names, arrays, strict=True), ("y", y), ("lengths", lengths)]:
        if a is not None and a.dtype.kind not in "biuf":
            raise DataError(f"{str(path)!r}: {name} must be a numeric array, got {a.dtype}")
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
    raw_lengths = None if lengths is None else torch.from_numpy(np.ascontiguousarray(lengths))
    return (tensors[0] if names == ["x"] else tensors), torch.from_numpy(np.ascontiguousarray(y)), raw_lengths


def _npz_layout(path: Path, files: list[str]) -> list[str]:
    """The x keys: ``["x"]`` (+ optional ``lengths``), or ``x_0 .. x_{N-1}`` (one series each, no gaps)."""
    series = [k for k in files if k.startswith("x_") and k[2:].isdigit()]
    if "y" not in files or ("x" in files) == bool(series):
        raise DataError(
            f"{str(path)!r} must hold arrays 'x' and 'y' (+ optional 'lengths'), or series arrays 'x_0', 'x_1', "
            f"... and 'y'; has {sorted(files)}"
        )
    if "x" in files:
        return ["x"]
    if "lengths" in files:
        raise DataError(f"{str(path)!r}: series 'x_0', 'x_1', ... carry their own lengths; drop 'lengths'")
    expected = [f"x_{i}" for i in range(len(series))]
    if sorted(series) != sorted(expected):
        raise DataError(
            f"{str(path)!r}: series keys must be x_0 .. x_{len(series) - 1} without gaps, got {sorted(series)}"
        )
    return expected


def _read_pt(path: Path) -> Raw:
    """A dict with ``x`` (a tensor, or a list of (C, L_i) tensors) and ``y`` (+ optional ``lengths``)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many kinds (pickle, zip, unpickling policy)
        raise DataError(f"cannot read {str(path)!r} as a .pt file: {exc}".splitlines()[0]) from None
    x = obj.get("x") if isinstance(obj, dict) else None
    ragged = isinstance(x, list) and all(isinstance(s, Tensor) for s in x)
    lengths = obj.get("lengths") if isinstance(obj, dict) else None
    if (
        not (isinstance(x, Tensor) or ragged)
        or not isinstance(obj.get("y"), Tensor)
        or not isinstance(lengths, (Tensor, type(None)))
    ):
        got = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise DataError(
            f"{str(path)!r} must hold a dict with tensors 'x' and 'y' (x may be a list of (C, L) series; "
            f"+ optional tensor 'lengths'), got {got}"
        )
    if ragged and lengths is not None:
        raise DataError(f"{str(path)!r}: a list of series carries its own lengths; drop 'lengths'")
    assert isinstance(x, (Tensor, list))
    return x, obj["y"], lengths
