"""``cafusion bench``: flags, parts, tables, JSON keys and ratios, the THP run; tiny runs, no timing assertions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

import cafusion
from cafusion import list_attentions
from cafusion.bench import block, main, measure, networks, padded, report, sweep
from cafusion.cli.main import main as cli_main

TINY = ["--repeats", "1", "--dtypes", "fp32", "--layouts", "contiguous", "--no-compile"]


def resolved(*argv: str) -> tuple[list[str], Any]:
    parser = main.build_parser()
    args = parser.parse_args(list(argv))
    return main.resolve(args, parser), args


def read(folder: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / f"{name}.json").read_text())
    return data


def test_defaults_run_every_part_over_the_issue_shapes_in_a_default_process() -> None:
    parts, args = resolved()
    assert parts == ["block", "sweep", "padded", "autocast", "networks"] and args.thp is False
    assert args.dtype_list == [torch.float32, torch.bfloat16] and args.threads == 2
    ones = [s for s in args.sweep_shapes if len(s) == 3]
    assert len(ones) == 3 * 4 * 4 and (100, 25, 200) in ones and (256, 256, 1000) in ones
    assert [s for s in args.sweep_shapes if len(s) == 4] == block.SHAPES
    assert [s for s in args.sweep_shapes if len(s) == 5] == [(2, 32, 16, 32, 32)]
    assert args.padded_shapes == ones  # the padded part times the 1-D sweep's grid
    assert (32, 64, 500) in args.autocast_shapes and (16, 256, 56, 56) in args.autocast_shapes
    assert args.networks == ["cnn1d", "resnet18", "resnet1d", "fcn-5x361", "fcn-16x150", "resnet1d-20x427"]
    assert set(args.attentions) == {"none", "se", "eca", "cbam", "caft", "caft_sum"} <= set(cafusion.list_attentions())


def test_selecting_parts_runs_only_those() -> None:
    parts, args = resolved("--sweep", "1d,3d", "--quick")
    assert parts == ["sweep"] and {len(s) for s in args.sweep_shapes} == {3, 5}
    assert args.repeats == 5 and args.dtype_list == [torch.float32] and args.compile is False
    parts, args = resolved("--networks", "--autocast")
    assert parts == ["autocast", "networks"] and args.networks == list(networks.NETWORKS)
    parts, args = resolved("--sweep", "--shapes", "2x8x16,1x8x4x4")
    assert args.sweep_shapes == [(2, 8, 16), (1, 8, 4, 4)]
    parts, args = resolved("--padded", "--quick")
    assert parts == ["padded"] and args.padded_shapes == padded.QUICK_SHAPES and 1 < len(args.padded_shapes) < 4
    parts, args = resolved("--padded", "--dtypes", "bf16", "--shapes", "2x8x16,1x8x4x4")
    assert parts == ["padded"] and args.padded_shapes == [(2, 8, 16)] and args.dtype_list == [torch.bfloat16]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--sweep", "4d"], "--sweep"),
        (["--networks", "vgg"], "--networks"),
        (["--attentions", "nope"], "--attentions"),
        (["--threads", "0"], "--threads"),
        (["--shapes", "2x8"], "--shapes"),
        (["--block", "--shapes", "2x8x16"], "4-D"),
        (["--sweep", "3d", "--shapes", "2x8x16"], "--shapes"),
        (["--padded", "--shapes", "1x8x4x4"], "1-D"),
        (["--clock", "thread"], "--threads 1"),
        (["--device", "tpu!"], "--device"),
        (["--bogus"], "unrecognized"),
    ],
)
def test_bad_flags_give_one_line_errors(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["bench", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("cafusion bench: error:") and needle in err[0]


def test_tiny_block_sweep_and_autocast_write_tables_json_and_targets(
    tmp_path: Path, reference: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = str(Path(str(reference.__file__)).parent)
    shapes = "2x8x16,2x8x4x4,1x8x2x4x4"
    argv = [
        "--block",
        "--sweep",
        "--autocast",
        "--shapes",
        shapes,
        *TINY,
        "--reference",
        folder,
        "--out",
        str(tmp_path),
    ]
    assert main.main(argv) == 0
    out = capsys.readouterr().out
    assert "[default process]" in out and "targets:" in out and "ref/auto" in out and "se/auto" in out

    sweep_rows = read(tmp_path, "sweep")["rows"]
    assert [(r["shape"], r["mode"]) for r in sweep_rows] == [
        (s, m) for s in ([2, 8, 16], [2, 8, 4, 4], [1, 8, 2, 4, 4]) for m in ("forward", "step")
    ]
    for row in sweep_rows:
        expected = {"auto", "reference", "se"} | ({"ref_file", "timm"} if row["rank"] == 2 else set())
        assert set(row["ms"]) == expected
        for name in expected - {"auto"}:
            assert row["ratios"][f"{name}_over_auto"] == pytest.approx(row["ms"][name] / row["ms"]["auto"])
        assert row["ratios"]["auto_over_floor"] == pytest.approx(row["ms"]["auto"] / row["floor_ms"])
    sweep_targets = read(tmp_path, "sweep")["targets"]
    kinds = {t["target"] for t in sweep_targets}
    assert {sweep.VS_REFERENCE, sweep.VS_SE, sweep.VS_TIMM} == kinds  # no 16x256x56x56 row here
    assert len(sweep_targets) == 6 * 2 + 2  # auto vs composite and SE per row, timm on the two 2-D rows
    for t in sweep_targets:
        assert t["pass"] == (t["value"] >= t["limit"]) and t["op"] == ">="
        assert t["limit"] == (0.909 if t["target"] == sweep.VS_SE else 1.0)  # SE: auto <= 1.1x its time

    (case,) = read(tmp_path, "block")["rows"]
    assert case["shape"] == [2, 8, 4, 4] and set(case["ms"]["forward"]) == {"reference", "timm", "ours"}
    assert set(case["peak_train_step_mib"]) == {"reference", "timm", "ours"}
    for mode in block.MODES:
        assert case["floor_ms"][mode] == pytest.approx(block.FLOOR_COPIES[mode] * case["copy_ms"])
    (row,) = [r for r in read(tmp_path, "autocast")["rows"] if r["shape"] == [2, 8, 16]]
    assert row["speedup"] == pytest.approx(row["ms"]["reference"] / row["ms"]["auto"])

    everything = read(tmp_path, "targets")
    assert len(everything["targets"]) == sum(len(read(tmp_path, p)["targets"]) for p in ("block", "sweep", "autocast"))
    assert everything["meta"]["process"] == "default process" and everything["meta"]["thp_mem_alloc"] is False


def test_padded_part_times_lengths_against_none_and_the_composite_and_judges_the_10_percent_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--padded", "--shapes", "3x8x16,2x8x5", "--repeats", "1", "--dtypes", "fp32,bf16", "--out", str(tmp_path)]
    assert main.main(argv) == 0
    out = capsys.readouterr().out
    assert "masked/unmasked" in out and "ref/masked" in out and padded.KIND in out

    data = read(tmp_path, "padded")
    rows = data["rows"]
    assert [(r["shape"], r["dtype"], r["mode"]) for r in rows] == [
        (s, d, m) for s in ([3, 8, 16], [2, 8, 5]) for d in ("fp32", "bf16") for m in ("forward", "step")
    ]
    for row in rows:
        ms, ratios = row["ms"], row["ratios"]
        assert set(ms) == {"unmasked", "masked", "reference"}
        assert ratios["masked_over_unmasked"] == pytest.approx(ms["masked"] / ms["unmasked"])
        assert ratios["reference_over_masked"] == pytest.approx(ms["reference"] / ms["masked"])
        length = row["shape"][2]
        assert row["lengths"]["max"] == length and length // 2 <= row["lengths"]["min"] <= length
    targets = data["targets"]
    assert len(targets) == len(rows) and {t["target"] for t in targets} == {padded.KIND}
    for t, row in zip(targets, rows, strict=True):
        assert t["case"] == sweep.row_name(row) and t["op"] == "<=" and t["limit"] == 1.10
        assert t["value"] == pytest.approx(row["ratios"]["masked_over_unmasked"], abs=1e-3)
        assert t["pass"] == (row["ratios"]["masked_over_unmasked"] <= padded.LIMIT)
    assert read(tmp_path, "targets")["targets"] == targets


def test_padded_lengths_are_seeded_within_half_to_full_with_one_full_sample() -> None:
    lengths = padded.draw_lengths(64, 40, torch.device("cpu"))
    assert lengths.dtype == torch.int64 and lengths.shape == (64,) and lengths[0] == 40
    assert int(lengths.min()) >= 20 and int(lengths.max()) == 40 and len(set(lengths.tolist())) > 1
    assert torch.equal(lengths, padded.draw_lengths(64, 40, torch.device("cpu")))
    assert padded.draw_lengths(4, 1, torch.device("cpu")).tolist() == [1, 1, 1, 1]


def test_networks_table_has_ratios_to_none_and_se_and_the_cnn1d_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--networks", "cnn1d", "--attentions", "none,se,caft", "--repeats", "1", "--out", str(tmp_path)]
    assert main.main(argv) == 0
    assert "caft step <= 1.3x none" in capsys.readouterr().out
    data = read(tmp_path, "networks")
    rows = {r["attention"]: r for r in data["rows"]}
    assert set(rows) == {"none", "se", "caft"} and rows["none"]["over_none"] == 1.0
    assert rows["caft"]["over_se"] == pytest.approx(rows["caft"]["ms"] / rows["se"]["ms"])
    over_none, over_se = data["targets"]
    assert over_none["case"] == "cnn1d" and over_none["value"] == pytest.approx(rows["caft"]["over_none"], abs=1e-3)
    assert over_se["target"] == "caft step <= 1.0x se"
    assert over_se["value"] == pytest.approx(rows["caft"]["over_se"], abs=1e-3)


def test_networks_under_amp_are_labelled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--networks", "cnn1d", "--attentions", "none,caft", "--amp", "--repeats", "1", "--out", str(tmp_path)]
    assert main.main(argv) == 0
    assert "bf16 autocast on cpu" in capsys.readouterr().out
    assert {r["amp"] for r in read(tmp_path, "networks")["rows"]} == {"bf16"}


def test_networks_put_the_block_where_the_issue_says() -> None:
    seen: list[tuple[int, ...]] = []
    model = networks.Mnist1dCNN("caft")
    for m in model.modules():
        if isinstance(m, cafusion.ChannelAttentionFusionTLayer):
            m.register_forward_hook(lambda _m, args, _out: seen.append(tuple(args[0].shape)))
    assert model(torch.randn(100, 1, 40)).shape == (100, 10)
    assert seen == [(100, 25, 10), (100, 25, 5)]  # after conv2 and conv3 (stride 2, padding 1)
    for name in ("resnet18", "resnet1d", "fcn-5x361", "fcn-16x150", "resnet1d-20x427"):
        net = networks.NETWORKS[name].build("caft")
        assert sum(isinstance(m, cafusion.ChannelAttentionFusionTLayer) for m in net.modules()) >= 3
        assert net(torch.randn(2, *networks.NETWORKS[name].input_shape[1:])).shape == (2, networks.CLASSES)


def test_a_network_whose_package_is_missing_is_skipped_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(networks, "missing_package", lambda name: "timm")
    assert main.main(["--networks", "resnet18", "--out", str(tmp_path)]) == 0
    assert "resnet18 skipped: it needs timm" in capsys.readouterr().out
    assert read(tmp_path, "networks")["rows"] == []


@pytest.fixture
def child_runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], dict[str, str]]]:
    """The (command, environment) of each labelled second run main() starts, instead of starting it."""
    calls: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr(subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 0)
    return calls


def test_thp_run_is_opt_in_and_beside_the_default_one(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    child_runs: list[tuple[list[str], dict[str, str]]],
) -> None:
    calls = child_runs
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    argv = ["--autocast", "--shapes", "2x8x16", "--repeats", "1", "--out", str(tmp_path)]
    assert main.main(argv) == 0
    assert calls == []  # no re-exec by default
    assert main.main([*argv, "--thp"]) == 0
    ((cmd, env),) = calls
    assert env["THP_MEM_ALLOC_ENABLE"] == "1" and "--thp" not in cmd
    assert "--autocast" in cmd and cmd[-2:] == ["--out", str(tmp_path / "thp")]
    assert "[default process]" in capsys.readouterr().out  # the default run still happened first
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")
    assert main.main([*argv, "--thp"]) == 0
    assert len(calls) == 1 and "[THP_MEM_ALLOC_ENABLE=1]" in capsys.readouterr().out
    assert read(tmp_path, "autocast")["meta"]["thp_mem_alloc"] is True


def test_native_off_run_is_opt_in_labelled_and_judged_against_the_composite(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    child_runs: list[tuple[list[str], dict[str, str]]],
) -> None:
    monkeypatch.delenv("CAFUSION_NATIVE", raising=False)
    argv = ["--sweep", "1d", "--shapes", "2x8x16", "--dtypes", "fp32", "--repeats", "1", "--out", str(tmp_path)]
    assert main.main([*argv, "--native-off"]) == 0
    ((cmd, env),) = child_runs
    assert env["CAFUSION_NATIVE"] == "0" and "--native-off" not in cmd
    assert cmd[-2:] == ["--out", str(tmp_path / "native-off")]
    assert read(tmp_path, "sweep")["meta"]["native_kernels"] is True
    # in the child (no C++ kernels, so auto is the composite) the sweep asks for auto within 5% of it
    rows = read(tmp_path, "sweep")["rows"]
    kinds = {t["target"] for t in sweep.check_targets(rows, native=False)}
    assert sweep.VS_REFERENCE_NO_NATIVE in kinds and sweep.VS_REFERENCE not in kinds
    monkeypatch.setenv("CAFUSION_NATIVE", "0")
    assert main.main([*argv, "--native-off"]) == 0
    assert len(child_runs) == 1 and "[CAFUSION_NATIVE=0]" in capsys.readouterr().out
    assert read(tmp_path, "sweep")["meta"]["native_kernels"] is False


def test_interleaved_timing_alternates_the_contenders() -> None:
    order: list[str] = []
    fns = {name: (lambda name=name: order.append(name)) for name in "abc"}
    ms = measure.interleaved_ms(fns, torch.device("cpu"), repeats=3, warmup=1)
    assert set(ms) == {"a", "b", "c"} and all(v >= 0 for v in ms.values())
    runs = [name for i, name in enumerate(order) if i == 0 or order[i - 1] != name]  # repeated calls collapsed
    assert runs == list("abc" + "abc" + "bca" + "cab")  # warm-up, then rounds in rotated order


def test_the_option_names_match_the_parts() -> None:
    """``bench/names.py`` spells the options without torch; the parts must build exactly those."""
    from cafusion.bench import names

    assert tuple(networks.NETWORKS) == names.NETWORKS
    assert set(names.ATTENTIONS) <= set(list_attentions())
    assert set(names.DTYPES) == set(report.DTYPE_NAMES.values())


def test_without_the_reference_file_a_cpu_run_prints_no_profiler_chatter_and_no_nan(tmp_path: Path) -> None:
    """A CPU-only user without the reference file sees one note, '-' cells, and nothing from the profiler."""
    argv = ["-m", "cafusion", "bench", "--block", "--shapes", "2x8x4x4", *TINY, "--reference", str(tmp_path)]
    cmd = [sys.executable, *argv, "--out", str(tmp_path / "out")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("reference not available") == 1
    table = result.stdout.split("block (image maps)")[1]
    assert "nan" not in table and "-/" in table  # the peak-memory cell of the missing reference
    for chatter in ("USDT:", "gpuGetDeviceCount", "profiler_start", "CPUAllocator"):
        assert chatter not in result.stderr + result.stdout, chatter
