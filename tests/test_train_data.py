"""Data loading for ``cafusion train``: image folders, .npz/.pt tensor files, the split, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cafusion.training.data import load_dataset, split_dataset
from cafusion.training.dataset import DataError


def write_images(root: Path, classes: int = 3, per_class: int = 4, size: int = 8, mode: str = "RGB") -> Path:
    """Class c images are filled around 60*c, half PNG, half JPEG."""
    rng = np.random.default_rng(0)
    channels = 3 if mode == "RGB" else 1
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((size, size, channels)) * 40 + 60 * c).astype(np.uint8)
            img = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels)
            img.save(folder / (f"{i}.png" if i % 2 == 0 else f"{i}.jpeg"))
    return root


def test_image_folder_rgb(tmp_path: Path) -> None:
    data = load_dataset(write_images(tmp_path / "imgs", classes=3, per_class=4))
    assert data.x.shape == (12, 3, 8, 8) and data.x.dtype == torch.float32
    assert data.classes == ("class_0", "class_1", "class_2")
    assert data.y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert float(data.x.min()) >= 0.0 and float(data.x.max()) <= 1.0
    # class 2 is brighter than class 0 (labels follow the folder the file is in)
    assert float(data.x[data.y == 2].mean()) > float(data.x[data.y == 0].mean()) + 0.3


def test_image_folder_grey_is_one_channel(tmp_path: Path) -> None:
    data = load_dataset(write_images(tmp_path / "imgs", classes=2, per_class=2, mode="L"))
    assert data.x.shape == (4, 1, 8, 8)
    assert data.in_channels == 1 and data.spatial_dims == 2 and data.num_classes == 2


def test_image_folder_errors_name_the_problem(tmp_path: Path) -> None:
    root = write_images(tmp_path / "one", classes=1, per_class=2)
    with pytest.raises(DataError, match="at least 2 class sub-folders, found 1"):
        load_dataset(root)

    root = write_images(tmp_path / "bad", classes=2, per_class=2)
    broken = root / "class_1" / "broken.png"
    broken.write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png"):
        load_dataset(root)

    root = write_images(tmp_path / "sizes", classes=2, per_class=2)
    Image.new("RGB", (9, 8)).save(root / "class_1" / "wide.png")
    with pytest.raises(DataError, match=r"wide\.png' has size 9x8.*same size"):
        load_dataset(root)

    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir()
    with pytest.raises(DataError, match="holds no"):
        load_dataset(tmp_path / "empty")


def test_npz_1d_signals_and_pt(tmp_path: Path) -> None:
    x = np.random.default_rng(1).standard_normal((10, 2, 16)).astype(np.float32)
    y = np.arange(10) % 3
    np.savez(tmp_path / "sig.npz", x=x, y=y)
    data = load_dataset(tmp_path / "sig.npz")
    assert data.x.shape == (10, 2, 16) and data.spatial_dims == 1 and data.num_classes == 3
    torch.testing.assert_close(data.x, torch.from_numpy(x))
    assert data.y.dtype == torch.int64 and data.y.tolist() == y.tolist()

    torch.save({"x": torch.from_numpy(x).double(), "y": torch.from_numpy(y).int()}, tmp_path / "sig.pt")
    data_pt = load_dataset(tmp_path / "sig.pt")
    assert data_pt.x.dtype == torch.float32
    torch.testing.assert_close(data_pt.x, data.x)
    assert torch.equal(data_pt.y, data.y)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((4, 1, 5)), "y": np.array([0, 1, 0])}, "x has 4 samples but y has 3 labels"),
        ({"x": np.zeros((4, 1, 5))}, "must hold arrays 'x' and 'y'"),
        ({"x": np.zeros((4, 5)), "y": np.array([0, 1, 0, 1])}, r"x must have shape \(N, C, L\)"),
        ({"x": np.zeros((4, 1, 5)), "y": np.array([0.0, 1.0, 0, 1])}, "integer class labels"),
        ({"x": np.zeros((4, 1, 5)), "y": np.zeros(4, dtype=np.int64)}, "at least 2 classes, found 1"),
        ({"x": np.full((2, 1, 5), np.nan), "y": np.array([0, 1])}, "NaN or infinite"),
    ],
)
def test_npz_errors(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_dataset(tmp_path / "d.npz")


def test_malformed_paths(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "junk.npz").write_bytes(b"not a zip archive")
    with pytest.raises(DataError, match=r"cannot read .*junk\.npz"):
        load_dataset(tmp_path / "junk.npz")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match=r"cannot read .*junk\.pt"):
        load_dataset(tmp_path / "junk.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(DataError, match="dict with tensors 'x' and 'y'"):
        load_dataset(tmp_path / "list.pt")
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(DataError, match="neither a folder"):
        load_dataset(tmp_path / "data.csv")


def test_split_is_seeded_disjoint_and_complete(tmp_path: Path) -> None:
    x = torch.arange(20, dtype=torch.float32).reshape(20, 1, 1).expand(20, 1, 3).contiguous()
    torch.save({"x": x, "y": torch.arange(20) % 2}, tmp_path / "d.pt")
    data = load_dataset(tmp_path / "d.pt")
    train_a, val_a = split_dataset(data, 0.25, seed=3)
    _, val_b = split_dataset(data, 0.25, seed=3)
    _, val_c = split_dataset(data, 0.25, seed=4)
    assert val_a is not None and val_b is not None and val_c is not None
    assert len(train_a) == 15 and len(val_a) == 5
    ids = lambda d: sorted(int(v) for v in d.x[:, 0, 0])  # noqa: E731
    assert ids(val_a) == ids(val_b) and ids(val_a) != ids(val_c)
    assert sorted(ids(train_a) + ids(val_a)) == list(range(20))
    assert split_dataset(data, 0.0, seed=0)[1] is None
