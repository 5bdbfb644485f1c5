"""Load a user's data set into memory: an image folder, or a tensor file holding ``x`` and ``y``.

Everything is read up front so that a bad file fails the run before the first step, with its name,
rather than mid-epoch. The whole set is held as two tensors; this suits the small and medium data
sets this trainer is for, and it makes the per-epoch order a pure function of (seed, epoch).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TENSOR_SUFFIXES = (".npz", ".pt")
_GRAY_MODES = ("1", "L", "I", "I;16", "F")


class DataError(ValueError):
    """A data path or file that cannot be used; the message names the path and the problem."""


@dataclass(frozen=True)
class Dataset:
    """Samples ``x`` (N, C, *spatial) float32 and labels ``y`` (N,) int64 in 0..num_classes-1."""

    x: Tensor
    y: Tensor
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.x.shape[1])

    @property
    def spatial_dims(self) -> int:
        return self.x.dim() - 2

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, index: Tensor) -> Dataset:
        return Dataset(self.x[index], self.y[index], self.classes)


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
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if rgb or img.mode not in _GRAY_MODES:
                return np.asarray(img.convert("RGB"), dtype=np.uint8)
            return np.asarray(img.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot read image {str(path)!r}: {exc}") from None


def _load_tensor_file(path: Path) -> Dataset:
    raw_x, raw_y = _read_npz(path) if path.suffix.lower() == ".npz" else _read_pt(path)
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
    return Dataset(x, y, tuple(str(i) for i in range(num_classes)))


def _read_npz(path: Path) -> tuple[Tensor, Tensor]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                raise DataError(f"{str(path)!r} must hold arrays 'x' and 'y', has {sorted(archive.files)}")
            x, y = archive["x"], archive["y"]
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"cannot read {str(path)!r} as .npz: {exc}") from None
    if x.dtype.kind not in "biuf" or y.dtype.kind not in "biuf":
        raise DataError(f"{str(path)!r}: x and y must be numeric arrays, got {x.dtype} and {y.dtype}")
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))


def _read_pt(path: Path) -> tuple[Tensor, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many kinds (pickle, zip, unpickling policy)
        raise DataError(f"cannot read {str(path)!r} as a .pt file: {exc}".splitlines()[0]) from None
    if not isinstance(obj, dict) or not all(isinstance(obj.get(k), Tensor) for k in ("x", "y")):
        got = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise DataError(f"{str(path)!r} must hold a dict with tensors 'x' and 'y', got {got}")
    return obj["x"], obj["y"]
