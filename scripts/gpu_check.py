"""Check and time the Triton fast path on a CUDA GPU: one prepared script for a short device lease.

1. Correctness: each Triton primitive against naive torch (shapes, dtypes, layouts, ties, NaN), and
   the whole block, fast path against the reference path (outputs and every gradient).
2. Bandwidth: for each benchmark shape, fp32/bf16 and contiguous/channels_last, the time of a copy
   of x (the yardstick), and forward (no grad) and forward+backward of ours, of the reference module
   and of torch.compile of the reference; ratios to the floor (forward 1.5 copies, forward+backward
   3.5 copies) and effective GB/s (the minimal traffic divided by the time).
3. The small (B, C) path alone (MLP, router, softmax, temperature, gate and their backward): the fused
   Triton kernels (``triton_small``) checked against ``small.py`` (float32, and float64 as the truth),
   and both timed forward and backward as CUDA-graph replays at the benchmark widths.

Usage (repo root): ``PYTHONPATH=src python scripts/gpu_check.py --out DIR``. The reference module is
looked up at ``--reference``, ``.gpu/``, ``shared/seed/`` and ``../shared/seed/``. Without a GPU the
script says so and exits 2; ``TRITON_INTERPRET=1 ... --dry-run`` runs every code path on the CPU
(Triton's interpreter, tiny shapes, wall-clock timing) to check the script itself.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

SHAPES = [(16, 256, 56, 56), (16, 512, 28, 28), (16, 1024, 14, 14), (16, 2048, 7, 7), (1, 64, 7, 7), (1, 256, 14, 14)]
DRY_SHAPES = [(2, 16, 5, 5)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LAYOUTS = ("contiguous", "channels_last")
REFERENCE_NAME = "reference_channel_attention_fusion_t.py"


# ------------------------------------------------------------------------------------------- setup


def find_reference(explicit: str | None) -> Path | None:
    candidates = [Path(explicit)] if explicit else []
    candidates += [
        Path(".gpu") / REFERENCE_NAME,
        Path("shared/seed") / REFERENCE_NAME,
        Path("../shared/seed") / REFERENCE_NAME,
    ]
    return next((p for p in candidates if p.is_file()), None)


def load_reference(path: Path) -> type[nn.Module]:
    spec = importlib.util.spec_from_file_location("caft_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cls: type[nn.Module] = module.ChannelAttentionFusionT
    return cls


def layout(x: Tensor, name: str) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if name == "channels_last" else x.contiguous()


# ------------------------------------------------------------------------------------- correctness


class Checks:
    """Collects pass/fail per named check instead of stopping at the first failure."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []

    def run(self, name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
            self.results.append({"check": name, "ok": True})
        except Exception as exc:  # report every failure, keep checking the rest
            self.results.append({"check": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]})
            print(f"  FAIL {name}: {exc}", flush=True)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results if not r["ok"]]


def _views(x: Tensor) -> Iterator[tuple[str, Tensor]]:
    """(B, C, N) values as contiguous, channels_last-like and fully strided views."""
    b, c, n = x.shape
    yield "contiguous", x.contiguous()
    yield "channels_last", x.transpose(1, 2).contiguous().transpose(1, 2)
    wide = torch.zeros(b, n, 2 * c, dtype=x.dtype, device=x.device)
    wide[:, :, ::2] = x.transpose(1, 2)
    yield "strided", wide.transpose(1, 2)[:, ::2, :]


def check_primitives(checks: Checks, device: torch.device, dry: bool) -> None:
    from cafusion.kernels.backends.triton import passes as T

    shapes = [(2, 5, 7), (1, 3, 3000), (3, 200, 37), (2, 9, 1)]
    if not dry:  # a few large ones: the launch plan and the split/flat paths at real sizes
        shapes = [(2, 5, 7), (3, 200, 37), (16, 256, 3136), (4, 1024, 196), (1, 2048, 49), (2, 3, 200_000)]
    dtypes = [torch.float32, torch.bfloat16] if dry else [torch.float32, torch.bfloat16, torch.float16]
    torch.manual_seed(0)
    for shape in shapes:
        for dtype in dtypes if shape[0] * shape[1] < 1000 else dtypes[:2]:
            base = torch.randn(shape, device=device).to(dtype)
            if shape[2] > 8:
                base[0, 0, shape[2] // 3] = base[0, 0].max()  # a repeated maximum
            for name, x in _views(base):
                tag = f"{shape} {str(dtype)[6:]} {name}"
                b, c, n = shape
                ref = x.float()

                def stats(x: Tensor = x, ref: Tensor = ref) -> None:
                    avg, mx, idx = T.pool_stats(x, True)
                    torch.testing.assert_close(avg, ref.mean(2), rtol=1e-5, atol=1e-5)
                    assert torch.equal(mx, ref.amax(2)), "max differs"
                    assert idx is not None and torch.equal(idx, ref.argmax(2)), "argmax differs (first maximal index)"

                def scale(x: Tensor = x) -> None:
                    ca = torch.rand(x.shape[:2], device=device).to(x.dtype)
                    want = x * ca[:, :, None]
                    got = T.scale(x, ca)
                    if dry and x.dtype == torch.bfloat16:  # the interpreter rounds float32->bf16 toward zero
                        torch.testing.assert_close(got.float(), want.float(), rtol=2**-7, atol=0.0)
                    else:
                        assert torch.equal(got, want), "y differs from x * ca"

                def gca(x: Tensor = x, ref: Tensor = ref) -> None:
                    dy = torch.randn_like(ref).to(x.dtype)
                    want = (dy.float() * ref).sum(2)
                    torch.testing.assert_close(T.grad_ca(dy, x), want, rtol=1e-4, atol=1e-3)

                def gin(x: Tensor = x, b: int = b, c: int = c, n: int = n) -> None:
                    ca = torch.rand(b, c, device=device).to(x.dtype)
                    g_avg, g_max = torch.randn(b, c, device=device) / n, torch.randn(b, c, device=device)
                    idx = torch.randint(0, n, (b, c), device=device)
                    want = x.float() * ca.float()[:, :, None] + g_avg[:, :, None]
                    want = want.scatter_add(2, idx[:, :, None], g_max[:, :, None]).to(x.dtype)
                    tol = {"rtol": 1e-5, "atol": 1e-5} if x.dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
                    torch.testing.assert_close(T.grad_input(x, ca, g_avg, g_max, idx).float(), want.float(), **tol)

                for what, fn in (("pool_stats", stats), ("scale", scale), ("grad_ca", gca), ("grad_input", gin)):
                    checks.run(f"{what} {tag}", fn)

    def nan_and_inf() -> None:
        x = torch.randn(2, 4, 5000, device=device)
        x[0, 1, 4000] = float("nan")
        x[1, 2] = float("-inf")
        _, mx, idx = T.pool_stats(x, True)
        assert idx is not None
        assert mx[0, 1].isnan() and x[0, 1, idx[0, 1]].isnan(), "NaN must win the max"
        assert mx[1, 2] == float("-inf") and idx[1, 2] == 0, "an all -inf row reports index 0"

    checks.run("pool_stats NaN and -inf", nan_and_inf)


def check_block(checks: Checks, device: torch.device, dry: bool) -> None:
    """Fast path vs reference path of cafusion's own module: y, ca and every gradient."""
    from cafusion import ChannelAttentionFusionT
    from cafusion.kernels.backends import triton

    probe = torch.zeros(1, 1, 1, device=device)
    if not dry:  # (a dry run routes the op's CPU key to these kernels: route_cpu_to_triton)
        checks.run("the op's CUDA kernel runs triton for float32", lambda: _assert(triton.is_available(probe)))

    configs: list[dict[str, Any]] = [
        {"fusion": "softmax", "gate": "sigmoid", "act": "relu"},
        {"fusion": "sum", "gate": "hardsigmoid", "act": "silu", "learnable_temperature": True, "temperature": 0.5},
    ]
    shapes = [(2, 16, 5, 5), (3, 16, 11)] if dry else [(4, 64, 17, 19), (2, 64, 56, 56), (3, 64, 7), (1, 64, 1, 1)]
    for cfg in configs:
        for shape in shapes:
            for dtype in (torch.float32, torch.bfloat16):
                for lay in LAYOUTS if len(shape) == 4 else ("contiguous",):

                    def one(
                        cfg: dict[str, Any] = cfg,
                        shape: tuple[int, ...] = shape,
                        dtype: torch.dtype = dtype,
                        lay: str = lay,
                    ) -> None:
                        torch.manual_seed(1)
                        ref = ChannelAttentionFusionT(shape[1], reduction=4, impl="reference", **cfg).to(device)
                        fast = ChannelAttentionFusionT(shape[1], reduction=4, impl="fast", **cfg).to(device)
                        fast.load_state_dict(ref.state_dict())
                        x = torch.randint(-4, 5, shape, device=device).to(dtype)  # integers: many ties
                        x = layout(x + 0.25 * torch.randn(shape, device=device).round().to(dtype), lay)
                        dy = torch.randn(shape, device=device).to(dtype)
                        res = []
                        truth = copy.deepcopy(ref).double()
                        for m, xd, dyd in ((ref, x, dy), (fast, x, dy), (truth, x.double(), dy.double())):
                            xi = xd.detach().clone().requires_grad_(True)
                            y, ca = m(xi)[:2]
                            y.backward(dyd)
                            res.append([y, ca, xi.grad, *(p.grad for p in m.parameters())])
                        for i, (a, b, t) in enumerate(zip(*res, strict=True)):
                            e_ref, e_fast = _rel_err(a, t), _rel_err(b, t)
                            what = f"tensor #{i}: error vs float64 {e_fast:.3g} (reference {e_ref:.3g})"
                            if dtype == torch.float32 and i < 3:  # y, ca, dx: the core tolerances
                                tol = {"rtol": 1e-5, "atol": 1e-6 if i < 2 else 1e-5}
                                torch.testing.assert_close(b, a, **tol, msg=lambda m, what=what: f"{what}: {m}")
                            elif dtype == torch.float32:
                                # Weight gradients sum over B*N positions: both paths carry the rounding of their
                                # own summation order (on a GPU they differ by ~1e-5 at 56x56); ours must be as
                                # close to float64 as the reference is.
                                assert e_fast <= max(2 * e_ref, 1e-6), what
                            else:  # bf16: ours must be about as close to the float64 truth as the reference is
                                assert e_fast <= max(1.5 * e_ref, 1e-2), what

                    checks.run(f"block {cfg} {shape} {str(dtype)[6:]} {lay}", one)


def _rel_err(got: Tensor, truth: Tensor) -> float:
    """Relative error; a truth whose norm is below 1e-3 counts as 1e-3. A gradient that is exactly zero
    (the router's at 1x1 maps, where mean == max) leaves only rounding noise, which a relative measure
    would blow up by 1e12 (second H200 run: 1.35e-6 vs the reference's 2.6e-7 absolute)."""
    return float((got.detach().double() - truth.detach()).norm() / truth.detach().norm().clamp_min(1e-3))


def _assert(cond: bool) -> None:
    assert cond


SMALL_CONFIGS = [
    (fusion, gate, act, bias)
    for fusion in ("softmax", "sum")
    for gate in ("sigmoid", "hardsigmoid")
    for act in ("relu", "silu")
    for bias in (True, False)
]


def _small_params(c: int, h: int, r: int, bias: bool, temp: Tensor, device: torch.device) -> Any:
    """Random weights at PyTorch-init scale, conv-shaped (C, H, 1, 1) like the module's."""
    from cafusion.kernels.contract import Weights

    def w(*shape: int) -> Tensor:
        return torch.randn(*shape, device=device) / shape[1] ** 0.5

    def b(n: int) -> Tensor | None:
        return 0.5 * torch.randn(n, device=device) if bias else None

    return Weights(w(h, c, 1, 1), b(h), w(c, h, 1, 1), b(c), w(r, 2 * c), b(r), w(2, r), b(2), temp)


def check_small_path(checks: Checks, device: torch.device, dry: bool) -> None:
    """triton_small against small.py: the forward's outputs (w, ca) and every gradient.

    Per-sample fields elementwise against small.py in float32 (rtol 1e-5, atol 1e-5 / min(T, 1)); every
    field's error against small.py in float64 at most twice small.py's own (floor 1e-6 for per-sample
    fields, 1e-5 for the batch sums, whose terms cancel; both / min(T, 1), since u = z / T scales z's
    rounding), as tests/test_triton_small.py judges them.
    """
    from cafusion.kernels.backends import triton
    from cafusion.kernels.backends.pytorch import small
    from cafusion.kernels.backends.triton import small as triton_small
    from cafusion.kernels.contract import SMALL_GRAD_NAMES, Options

    if not dry:
        probe, probe_p = torch.zeros(2, 64, 3, device=device), _small_params(64, 4, 16, True, torch.tensor(1.0), device)
        checks.run(
            "small path picks triton for CUDA float32",
            lambda: _assert(triton._small_path(probe, probe_p) is triton_small),
        )
    # Every config at one odd width; two configs at the benchmark widths and odd ones (each distinct
    # config and width specialisation is a compile: keep the lease short).
    cases = [
        (cfg, (3, 49, 13, 16) if dry else (3, 196, 13, 16)) for cfg in (SMALL_CONFIGS[::5] if dry else SMALL_CONFIGS)
    ]
    widths = [(16, 20, 4, 1)] if dry else [(16, 256, 16, 16), (16, 2048, 128, 16), (1, 64, 4, 16), (64, 512, 32, 16)]
    widths += [] if dry else [(5, 100, 300, 70)]
    cases += [(cfg, width) for cfg in (SMALL_CONFIGS[0], SMALL_CONFIGS[-3]) for width in widths]
    per_sample = {"s", "pre", "hid", "out", "cat", "q", "w", "t", "u", "ca", "avg", "mx"}
    for i, (config, (b, c, h, r)) in enumerate(cases):

        def one(
            config: tuple[str, str, str, bool] = config, b: int = b, c: int = c, h: int = h, r: int = r, i: int = i
        ) -> None:
            fusion, gate, act, bias = config
            torch.manual_seed(b * c + h)
            temp = torch.tensor(0.7 if i % 2 else 0.05, device=device)  # 0.05: saturated gates
            p = _small_params(c, h, r, bias, temp, device)
            p64 = type(p)(*(None if t is None else t.double() for t in p))
            avg, mx = torch.randn(b, c, device=device), 2 * torch.randn(b, c, device=device)
            if i % 3 == 2 and b > 2:
                avg[0, 0] = float("nan")  # sample 0 turns NaN (and every batch sum); the others stay exact
            g_ca = torch.randn(b, c, device=device)
            g_w = torch.randn(b, 2, device=device) if fusion == "softmax" and i % 4 < 2 else None
            f_tri = triton_small.forward(avg, mx, p, Options(fusion, gate, act))
            f_ref = small.forward(avg, mx, p, Options(fusion, gate, act))
            f_64 = small.forward(avg.double(), mx.double(), p64, Options(fusion, gate, act))
            g_tri = triton_small.backward(f_tri, p, g_ca, g_w, Options(fusion, gate, act))
            g_ref = small.backward(f_ref, p, g_ca, g_w, Options(fusion, gate, act))
            g64 = None if g_w is None else g_w.double()
            g_64 = small.backward(f_64, p64, g_ca.double(), g64, Options(fusion, gate, act))
            atol = 1e-5 * max(1.0, 1.0 / float(temp))
            outs = [(f.w, f.ca) for f in (f_tri, f_ref, f_64)]  # the forward's outputs, which the op reads
            grads = (SMALL_GRAD_NAMES, g_tri.flat(), g_ref.flat(), g_64.flat())
            for names, tri, ref, truth in ((("w", "ca"), *outs), grads):
                for name, a, r_, t in zip(names, tri, ref, truth, strict=True):
                    if r_ is None:
                        assert a is None, f"{name} should be None"
                        continue
                    assert a.shape == r_.shape and a.dtype == r_.dtype, f"{name}: {a.shape} {a.dtype}"
                    assert torch.equal(a.isnan(), r_.isnan()), f"{name}: NaN at other positions"
                    if name in per_sample:
                        torch.testing.assert_close(a, r_, rtol=1e-5, atol=atol, equal_nan=True)
                    e_tri, e_ref = _rel_err_finite(a, t), _rel_err_finite(r_, t)
                    floor = (1e-6 if name in per_sample else 1e-5) * max(1.0, 1.0 / float(temp))
                    assert e_tri <= max(2 * e_ref, floor), f"{name}: error {e_tri:.3g} (small.py {e_ref:.3g})"

        checks.run(f"small path {config} B={b} C={c} H={h} R={r}", one)


def _rel_err_finite(got: Tensor, truth: Tensor) -> float:
    finite = truth.isfinite()
    diff = got.detach().double()[finite] - truth[finite]
    return float(diff.norm() / truth[finite].norm().clamp_min(1e-12))


# ------------------------------------------------------------------------------------------ timing


class Timer:
    """Median time of fn in ms: CUDA events with an L2 flush before each rep (wall clock on CPU)."""

    def __init__(self, device: torch.device, reps: int) -> None:
        self.device = device
        self.reps = reps
        self.flush = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device=device) if device.type == "cuda" else None

    def __call__(self, fn: Callable[[], object], reset: list[Tensor] | None = None) -> float:
        for _ in range(3):
            self._clear(reset)
            fn()
        self._sync()
        times = []
        for _ in range(self.reps):
            self._clear(reset)
            if self.flush is not None:
                self.flush.zero_()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                times.append((start, end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((t0, time.perf_counter()))
        self._sync()
        if self.flush is not None:
            return statistics.median(s.elapsed_time(e) for s, e in times)
        return statistics.median((e - s) * 1e3 for s, e in times)

    @staticmethod
    def _clear(reset: list[Tensor] | None) -> None:
        for t in reset or []:
            t.grad = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def peak_step_mb(device: torch.device, step: Callable[[], object]) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def bench_case(
    shape: tuple[int, ...], dtype: torch.dtype, lay: str, ref_cls: type[nn.Module] | None, timer: Timer, compile_: bool
) -> dict[str, Any]:
    from cafusion import ChannelAttentionFusionT

    device = timer.device
    torch.manual_seed(0)
    x = layout(torch.randn(shape, device=device, dtype=dtype), lay)
    dy = layout(torch.randn(shape, device=device, dtype=dtype), lay)
    out = torch.empty_like(x)
    nbytes = x.numel() * x.element_size()
    copy_ms = timer(lambda: out.copy_(x))
    row: dict[str, Any] = {"shape": list(shape), "dtype": str(dtype)[6:], "layout": lay, "copy_ms": copy_ms}
    row["copy_GBps"] = 2 * nbytes / copy_ms / 1e6

    models: dict[str, nn.Module] = {"ours": ChannelAttentionFusionT(shape[1], impl="fast")}
    if ref_cls is not None:
        models["reference"] = ref_cls(shape[1])
        models["ours"].load_state_dict(models["reference"].state_dict())
        if compile_:
            models["compiled"] = torch.compile(ref_cls(shape[1]), dynamic=False)
    for name, model in models.items():
        model.to(device=device, dtype=dtype)
        params = list(model.parameters())
        xg = x.detach().clone().requires_grad_(True)

        def fwd(model: nn.Module = model) -> object:
            with torch.no_grad():
                return model(x)

        def train(model: nn.Module = model, xg: Tensor = xg) -> None:
            model(xg)[0].backward(dy)

        times: dict[str, float] = {}
        try:
            times["fwd"] = timer(fwd)
            times["step"] = timer(train, reset=[xg, *params])
            row[f"{name}_peak_MB"] = peak_step_mb(device, train)
            if device.type == "cuda" and name != "compiled":  # launch overhead removed: GPU time alone
                times["fwd_graph"] = timer(graphed(fwd, []))
                times["step_graph"] = timer(graphed(train, [xg, *params]))
        except Exception as exc:  # e.g. compile or capture failing on this machine: record it, keep going
            row[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:300]
        for what, ms in times.items():
            copies = 1.5 if what.startswith("fwd") else 3.5  # forward: read x twice, write y; + dy, x, dy, dx
            row[f"{name}_{what}_ms"] = ms
            row[f"{name}_{what}_floor_x"] = ms / (copies * copy_ms)
            row[f"{name}_{what}_GBps"] = 2 * copies * nbytes / ms / 1e6
    from cafusion.kernels.backends import triton

    if triton.is_available(x):
        row.update(time_primitives(x, dy, timer, copy_ms))
    return row


def graphed(fn: Callable[[], object], reset: list[Tensor]) -> Callable[[], object]:
    """fn captured in a CUDA graph (after warm-up on a side stream); returns its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            Timer._clear(reset)
            fn()
    torch.cuda.current_stream().wait_stream(side)
    Timer._clear(reset)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def time_primitives(x: Tensor, dy: Tensor, timer: Timer, copy_ms: float) -> dict[str, float]:
    """Each Triton pass alone, against its own floor in copies of x: the kernels' bandwidth."""
    from cafusion.kernels.backends.triton import passes as T

    x3, dy3 = x.flatten(2), dy.flatten(2)
    avg, mx, idx = T.pool_stats(x3, True)
    assert idx is not None
    ca = avg.to(x.dtype)
    passes: dict[str, tuple[Callable[[], object], float]] = {
        "pool_stats_noidx": (lambda: T.pool_stats(x3, False), 0.5),  # read x
        "pool_stats": (lambda: T.pool_stats(x3, True), 0.5),
        "scale": (lambda: T.scale(x3, ca), 1.0),  # read x, write y
        "grad_ca": (lambda: T.grad_ca(dy3, x3), 1.0),  # read dy and x
        "grad_input": (lambda: T.grad_input(dy3, ca, avg, mx, idx), 1.0),  # read dy, write dx
    }
    out: dict[str, float] = {}
    for name, (fn, copies) in passes.items():
        # In a CUDA graph: one Triton launch costs tens of microseconds of Python, as long as the kernel.
        ms = timer(graphed(fn, [])) if x.is_cuda else timer(fn)
        out[f"prim_{name}_ms"] = ms
        out[f"prim_{name}_floor_x"] = ms / (copies * copy_ms)
    plain = T._PLAIN_MAX
    try:  # the previous no-index max (compare-and-select, as with the index), for comparison
        T._PLAIN_MAX = not plain
        fn = passes["pool_stats_noidx"][0]
        ms = timer(graphed(fn, [])) if x.is_cuda else timer(fn)
    finally:
        T._PLAIN_MAX = plain
    out["prim_pool_stats_noidx_alt_ms"] = ms
    out["prim_pool_stats_noidx_alt_floor_x"] = ms / (0.5 * copy_ms)
    return out


def time_small_path(timer: Timer, shapes: list[tuple[int, ...]]) -> list[dict[str, Any]]:
    """The small path alone, forward and backward, fused Triton kernels against small.py (PyTorch ops).

    Per benchmark shape: its (B, C) statistics, hidden max(4, C // 16), router hidden 16, the module's
    defaults (softmax fusion, sigmoid, relu, biases); CUDA-graph replays on a GPU (kernel time without
    the host's launch cost), wall clock on the CPU.
    """
    from cafusion.kernels.backends.pytorch import small
    from cafusion.kernels.backends.triton import small as triton_small
    from cafusion.kernels.contract import Options

    device = timer.device
    opts = Options("softmax", "sigmoid", "relu")
    rows: list[dict[str, Any]] = []
    for shape in shapes:
        b, c = shape[0], shape[1]
        h = max(4, c // 16)
        torch.manual_seed(0)
        p = _small_params(c, h, 16, True, torch.tensor(1.0, device=device), device)
        avg, mx = torch.randn(b, c, device=device), torch.randn(b, c, device=device)
        g_ca, g_w = torch.randn(b, c, device=device), torch.randn(b, 2, device=device)
        row: dict[str, Any] = {"shape": list(shape), "B": b, "C": c, "H": h, "R": 16}
        args = (avg, mx, p, g_ca, g_w)
        for name, mod in (("torch", small), ("triton", triton_small)):
            fw = mod.forward(avg, mx, p, opts)

            def fwd(mod: Any = mod, a: tuple[Any, ...] = args) -> object:
                return mod.forward(a[0], a[1], a[2], opts)

            def bwd(mod: Any = mod, fw: Any = fw, a: tuple[Any, ...] = args) -> object:
                return mod.backward(fw, a[2], a[3], a[4], opts)

            for what, fn in (("fwd", fwd), ("bwd", bwd)):
                row[f"small_{name}_{what}_ms"] = timer(graphed(fn, [])) if device.type == "cuda" else timer(fn)
        rows.append(row)
        print(
            f"  small path {shape}: " + ", ".join(f"{k} {v * 1e3:.1f} us" for k, v in row.items() if k.endswith("_ms"))
        )
    return rows


def small_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| shape | B | C | H | torch fwd us | triton fwd us | torch bwd us | triton bwd us |"]
    lines.append("|" + " --- |" * 8)
    for r in rows:
        cells = [str(tuple(r["shape"])), str(r["B"]), str(r["C"]), str(r["H"])]
        cells += [f"{r[f'small_{who}_{what}_ms'] * 1e3:.1f}" for what in ("fwd", "bwd") for who in ("torch", "triton")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


SWEEP_SHAPES = [(16, 256, 56, 56), (16, 1024, 14, 14), (16, 2048, 7, 7)]


def sweep(timer: Timer, deadline: float) -> list[dict[str, Any]]:
    """Kernel-only times of each pass for several launch plans (tile size, programs per SM)."""
    from cafusion.kernels.backends.triton import passes as T

    defaults = (T._TILE_BYTES, T._REDUCE_TILE, T._PROGRAMS_PER_SM)
    rows: list[dict[str, Any]] = []
    try:
        for shape in SWEEP_SHAPES if timer.device.type == "cuda" else DRY_SHAPES:
            for dtype in DTYPES.values():
                for lay in LAYOUTS:
                    if time.time() > deadline:
                        return rows
                    x = layout(torch.randn(shape, device=timer.device, dtype=dtype), lay)
                    dy = layout(torch.randn(shape, device=timer.device, dtype=dtype), lay)
                    out = torch.empty_like(x)
                    copy_ms = timer(lambda x=x, out=out: out.copy_(x))
                    for tile in (4096, 8192, 16384):
                        for per_sm in (4, 16):
                            T._TILE_BYTES, T._REDUCE_TILE = tile, tile // x.element_size()
                            T._PROGRAMS_PER_SM = per_sm
                            row = {"shape": list(shape), "dtype": str(dtype)[6:], "layout": lay, "tile_bytes": tile}
                            row |= {"programs_per_sm": per_sm, "copy_ms": copy_ms}
                            row.update(time_primitives(x, dy, timer, copy_ms))
                            rows.append(row)
                    print(f"  sweep {shape} {str(dtype)[6:]} {lay}", flush=True)
    finally:
        T._TILE_BYTES, T._REDUCE_TILE, T._PROGRAMS_PER_SM = defaults
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    cols = [("ours", "fwd"), ("ours", "step"), ("ours", "fwd_graph"), ("ours", "step_graph")]
    cols += [("reference", "fwd"), ("reference", "step"), ("reference", "fwd_graph"), ("reference", "step_graph")]
    cols += [("compiled", "fwd"), ("compiled", "step")]
    head = "| shape | dtype | layout | copy us (GB/s) |"
    head += "".join(f" {who} {what} us (x floor) |" for who, what in cols)
    lines = [head, "|" + " --- |" * (4 + len(cols))]
    for r in rows:
        cells = [str(tuple(r["shape"])), r["dtype"], r["layout"]]
        if r.get("skipped"):
            lines.append("| " + " | ".join([*cells, "not timed (deadline)"]) + " |")
            continue
        cells.append(f"{r['copy_ms'] * 1e3:.1f} ({r['copy_GBps']:.0f})")
        for who, what in cols:
            ms = r.get(f"{who}_{what}_ms")
            if ms is None:
                cells.append("-")
                continue
            gbps = f", {r[f'{who}_{what}_GBps']:.0f} GB/s" if who == "ours" else ""
            cells.append(f"{ms * 1e3:.1f} ({r[f'{who}_{what}_floor_x']:.2f}x{gbps})")
        lines.append("| " + " | ".join(cells) + " |")
    prims = [r for r in rows if "prim_scale_ms" in r]
    if prims:
        names = ["pool_stats_noidx", "pool_stats_noidx_alt", "pool_stats", "scale", "grad_ca", "grad_input"]
        names = [n for n in names if f"prim_{n}_ms" in prims[0]]
        lines += ["", "| shape | dtype | layout |" + "".join(f" {p} us (x floor) |" for p in names)]
        lines.append("|" + " --- |" * (3 + len(names)))
        for r in prims:
            cells = [str(tuple(r["shape"])), r["dtype"], r["layout"]]
            cells += [f"{r[f'prim_{p}_ms'] * 1e3:.1f} ({r[f'prim_{p}_floor_x']:.2f}x)" for p in names]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_check.json (default: $OUT)")
    parser.add_argument("--reference", default=None, help=f"path to {REFERENCE_NAME}")
    parser.add_argument(
        "--compile",
        choices=("all", "contiguous", "none"),
        default="contiguous",
        help="which cases also time torch.compile of the reference (each case compiles anew)",
    )
    parser.add_argument("--reps", type=int, default=30, help="timed repetitions per measurement (median)")
    parser.add_argument("--skip-checks", action="store_true", help="only time")
    parser.add_argument("--block-checks-only", action="store_true", help="check the whole block, not each pass")
    parser.add_argument("--deadline-s", type=float, default=330.0, help="stop timing new cases after this long")
    parser.add_argument("--skip-bench", action="store_true", help="only check correctness")
    parser.add_argument("--sweep", action="store_true", help="also time each pass under several launch plans")
    parser.add_argument("--dry-run", action="store_true", help="CPU + TRITON_INTERPRET=1: exercise the script itself")
    parser.add_argument("--small-path-only", action="store_true", help="only check and time the small (B, C) path")
    args = parser.parse_args(argv)

    if args.dry_run:
        if os.environ.get("TRITON_INTERPRET") != "1":
            print("gpu_check: --dry-run needs TRITON_INTERPRET=1 (the Triton interpreter runs the kernels on the CPU)")
            return 2
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device here (torch {torch.__version__}); nothing to check. Run it on a GPU machine,")
        print("           or check the script itself with: TRITON_INTERPRET=1 python scripts/gpu_check.py --dry-run")
        return 2
    else:
        device = torch.device("cuda")
    import triton

    from cafusion.kernels.backends import triton as triton_backend

    probe = torch.zeros(1, 1, 1, device=device)
    if not triton_backend.is_available(probe):
        print(f"gpu_check: the Triton kernels are not available on {device} (triton {triton.__version__})")
        return 2

    env = {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "dry_run": args.dry_run,
    }
    print(json.dumps(env), flush=True)
    started = time.time()
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"env": env}

    routed = route_cpu_to_triton() if args.dry_run else None  # the block's fast path on the Triton kernels
    checks = Checks()
    if not args.skip_checks:
        t0 = time.time()
        if not (args.block_checks_only or args.small_path_only):
            check_primitives(checks, device, args.dry_run)
        if not args.small_path_only:
            check_block(checks, device, args.dry_run)
        check_small_path(checks, device, args.dry_run)
        n_fail = len(checks.failed)
        print(f"correctness: {len(checks.results) - n_fail}/{len(checks.results)} passed ({time.time() - t0:.0f} s)")
        report["checks"] = checks.results

    if not args.skip_bench or args.small_path_only:
        timer = Timer(device, 3 if args.dry_run else args.reps)
        report["small_path"] = time_small_path(timer, DRY_SHAPES if args.dry_run else SHAPES)
        print(small_table(report["small_path"]))
        _write(out, report, [])
    if args.small_path_only:
        return 1 if checks.failed else 0

    if args.sweep:
        report["sweep"] = sweep(Timer(device, 3 if args.dry_run else 10), started + args.deadline_s / 2)
        _write(out, report, [])

    ref_path = find_reference(args.reference)
    if ref_path is None:
        print(f"reference module not found ({REFERENCE_NAME}; --reference PATH): timing ours and the copy only")
    rows: list[dict[str, Any]] = []
    if not args.skip_bench:
        ref_cls = load_reference(ref_path) if ref_path is not None else None
        if hasattr(torch, "_dynamo"):
            for knob in ("cache_size_limit", "recompile_limit"):
                if hasattr(torch._dynamo.config, knob):
                    setattr(torch._dynamo.config, knob, 256)
        timer = Timer(device, 3 if args.dry_run else args.reps)
        for shape in DRY_SHAPES if args.dry_run else SHAPES:
            for dname, dtype in DTYPES.items():
                for lay in LAYOUTS:
                    t0 = time.time()
                    left = args.deadline_s - (t0 - started)
                    if left < 15:  # a lease is short: keep what was measured, say what was not
                        rows.append({"shape": list(shape), "dtype": str(dtype)[6:], "layout": lay, "skipped": True})
                        continue
                    compile_ = not args.dry_run and (args.compile == "all" or (args.compile == lay == "contiguous"))
                    row = bench_case(shape, dtype, lay, ref_cls, timer, compile_ and left > 90)
                    rows.append(row)
                    print(f"  {shape} {dname} {lay}: {time.time() - t0:.1f} s", flush=True)
                    report["bench"] = rows
                    _write(out, report, rows)  # after every case, so a cut-off run still leaves its rows
        print(table(rows))
    _write(out, report, rows)
    del routed
    return 1 if checks.failed else 0


def route_cpu_to_triton() -> Any:
    """Dry run: the op's CPU key runs its CUDA kernels (the Triton backend, which the interpreter runs on
    the CPU), so that the block's fast path goes through the Triton kernels as on a GPU. Registered for as
    long as the returned library lives; the native CPU kernels are loaded first, or they would take the
    CPU key back when they load."""
    from cafusion.kernels import op
    from cafusion.kernels.backends import native

    native.library()
    lib = torch.library.Library("cafusion", "IMPL")  # type: ignore[no-untyped-call]
    lib.impl("caft_forward", op._forward_cuda, "CPU")
    lib.impl("caft_backward", op._backward_cuda, "CPU")
    return lib


def _write(out: Path | None, report: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    if out is not None:
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
        small = small_table(report["small_path"]) + "\n\n" if report.get("small_path") else ""
        (out / "gpu_check.md").write_text(small + table(rows) + "\n")


if __name__ == "__main__":
    sys.exit(main())
