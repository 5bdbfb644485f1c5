"""Variable-length series for ``cafusion train``: padded x + lengths, lists of (C, L_i) series, batching.

Formats: an .npz with ``x`` (N, C, Lmax) and ``lengths`` (N,); an .npz with series ``x_0``, ``x_1``,
... (no pickled object arrays); a .pt dict whose ``x`` is a list of (C, L_i) tensors. A batch is cut to
its own longest series and the model gets the lengths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cafusion.cli.main import main
from cafusion.models.timeseries import FCN
from cafusion.training.data import load_dataset, split_dataset
from cafusion.training.dataset import DataError

LENGTHS = [5, 9, 3, 7, 9, 4, 6, 8]


def series(channels: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((channels, n)).astype(np.float32) for n in LENGTHS]


def labels() -> np.ndarray:
    return np.arange(len(LENGTHS)) % 2


def write_ragged_npz(path: Path) -> Path:
    np.savez(path, y=labels(), **{f"x_{i}": s for i, s in enumerate(series())})
    return path


def check_padded(data_x: torch.Tensor, data_lengths: torch.Tensor | None) -> None:
    assert data_lengths is not None and data_lengths.tolist() == LENGTHS
    assert data_x.shape == (len(LENGTHS), 2, max(LENGTHS)) and data_x.dtype == torch.float32
    for i, s in enumerate(series()):
        torch.testing.assert_close(data_x[i, :, : s.shape[1]], torch.from_numpy(s), rtol=0, atol=0)
        assert bool((data_x[i, :, s.shape[1] :] == 0).all())


def test_npz_of_series_is_padded_with_lengths(tmp_path: Path) -> None:
    data = load_dataset(write_ragged_npz(tmp_path / "d.npz"))
    check_padded(data.x, data.lengths)
    assert data.y.tolist() == labels().tolist()


def test_pt_list_of_series_is_padded_with_lengths(tmp_path: Path) -> None:
    torch.save({"x": [torch.from_numpy(s) for s in series()], "y": torch.from_numpy(labels())}, tmp_path / "d.pt")
    data = load_dataset(tmp_path / "d.pt")
    check_padded(data.x, data.lengths)


def test_padded_npz_with_lengths(tmp_path: Path) -> None:
    padded = np.full((len(LENGTHS), 2, 9), 1e3, dtype=np.float32)  # what the padding holds is never read
    for i, s in enumerate(series()):
        padded[i, :, : s.shape[1]] = s
    np.savez(tmp_path / "d.npz", x=padded, y=labels(), lengths=np.array(LENGTHS, dtype=np.int32))
    data = load_dataset(tmp_path / "d.npz")
    assert data.lengths is not None and data.lengths.dtype == torch.int64 and data.lengths.tolist() == LENGTHS


def test_batch_is_cut_to_its_longest_series_and_split_keeps_lengths(tmp_path: Path) -> None:
    data = load_dataset(write_ragged_npz(tmp_path / "d.npz"))
    x, y, lengths = data.batch(torch.tensor([0, 2, 5]))
    assert x.shape == (3, 2, 5) and lengths is not None and lengths.tolist() == [5, 3, 4]
    assert y.tolist() == labels()[[0, 2, 5]].tolist()
    train, val = split_dataset(data, 0.25, seed=0)
    assert val is not None and train.lengths is not None and val.lengths is not None
    for part in (train, val):  # each sample keeps its own length
        for i in range(len(part)):
            n = int(part.lengths[i])
            assert bool(part.x[i, :, n:].eq(0).all()) and bool(part.x[i, :, n - 1].ne(0).any())


def test_batched_logits_equal_each_series_alone(tmp_path: Path) -> None:
    """Loading, batching and the model's masked head together: a loaded batch scores each series as alone."""
    data = load_dataset(write_ragged_npz(tmp_path / "d.npz"))
    torch.manual_seed(0)
    model = FCN(2, 2, attention="cbam").eval()
    x, _, lengths = data.batch(torch.arange(len(data)))
    with torch.no_grad():
        batched = model(x, lengths)
        for i, s in enumerate(series()):
            torch.testing.assert_close(batched[i], model(torch.from_numpy(s)[None])[0], rtol=1e-5, atol=1e-5)


def test_equal_length_data_has_no_lengths(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 1, 6), np.float32), y=np.array([0, 1, 0, 1]))
    data = load_dataset(tmp_path / "d.npz")
    assert data.lengths is None
    x, _, lengths = data.batch(torch.tensor([1, 2]))
    assert lengths is None and x.shape == (2, 1, 6)


def test_ucr_unequal_lengths_reach_the_dataset() -> None:
    data = load_dataset("ucr:JapaneseVowels")
    assert data.lengths is not None and len(data.lengths) == len(data)
    assert int(data.lengths.min()) < int(data.lengths.max()) <= data.x.shape[-1]  # padded to the test split's longest
    x, _, lengths = data.batch(torch.arange(4))
    assert lengths is not None and x.shape[-1] == int(lengths.max())
    assert load_dataset("ucr:ItalyPowerDemand").lengths is None


def bad_file(tmp_path: Path, case: str) -> Path:
    y = np.array([0, 1])
    p = tmp_path / "d.npz"
    if case == "x and x_0":
        np.savez(p, x=np.zeros((2, 1, 3)), x_0=np.zeros((1, 3)), y=y)
    elif case == "gap":
        np.savez(p, x_0=np.zeros((1, 3)), x_2=np.zeros((1, 3)), y=y)
    elif case == "series with lengths":
        np.savez(p, x_0=np.zeros((1, 3)), x_1=np.zeros((1, 2)), y=y, lengths=np.array([3, 2]))
    elif case == "channels differ":
        np.savez(p, x_0=np.zeros((1, 3)), x_1=np.zeros((2, 3)), y=y)
    elif case == "series not 2d":
        np.savez(p, x_0=np.zeros((1, 3)), x_1=np.zeros(3), y=y)
    elif case == "empty series":
        np.savez(p, x_0=np.zeros((1, 3)), x_1=np.zeros((1, 0)), y=y)
    elif case == "length too long":
        np.savez(p, x=np.zeros((2, 1, 3)), y=y, lengths=np.array([3, 4]))
    elif case == "float lengths":
        np.savez(p, x=np.zeros((2, 1, 3)), y=y, lengths=np.array([0.5, 1.0]))
    elif case == "lengths of images":
        np.savez(p, x=np.zeros((2, 1, 3, 3)), y=y, lengths=np.array([3, 2]))
    elif case == "object array":
        ragged = np.empty(2, dtype=object)
        ragged[0], ragged[1] = np.zeros((1, 3)), np.zeros((1, 2))
        np.savez(p, x=ragged, y=y)
    elif case == "pt list with lengths":
        p = tmp_path / "d.pt"
        torch.save(
            {"x": [torch.zeros(1, 3), torch.zeros(1, 2)], "y": torch.tensor(y), "lengths": torch.tensor([3, 2])}, p
        )
    return p


BAD = {
    "x and x_0": r"must hold arrays 'x' and 'y' .* or series arrays 'x_0', 'x_1'",
    "gap": r"series keys must be x_0 \.\. x_1 without gaps",
    "series with lengths": "carry their own lengths; drop 'lengths'",
    "channels differ": "series 1 has 2 channels, series 0 has 1",
    "series not 2d": r"series 1 must be a real \(C, L\) tensor",
    "empty series": r"series 1 must be a real \(C, L\) tensor with L >= 1",
    "length too long": r"lengths must lie in \[1, 3\] .*sample 1 has 4",
    "float lengths": r"lengths must hold integer \(absolute\) lengths",
    "lengths of images": r"lengths need x of shape \(N, C, L\)",
    "object array": "(?i)object array",
    "pt list with lengths": "carries its own lengths; drop 'lengths'",
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_variable_length_files_get_one_line_errors(tmp_path: Path, case: str) -> None:
    with pytest.raises(DataError, match=BAD[case]) as info:
        load_dataset(bad_file(tmp_path, case))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("model", ["fcn", "small_cnn"])
def test_cafusion_train_passes_lengths_and_cuts_batches(
    tmp_path: Path, model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cafusion.models import SmallCNN

    cls = FCN if model == "fcn" else SmallCNN
    seen: list[tuple[int, list[int] | None]] = []
    original = cls.forward

    def spy(self: torch.nn.Module, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        seen.append((x.shape[-1], None if lengths is None else lengths.tolist()))
        return original(self, x, lengths)  # type: ignore[arg-type]

    monkeypatch.setattr(cls, "forward", spy)
    data = write_ragged_npz(tmp_path / "d.npz")
    argv = ["train", "--data", str(data), "--model", model, "--attention", "caft", "--epochs", "1"]
    assert main([*argv, "--batch-size", "3", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert seen and all(lengths is not None and width == max(lengths) for width, lengths in seen)
    assert (tmp_path / "run" / "latest.json").is_file()
