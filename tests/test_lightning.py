"""FusionMonitorCallback under a real lightning.Trainer on the CPU: logged values equal the monitor's."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from cafusion import ChannelAttentionFusionTLayer  # noqa: E402
from cafusion.integrations.lightning import FILES, METRICS, FusionMonitorCallback, default_labels  # noqa: E402

# 32 samples, 3 classes; one process takes batches of 16, each of 2 DDP ranks 8 of them. The module's
# own DistributedSampler (Lightning's would shuffle) hands rank r the samples r, r+2, ..., so a step's
# two halves together are the one-process batch, and the mean of the two mean-loss gradients is its
# gradient: both runs see the same model at every step.
SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger
    from torch import nn
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
    from cafusion import ChannelAttentionFusionTLayer
    from cafusion.integrations.lightning import FusionMonitorCallback

    class Tiny(pl.LightningModule):
        def __init__(self, data):
            super().__init__()
            self.data = data
            block = ChannelAttentionFusionTLayer(8, learnable_temperature=True)
            with torch.no_grad():  # w_avg near 0.5: prefer_max is neither 0 nor 1
                block.fusion_router[2].bias.zero_()
            self.net = nn.Sequential(nn.Conv1d(2, 8, 3, padding=1), block)
            self.head = nn.Linear(8, 3)
        def forward(self, x):
            return self.head(self.net(x).mean(-1))
        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)
        def validation_step(self, batch, _):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5)
        def train_dataloader(self):
            world, rank = self.trainer.world_size, self.trainer.global_rank
            sampler = DistributedSampler(self.data, world, rank, shuffle=False)  # rank r: r, r + world, ...
            return DataLoader(self.data, batch_size=16 // world, sampler=sampler)
        def val_dataloader(self):
            return DataLoader(TensorDataset(*self.data[:8]), batch_size=4)

    def main(out, devices):
        torch.manual_seed(0)
        model = Tiny(TensorDataset(torch.randn(32, 2, 10), torch.arange(32) % 3))
        cb = FusionMonitorCallback(out_dir=out + "/diag")
        trainer = pl.Trainer(
            accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
            max_epochs=2, log_every_n_steps=1, enable_progress_bar=False, enable_checkpointing=False,
            enable_model_summary=False, logger=CSVLogger(out, name="", version=""), callbacks=[cb],
            use_distributed_sampler=False,
        )
        trainer.fit(model)
        return cb, trainer

    if __name__ == "__main__":
        cb, trainer = main(sys.argv[1], int(sys.argv[2]))
        report = {"log_dir": trainer.logger.log_dir, "written": [str(p) for p in cb.written]}
        with open(f"{sys.argv[1]}/rank{trainer.global_rank}.json", "w") as f:
            json.dump(report, f)
    """
)


def _logged(log_dir: str | Path) -> list[dict[str, float]]:
    """The CSVLogger rows that hold fusion metrics (one per epoch), as floats."""
    with (Path(log_dir) / "metrics.csv").open(encoding="utf-8") as f:
        rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
    return [r for r in rows if any(k.startswith("fusion/") for k in r)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    """One in-process fit of the script's model: (callback, trainer, out folder)."""
    root = tmp_path_factory.mktemp("one")
    (root / "fit.py").write_text(SCRIPT, encoding="utf-8")
    out = root / "run"
    sys.path.insert(0, str(root))
    try:
        import fit  # type: ignore[import-not-found]

        cb, trainer = fit.main(str(out), 1)
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("fit", None)
    return cb, trainer, out


def test_one_process_fit_logs_the_monitors_numbers(one_process: tuple[Any, Any, Path]) -> None:
    cb, trainer, out = one_process
    assert Path(trainer.logger.log_dir) == out  # CSVLogger(out, name="", version="") writes out/metrics.csv
    rows = _logged(trainer.logger.log_dir)
    assert cb.monitor is not None and not cb.monitor.attached and len(rows) == 2
    for epoch, row in enumerate(rows):
        assert row["epoch"] == epoch
        (s,) = [h for h in cb.monitor.history if h.step == epoch]
        # 32 training samples: the sanity check's and the validation's forwards were not counted
        assert s.samples == 32 and s.class_w_avg.keys() == {0, 1, 2}  # labels came from the (x, y) batch
        assert {k for k in row if k.startswith("fusion/")} == {f"fusion/net.1/{name}" for name in METRICS}
        for name in METRICS:
            assert row[f"fusion/net.1/{name}"] == pytest.approx(getattr(s, name), rel=1e-6, abs=1e-7)
    first, second = rows
    for name in ("w_avg_mean", "T"):  # the router and the temperature trained
        assert first[f"fusion/net.1/{name}"] != second[f"fusion/net.1/{name}"], name
    assert 0 < first["fusion/net.1/prefer_max"] < 1
    logged = trainer.callback_metrics["fusion/net.1/w_avg_mean"]
    assert float(logged) == pytest.approx(second["fusion/net.1/w_avg_mean"], rel=1e-6)  # usable as a monitor


def test_one_process_fit_writes_the_diagnostics_once_at_fit_end(one_process: tuple[Any, Any, Path]) -> None:
    cb, _, out = one_process
    diag = out / "diag"
    assert sorted(p.name for p in diag.iterdir()) == sorted(FILES)
    assert sorted(p.name for p in cb.written) == sorted(FILES)
    data = json.loads((diag / "fusion.json").read_text(encoding="utf-8"))
    assert data["steps"] == 2 and data["history"] == [s.as_dict() for s in cb.monitor.history]  # after epoch 2
    assert data["summary"][0]["samples"] == 64
    with (diag / "fusion.csv").open(encoding="utf-8") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [0, 1]
    for name in FILES[2:]:
        assert (diag / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ddp_two_processes_log_what_one_process_logs(one_process: tuple[Any, Any, Path], tmp_path: Path) -> None:
    cb_one, trainer_one, _ = one_process
    (tmp_path / "fit.py").write_text(SCRIPT, encoding="utf-8")
    out = tmp_path / "run"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "fit.py"), str(out), "2"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads((out / f"rank{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]
    two = _logged(reports[0]["log_dir"])
    one = _logged(trainer_one.logger.log_dir)
    assert len(one) == len(two) == 2
    for row_one, row_two in zip(one, two, strict=True):
        keys = sorted(k for k in row_one if k.startswith("fusion/"))
        assert keys and keys == sorted(k for k in row_two if k.startswith("fusion/"))
        for k in keys:
            assert row_two[k] == pytest.approx(row_one[k], rel=1e-5, abs=1e-6), k
    # the files: written once, by rank 0, with the counts summed over both ranks
    assert sorted(Path(p).name for p in reports[0]["written"]) == sorted(FILES) and reports[1]["written"] == []
    data = json.loads((out / "diag" / "fusion.json").read_text(encoding="utf-8"))
    expected = [s.as_dict() for s in cb_one.monitor.history]
    assert [h["samples"] for h in data["history"]] == [h["samples"] for h in expected] == [32, 32]
    for got, want in zip(data["history"], expected, strict=True):
        assert got["hist"] == want["hist"]
        assert got["class_w_avg"] == pytest.approx(want["class_w_avg"], rel=1e-5)


class _Plain(nn.Module):
    def __init__(self, attention: bool) -> None:
        super().__init__()
        self.block = ChannelAttentionFusionTLayer(4) if attention else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.block(x)
        return out


def test_labels_from_batch_feeds_the_monitor_during_training_steps_only() -> None:
    cb = FusionMonitorCallback(labels_from_batch=lambda batch: batch["cls"], bins=4)
    model = _Plain(True)
    cb.on_fit_start(None, model)  # type: ignore[arg-type]  # the hooks read no trainer state
    assert cb.monitor is not None and cb.monitor.bins == 4
    batch = {"x": torch.randn(5, 4, 6), "cls": torch.tensor([0, 0, 3, 3, 3])}
    cb.on_train_batch_start(None, model, batch, 0)  # type: ignore[arg-type]
    model(batch["x"])
    cb.on_train_batch_end(None, model, None, batch, 0)  # type: ignore[arg-type]
    model(batch["x"])  # outside a training step: not counted
    (s,) = cb.monitor.step()
    assert s.samples == 5 and s.class_w_avg.keys() == {0, 3}


def test_a_sum_fusion_block_logs_what_it_has_and_a_failed_fit_leaves_no_hook() -> None:
    cb = FusionMonitorCallback(prefix="caft")
    model = nn.Sequential(ChannelAttentionFusionTLayer(4, fusion="sum"), ChannelAttentionFusionTLayer(4))
    cb.on_fit_start(None, model)  # type: ignore[arg-type]
    assert cb.monitor is not None
    cb.on_train_batch_start(None, model, (torch.randn(2, 4, 3), torch.tensor([0, 1])), 0)  # type: ignore[arg-type]
    model(torch.randn(2, 4, 3))
    cb.on_exception(None, model, RuntimeError("boom"))  # type: ignore[arg-type]
    assert not cb.monitor.attached and all(not block._inspectors for block in cb.monitor.blocks.values())
    names = set(cb.metrics(cb.monitor.step()))
    assert names == {"caft/0/T", "caft/0/saturation"} | {f"caft/1/{name}" for name in METRICS}  # no router in 0


def test_default_labels_reads_tuples_and_dicts() -> None:
    y = torch.tensor([0, 2])
    assert default_labels((torch.zeros(2, 3), y)) is y
    assert default_labels({"x": torch.zeros(2), "target": y}) is y
    assert default_labels(torch.zeros(2, 3)) is None
    assert default_labels((torch.zeros(2, 3), torch.zeros(2))) is None  # float: not labels


def test_bad_arguments_are_named() -> None:
    with pytest.raises(TypeError, match="labels_from_batch"):
        FusionMonitorCallback(labels_from_batch=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prefix"):
        FusionMonitorCallback(prefix="")
    with pytest.raises(TypeError, match="out_dir"):
        FusionMonitorCallback(out_dir=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bins"):
        FusionMonitorCallback(bins=0)
    with pytest.raises(TypeError, match="bogus"):
        FusionMonitorCallback(bogus=1)
    with pytest.raises(TypeError, match="attach"):
        FusionMonitorCallback(attach=True)


def test_bad_modules_and_labels_are_named() -> None:
    with pytest.raises(ValueError, match="_Plain has no ChannelAttentionFusionT block"):
        FusionMonitorCallback().on_fit_start(None, _Plain(False))  # type: ignore[arg-type]
    cb = FusionMonitorCallback(labels_from_batch=lambda batch: batch[1].float())
    cb.on_fit_start(None, _Plain(True))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="labels_from_batch must return a 1-D integer tensor"):
        cb.on_train_batch_start(None, None, (torch.zeros(2, 4, 3), torch.ones(2)), 0)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="no fit has started"):
        FusionMonitorCallback().write("unused", True)


def test_import_cafusion_does_not_import_lightning() -> None:
    code = (
        "import sys, cafusion, cafusion.integrations\n"
        "assert not any(m.split('.')[0] in ('lightning', 'pytorch_lightning') for m in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_save_plots_uses_the_summary_it_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The callback takes the summary on every rank and hands it over: save_plots must not take another."""
    from cafusion import FusionMonitor

    model = _Plain(True)
    with FusionMonitor(model) as mon:
        model(torch.randn(3, 4, 5))
        mon.step()
    summary = mon.summary()

    def no_collective() -> None:
        raise AssertionError("save_plots took a second summary")

    monkeypatch.setattr(mon, "summary", no_collective)
    paths = mon.save_plots(tmp_path, stats=summary, x_label="epoch")
    assert [p.name for p in paths] == list(FILES[2:]) and all(p.stat().st_size > 0 for p in paths)
    with pytest.raises(TypeError, match="x_label must be a string"):
        mon.save_plots(tmp_path, stats=summary, x_label=1)  # type: ignore[arg-type]
