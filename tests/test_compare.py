"""cafusion compare: pairing, shards + merge, resume, determinism, --jobs, and one-line errors (tiny budgets)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from cafusion.cli.main import main
from cafusion.compare.config import CompareConfig, Variant, parse_variant
from cafusion.compare.plan import RunSpec, parse_shard, plan, shard
from cafusion.compare.runner import build_paired_model, epoch_order
from cafusion.compare.sources import load_split

pytest.importorskip("aeon", reason="ucr: data needs the timeseries extra (aeon); the dev environment has it")
pytest.importorskip("scipy")

TINY = ["--data", "ucr:UnitTest", "--model", "fcn", "--attention", "none,caft", "--seeds", "2", "--epochs", "2"]
TINY += ["--threads", "1", "--no-figures", "--no-progress"]


def _compare(out: Path, *extra: str) -> int:
    return main(["compare", *TINY, "--out", str(out), *extra])


def _strip(obj: Any) -> Any:
    """The report without what legitimately differs between two identical comparisons: timings and paths."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if "seconds" not in k and k != "out"}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _report(out: Path) -> Any:
    return _strip(json.loads((out / "report.json").read_text()))


def _runs(out: Path) -> dict[str, Any]:
    return {p.name: _strip(json.loads(p.read_text())) for p in sorted((out / "runs").glob("*.json"))}


def test_two_shards_merged_equal_one_unsharded_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _compare(tmp_path / "one") == 0
    assert _compare(tmp_path / "split", "--shard", "1/2") == 0
    assert "4 runs" not in capsys.readouterr().out.splitlines()[-2]  # a shard runs only its part
    assert len(list((tmp_path / "split" / "runs").glob("*.json"))) == 2
    assert _compare(tmp_path / "split", "--shard", "2/2") == 0
    assert main(["compare", "--report-only", "--no-figures", "--out", str(tmp_path / "split")]) == 0
    assert _runs(tmp_path / "split") == _runs(tmp_path / "one")
    assert _report(tmp_path / "split") == _report(tmp_path / "one")
    report = json.loads((tmp_path / "one" / "report.json").read_text())
    (table,) = report["tables"]
    assert [v["variant"] for v in table["variants"]] == ["none", "caft"]
    caft = table["variants"][1]
    assert caft["versus"]["none"]["test"] == "paired t-test" and len(caft["versus"]["none"]["diff"]) == 2
    assert set(caft["router"]) == {"blocks.0.attention", "blocks.1.attention", "blocks.2.attention"}
    md = (tmp_path / "one" / "report.md").read_text()
    assert "## UnitTest · fcn" in md and "| caft | 2 |" in md
    assert "| 95% CI | vs none | params |" in md  # only the baselines that ran: no empty se/cbam columns
    assert "vs se" not in md and "vs cbam" not in md and "caft_sum vs cbam" not in md
    assert "consistency" not in report["notes"]
    assert (tmp_path / "one" / "runs.csv").read_text().count("\n") == 5


def test_resume_skips_finished_runs_and_reruns_missing_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c"
    assert _compare(out) == 0
    before = _runs(out)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    lost = out / "runs" / "UnitTest__fcn__caft__seed1.json"
    lost.unlink()  # as if the machine died during that run
    capsys.readouterr()
    assert _compare(out, "--resume") == 0
    assert "4 runs: 3 already finished, 1 to run" in capsys.readouterr().out
    for p in (out / "runs").glob("*.json"):
        if p.name != lost.name:
            assert p.stat().st_mtime_ns == stamps[p.name]
    assert _runs(out) == before  # deterministic: the rerun reproduces the lost result exactly


def test_other_settings_in_the_same_out_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c"
    assert main(["compare", *TINY, "--out", str(out), "--attention", "none", "--seeds", "1"]) == 0
    capsys.readouterr()
    assert main(["compare", *TINY, "--out", str(out), "--attention", "none", "--seeds", "1", "--lr", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "already holds run UnitTest__fcn__none__seed0 with other settings: lr 0.001 (now 0.01)" in err
    assert len(err.strip().splitlines()) == 1


def test_norm_is_recorded_as_applied_and_a_mismatch_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c"
    argv = [*TINY, "--attention", "none", "--seeds", "1", "--out", str(out)]
    assert main(["compare", *argv]) == 0  # --norm auto on a univariate set: z-normalised per series
    path = out / "runs" / "UnitTest__fcn__none__seed0.json"
    stored = json.loads(path.read_text())
    assert stored["settings"]["norm"] == "series" and "z-normalised per series" in stored["data"]
    assert json.loads((out / "report.json").read_text())["tables"][0]["norm"] == ["series"]
    capsys.readouterr()
    assert main(["compare", *argv, "--norm", "series"]) == 0  # the same data: resumed, nothing rerun
    assert "1 already finished, 0 to run" in capsys.readouterr().out
    assert main(["compare", *argv, "--no-znorm"]) == 2
    err = capsys.readouterr().err
    assert "already holds run UnitTest__fcn__none__seed0 with other settings: norm 'series' (now 'none')" in err
    assert len(err.strip().splitlines()) == 1
    # a result from before --norm: no "norm", and "znorm": false only when --no-znorm was given
    del stored["settings"]["norm"]
    path.write_text(json.dumps(stored))
    assert main(["compare", *argv]) == 0
    assert "1 already finished, 0 to run" in capsys.readouterr().out
    stored["settings"]["znorm"] = False
    path.write_text(json.dumps(stored))
    assert main(["compare", *argv]) == 2
    assert "norm 'none' (now 'series')" in capsys.readouterr().err
    assert main(["compare", *argv, "--norm", "none"]) == 0
    assert "1 already finished, 0 to run" in capsys.readouterr().out


def test_norm_setting_per_source() -> None:
    """auto: univariate per series, multivariate the archive's values; the other sources have no norm."""
    data = ["ucr:GunPoint", "ucr:BasicMotions", "ucr:JapaneseVowels", "digits"]
    for norm, expected in [("auto", ["series", "none", "none", None]), ("series", ["series"] * 3 + [None])]:
        config = CompareConfig(data=data, variants=[Variant("none", "none")], seeds=1, norm=norm).validate()
        assert [r.settings().get("norm") for r in plan(config)] == expected


def test_jobs_run_in_parallel_processes_with_the_same_results(tmp_path: Path) -> None:
    assert main(["compare", *TINY, "--attention", "none,se", "--seeds", "1", "--out", str(tmp_path / "a")]) == 0
    argv = ["compare", *TINY, "--attention", "none,se", "--seeds", "1", "--jobs", "2", "--out", str(tmp_path / "b")]
    assert main(argv) == 0
    assert _runs(tmp_path / "a") == _runs(tmp_path / "b")


def _spec(variant: str, seed: int = 3) -> RunSpec:
    config = CompareConfig(data=["ucr:UnitTest"], model="resnet", epochs=1).validate()
    return RunSpec("ucr:UnitTest", parse_variant(variant), seed, config)


def test_paired_design_shares_backbone_init_and_batch_order() -> None:
    split = load_split("ucr:UnitTest", 3, 0.2)
    base, copied = build_paired_model(_spec("none"), split)
    base_state = base.state_dict()
    assert copied == len(base_state)
    for variant in ("se", "caft", "cbam"):
        model, shared = build_paired_model(_spec(variant), split)
        state = model.state_dict()
        assert shared == len(base_state)
        for key, value in base_state.items():
            torch.testing.assert_close(state[key], value, rtol=0, atol=0)
        assert any(".attention." in k for k in state)
    other_seed, _ = build_paired_model(_spec("none", seed=4), split)
    assert not torch.equal(other_seed.state_dict()["blocks.0.conv1.weight"], base_state["blocks.0.conv1.weight"])
    assert torch.equal(epoch_order(3, 5, 20), epoch_order(3, 5, 20))
    assert not torch.equal(epoch_order(3, 5, 20), epoch_order(3, 6, 20))


def test_plan_and_shards_cover_every_run_once() -> None:
    config = CompareConfig(data=["ucr:UnitTest", "digits"], seeds=3).validate()
    runs = plan(config)
    assert len(runs) == 2 * 3 * 6
    ids = [r.run_id for k in (1, 2, 3) for r in shard(runs, k, 3)]
    assert sorted(ids) == sorted(r.run_id for r in runs) and len(set(ids)) == len(ids)
    assert parse_shard("2/4") == (2, 4)


def test_variant_syntax() -> None:
    v = parse_variant("caft_T05=caft:temperature=0.5,reduction=8", {"reduction": 4})
    assert v == Variant("caft_T05", "caft", {"reduction": 8, "temperature": 0.5})
    assert parse_variant("none", {"reduction": 4}).options == {}  # 'none' takes no options


def test_file_source_gets_a_seeded_split_per_seed(tmp_path: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.standard_normal((30, 1, 12)).astype("float32"), y=np.arange(30) % 3)
    a, b = load_split(str(path), 0, 0.2), load_split(str(path), 1, 0.2)
    assert len(a.test) == 6 and not a.published_split
    assert not torch.equal(a.test.x, b.test.x)
    argv = ["compare", "--data", str(path), "--model", "small_cnn", "--widths", "4,8", "--attention", "none,eca"]
    assert main([*argv, "--seeds", "2", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "o")]) == 0
    assert len(list((tmp_path / "o" / "runs").glob("d__small_cnn__*.json"))) == 4


def test_figures_are_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "c"
    assert main(["compare", *TINY, "--seeds", "1", "--out", str(out)]) == 0
    assert main(["compare", "--report-only", "--baselines", "caft", "--out", str(out)]) == 0
    assert "| vs caft | params |" in (out / "report.md").read_text()
    png = out / "UnitTest__fcn.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![UnitTest__fcn.png](UnitTest__fcn.png)" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "ucr:Nope"], "'ucr:Nope' is not bundled with aeon, and could not be downloaded"),
        (["--data", "ucr:UnitTest", "--model", "lstm"], "--model must be 'small_cnn'"),
        (["--data", "ucr:UnitTest", "--attention", "none,sse"], "variant 'sse': unknown attention 'sse'"),
        (["--data", "ucr:UnitTest", "--attention", "none,none"], "variant labels must be unique"),
        (["--data", "ucr:UnitTest", "--shard", "3/2"], "--shard must be K/N with 1 <= K <= N"),
        (["--data", "ucr:UnitTest", "--jobs", "0"], "--jobs must be a positive int"),
        (["--data", "ucr:UnitTest", "--seeds", "0"], "--seeds must be a positive int"),
        (["--data", "ucr:UnitTest", "--variant", "x=caft:nope=1"], "variant 'x':"),
        (["--data", "ucr:UnitTest", "--variant", "bad label=caft"], "--variant must be NAME or LABEL=NAME"),
        (["--data", "ucr:UnitTest", "--factor", "2"], "--factor must be in (0, 1)"),
        (["--data", "ucr:UnitTest", "--norm", "zscore"], "--norm must be one of auto, series, none, got 'zscore'"),
        (["--data", "ucr:UnitTest", "--norm", "series", "--no-znorm"], "--no-znorm means --norm none; it contradicts"),
        (["--data", "missing.npz"], "data path 'missing.npz' does not exist"),
        (["--data", "ucr:GunPoint", "--model", "resnet", "--data", "digits"], "takes 1D signals"),
        ([], "--data must name at least one source"),
        (["--data", "ucr:JapaneseVowels", "--model", "timm:resnet10t", "--lengths"], "takes images"),
    ],
)
def test_bad_inputs_fail_with_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAFUSION_UCR_CACHE", str(tmp_path / "ucr-cache"))  # an unknown name tries a download
    assert main(["compare", *argv, "--epochs", "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.startswith("cafusion: error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "runs").exists()  # refused before any run


def test_report_only_on_an_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--report-only", "--out", str(tmp_path)]) == 2
    assert "holds no finished runs" in capsys.readouterr().err


def test_router_norm_probe_is_the_block_plus_one_layer_norm() -> None:
    from cafusion.compare.probes import RouterNormProbe
    from cafusion.diagnostics import FusionMonitor
    from cafusion.layers.caft_layer import ChannelAttentionFusionTLayer

    block = ChannelAttentionFusionTLayer(16, impl="reference").eval()
    probe = RouterNormProbe(16, router_norm=False).eval()
    probe.load_state_dict(block.state_dict())  # the same keys: a caft checkpoint loads
    x = torch.randn(3, 16, 9) * 3
    torch.testing.assert_close(probe(x), block(x), atol=1e-6, rtol=1e-5)
    probe.router_norm = True
    assert not torch.allclose(probe(x), block(x))
    with FusionMonitor(probe) as monitor:  # the diagnostics see its router
        probe(x)
    (stats,) = monitor.step()
    assert stats.samples == 3 and stats.w_avg_mean is not None


def test_lengths_option_masks_the_padding(tmp_path: Path) -> None:
    """--lengths gives fcn the true lengths of JapaneseVowels' padded series; off, the padding is input."""
    argv = ["compare", "--data", "ucr:JapaneseVowels", "--attention", "none", "--seeds", "1", "--epochs", "1"]
    argv += ["--batch-size", "64", "--threads", "1", "--no-figures", "--no-progress"]
    assert main([*argv, "--lengths", "--out", str(tmp_path / "on")]) == 0
    assert main([*argv, "--out", str(tmp_path / "off")]) == 0
    (on,) = (json.loads(p.read_text()) for p in (tmp_path / "on" / "runs").glob("*.json"))
    (off,) = (json.loads(p.read_text()) for p in (tmp_path / "off" / "runs").glob("*.json"))
    assert on["settings"]["lengths"] is True and "lengths" not in off["settings"]
    assert "masks the padding" in on["data"] and "zero-padded" in off["data"]
    assert on["history"][0]["train_loss"] != off["history"][0]["train_loss"]


def test_the_caft_sum_vs_cbam_note_appears_only_when_both_ran() -> None:
    from cafusion.compare import report

    def table(*variants: str) -> dict[str, Any]:
        return {"variants": [{"variant": v} for v in variants]}

    assert report._ran_together([table("none", "cbam"), table("caft_sum", "caft")], "caft_sum", "cbam") is False
    assert report._ran_together([table("none"), table("cbam", "caft_sum")], "caft_sum", "cbam") is True
