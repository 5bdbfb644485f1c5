"""The fused Triton small path (``backends/triton/small.py``), run on the CPU by Triton's interpreter,
against the PyTorch small path (``backends/pytorch/small.py``, ``small`` below).

As in ``test_triton_kernels.py``, TRITON_INTERPRET=1 must be set before triton's @jit decorators run,
so each group runs in a fresh subprocess (this file executed as a script). Run one group by hand
with: ``TRITON_INTERPRET=1 python tests/test_triton_small.py configs``.

How results are judged. The forward's fusion weights and gate (what the op reads; the other fields
are the Triton backward's own inputs, judged through its gradients) and every gradient have small.py's
shape, dtype and None-ness. Values: the forward outputs and the per-sample gradients (of avg and max)
equal small.py's float32 results elementwise
(rtol 1e-5; atol 1e-5, since both sum up to C products of O(1) terms in different orders). Every
field, the batch sums (weight, bias and temperature gradients) included, is also compared with
small.py run in float64: its error there (norm of the difference over norm of the float64 result)
must be at most twice small.py's own float32 error, or 1e-6 for the per-sample fields and 1e-5 (the
core rtol) for the batch sums, whichever is larger. The floor is looser for the batch sums because
their terms cancel (the temperature gradient is one sum of B * C terms g_u * u; the fusion-weight
gradients of a sample sum to zero), so each term's forward rounding, not the summation order, sets
their relative error: small.py's own error there reaches 1e-5 too. With T < 1 every tolerance grows
by 1 / T: u = z / T (and g_z = g_u / T) scale z's rounding by that much.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
from torch import Tensor

from cafusion.kernels.backends.pytorch import small
from cafusion.kernels.contract import SMALL_GRAD_NAMES, Options, Weights

GROUPS = ("configs", "shapes", "edges", "block", "gpu_check", "plain_max")


@pytest.mark.parametrize("group", GROUPS)
def test_small_path_under_interpreter(group: str) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root / "src"), str(root), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, __file__, group], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, f"interpreter checks for {group} failed:\n{proc.stdout}\n{proc.stderr}"
    assert f"checked {group}:" in proc.stdout  # the group really ran its cases


# The chooser (which small path runs where) is tested in test_triton_fallback.py.


# ---------------------------------------------------------------- the checks (run in the subprocess)

CONFIGS = list(itertools.product(("softmax", "sum"), ("sigmoid", "hardsigmoid"), ("relu", "silu"), (True, False)))


def _params(c: int, h: int, r: int, bias: bool, temp: Tensor, dtype: torch.dtype = torch.float32) -> Weights:
    """Random weights at PyTorch-init scale; fc weights conv-shaped (C, H, 1, 1) as the module holds them."""

    def w(*shape: int) -> Tensor:
        return (torch.randn(*shape) / shape[1] ** 0.5).to(dtype)

    def b(n: int) -> Tensor | None:
        return (0.5 * torch.randn(n)).to(dtype) if bias else None

    return Weights(w(h, c, 1, 1), b(h), w(c, h, 1, 1), b(c), w(r, 2 * c), b(r), w(2, r), b(2), temp)


def _double(p: Weights) -> Weights:
    return Weights(*(None if t is None else t.double() for t in p))


def _rel_err(got: Tensor, truth: Tensor) -> float:
    diff = got.double() - truth
    finite = truth.isfinite()
    return float(diff[finite].norm() / truth[finite].norm().clamp_min(1e-12))


def _compare(
    what: str,
    names: tuple[str, ...],
    tri: tuple[Any, ...],
    ref: tuple[Any, ...],
    truth: tuple[Any, ...],
    elementwise: set[str],
    atol: float,
) -> None:
    for name, a, b, t in zip(names, tri, ref, truth, strict=True):
        where = f"{what}: {name}"
        if b is None:
            assert a is None, f"{where} should be None"
            continue
        assert a is not None and a.shape == b.shape and a.dtype == b.dtype, f"{where}: {a} vs {b}"
        if b.numel() == 0:
            continue
        assert torch.equal(a.isnan(), b.isnan()), f"{where}: NaN at other positions"
        if name in elementwise:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=atol, equal_nan=True, msg=lambda m, w=where: f"{w}: {m}")
        e_tri, e_ref = _rel_err(a, t), _rel_err(b, t)
        floor = (1e-6 if name in elementwise else 1e-5) * atol / 1e-5  # atol / 1e-5 = max(1, 1 / T)
        if a.dtype == torch.bfloat16:  # the interpreter rounds float32 -> bfloat16 toward zero (a GPU: to nearest)
            floor = 2**-7
        assert e_tri <= max(2 * e_ref, floor), f"{where}: error vs float64 {e_tri:.3g} (small.py {e_ref:.3g})"


class _Out(NamedTuple):
    """The forward's outputs that the op reads, from either small path."""

    w: Tensor | None
    ca: Tensor


def _out(fw: Any) -> _Out:
    return _Out(fw.w, fw.ca)


_PER_SAMPLE = {"s", "pre", "hid", "out", "cat", "q", "w", "t", "u", "ca", "avg", "mx"}


def _one(
    config: tuple[str, str, str, bool],
    b: int,
    c: int,
    h: int,
    r: int,
    *,
    temp: Tensor | None = None,
    with_g_w: bool = True,
    stats: tuple[Tensor, Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
) -> None:
    """triton_small vs small (float32 and float64) on one case: forward fields and every gradient."""
    from cafusion.kernels.backends.triton import small as TS

    fusion, gate, act, bias = config
    temp = torch.tensor(0.7) if temp is None else temp
    p = _params(c, h, r, bias, temp, dtype)
    avg, mx = stats if stats is not None else (torch.randn(b, c), 2 * torch.randn(b, c))
    what = f"{config} B={b} C={c} H={h} R={r} T{tuple(temp.shape)}={float(temp):.3g} g_w={with_g_w} {dtype}"
    atol = 1e-5 * max(1.0, 1.0 / float(temp))  # u = z / T and g_z = g_u / T scale z's rounding by 1 / T
    f_tri = TS.forward(avg, mx, p, Options(fusion, gate, act))
    f_ref = small.forward(avg, mx, p, Options(fusion, gate, act))
    f_64 = small.forward(avg.double(), mx.double(), _double(p), Options(fusion, gate, act))
    _compare(f"forward {what}", _Out._fields, _out(f_tri), _out(f_ref), _out(f_64), _PER_SAMPLE, atol)
    g_ca = torch.randn(b, c)
    g_w = torch.randn(b, 2) if with_g_w and fusion == "softmax" else None
    g_tri = TS.backward(f_tri, p, g_ca, g_w, Options(fusion, gate, act))
    g_ref = small.backward(f_ref, p, g_ca, g_w, Options(fusion, gate, act))
    g_64 = small.backward(
        f_64, _double(p), g_ca.double(), None if g_w is None else g_w.double(), Options(fusion, gate, act)
    )
    _compare(f"backward {what}", SMALL_GRAD_NAMES, g_tri.flat(), g_ref.flat(), g_64.flat(), _PER_SAMPLE, atol)


def check_configs() -> int:
    """All 16 configs (fusion x gate x act x bias), fixed 0-d and learnable-style 1-element temperature."""
    count = 0
    for i, config in enumerate(CONFIGS):
        temp = torch.tensor(0.7) if i % 2 else torch.tensor([1.3])  # learnable: softplus(t_raw) + eps, 1 element
        _one(config, 3, 64, 13, 16, temp=temp, with_g_w=i % 4 < 2)
        count += 1
    return count


def check_shapes() -> int:
    """Every B in {1, 3, 16}, C in {3, 64, 196}, H in {4, 13, 64}, R in {1, 16}, tiles that do not divide."""
    cases = [
        (1, 3, 4, 1),
        (1, 64, 13, 16),
        (1, 196, 64, 16),
        (3, 3, 13, 16),
        (3, 64, 64, 1),
        (3, 196, 4, 16),
        (16, 3, 64, 1),
        (16, 64, 4, 16),
        (16, 196, 13, 16),
    ]
    count = 0
    for i, (b, c, h, r) in enumerate(cases):
        _one(CONFIGS[(5 * i) % 16], b, c, h, r)
        count += 1
    _one(CONFIGS[0], 3, 64, 300, 70)  # H and R beyond one tile (64): the loops over hidden tiles
    return count + 1


def check_edges() -> int:
    """NaN input, saturated gates, weights in bfloat16 (float32 compute), an empty batch."""
    count = 0
    for config in CONFIGS[::3]:
        avg, mx = torch.randn(3, 64), torch.randn(3, 64)
        avg[1, 5] = float("nan")  # sample 1 turns NaN throughout, the others must stay exact
        _one(config, 3, 64, 13, 16, stats=(avg, mx))
        count += 1
    for config in (CONFIGS[2], CONFIGS[8]):  # hardsigmoid: many u beyond +-3 (slope 0) and inside
        _one(config, 3, 64, 13, 16, temp=torch.tensor(0.05), stats=(4 * torch.randn(3, 64), 4 * torch.randn(3, 64)))
        count += 1
    _one(CONFIGS[0], 3, 64, 13, 16, dtype=torch.bfloat16)  # gradients come back in bfloat16
    count += 1
    from cafusion.kernels.backends.triton import small as TS

    for config in CONFIGS[:1] + CONFIGS[-1:]:
        fusion, gate, act, bias = config
        p = _params(8, 4, 16, bias, torch.tensor(0.7))
        empty = torch.zeros(0, 8)
        f_tri = TS.forward(empty, empty, p, Options(fusion, gate, act))
        f_ref = small.forward(empty, empty, p, Options(fusion, gate, act))
        g_tri = TS.backward(f_tri, p, empty, None, Options(fusion, gate, act))
        g_ref = small.backward(f_ref, p, empty, None, Options(fusion, gate, act))
        pairs = zip((*_out(f_tri), *g_tri.flat()), (*_out(f_ref), *g_ref.flat()), strict=True)
        for a, b in pairs:
            assert (a is None) == (b is None)
            if a is not None:
                assert a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b), (config, a, b)
        count += 1
    return count


def check_block() -> int:
    """The whole block through the op with its CPU key on the Triton backend (passes and small path)."""
    from cafusion import ChannelAttentionFusionT
    from cafusion.kernels.backends.triton import small as triton_small
    from tests.triton_cpu import route_cpu_to_triton

    routed = route_cpu_to_triton()
    calls = {"forward": 0, "backward": 0}
    for name in calls:
        setattr(triton_small, name, _counted(getattr(triton_small, name), calls, name))
    configs: list[dict[str, Any]] = [
        {"fusion": "softmax", "gate": "sigmoid", "act": "relu"},
        {"fusion": "softmax", "gate": "hardsigmoid", "act": "silu", "bias": False, "temperature": 0.3},
        {"fusion": "sum", "gate": "hardsigmoid", "act": "silu", "learnable_temperature": True, "temperature": 0.7},
    ]
    count = 0
    for cfg in configs:
        for shape, channels_last in (((2, 12, 5, 3), False), ((3, 12, 4, 4), True), ((3, 12, 11), False)):
            torch.manual_seed(count)
            ref = ChannelAttentionFusionT(12, reduction=2, impl="reference", return_fusion_weights=True, **cfg)
            fast = ChannelAttentionFusionT(12, reduction=2, impl="fast", return_fusion_weights=True, **cfg)
            fast.load_state_dict(ref.state_dict())
            x = torch.randint(-3, 4, shape).float() + 0.1 * torch.randn(shape).round()  # many ties
            if channels_last:
                x = x.to(memory_format=torch.channels_last)
            what = f"{cfg} {shape} channels_last={channels_last}"
            outs, grads = [], []
            for m in (ref, fast):
                xi = x.clone().requires_grad_(True)
                y, ca, *rest = m(xi)
                fusion_w = rest[0] if rest else None  # the sum fusion has no weights to return
                loss = (y * torch.linspace(-1, 1, y.numel()).view(y.shape)).sum() + (ca * ca).sum()
                if fusion_w is not None:
                    loss = loss + (fusion_w[:, 0] * torch.arange(shape[0])).sum()  # a gradient into fusion_w
                loss.backward()
                outs.append((y, ca) if fusion_w is None else (y, ca, fusion_w))
                grads.append([xi.grad, *(p.grad for p in m.parameters())])
            for a, b in zip(outs[0], outs[1], strict=True):
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=lambda m, w=what: f"output {w}: {m}")
            for a, b in zip(grads[0], grads[1], strict=True):
                assert a is not None and b is not None, what
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=lambda m, w=what: f"gradient {w}: {m}")
            count += 1
    # Each training step: the small path's forward, then in the backward its forward again (recomputed
    # from the saved statistics, nothing (B, C)-sized is saved) and its backward, all on these kernels.
    assert calls["forward"] == 2 * count and calls["backward"] == count, calls
    del routed
    return count


def _counted(fn: Callable[..., Any], calls: dict[str, int], name: str) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[name] += 1
        return fn(*args, **kwargs)

    return wrapper


def check_gpu_check_script() -> int:
    """scripts/gpu_check.py --dry-run --small-path-only: its small-path checks and timing, on the interpreter."""
    import importlib.util
    import json
    import tempfile

    path = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    assert spec is not None and spec.loader is not None
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    with tempfile.TemporaryDirectory() as out:
        rc = gpu_check.main(["--dry-run", "--small-path-only", "--reps", "1", "--out", out])
        report = json.loads((Path(out) / "gpu_check.json").read_text())
        table = (Path(out) / "gpu_check.md").read_text()
    assert rc == 0, report["checks"]
    names = [c["check"] for c in report["checks"]]
    assert len(names) >= 5 and all(n.startswith("small path") for n in names), names
    rows = report["small_path"]
    assert len(rows) == len(gpu_check.DRY_SHAPES) and "triton bwd us" in table, rows
    for row in rows:
        for key in ("small_torch_fwd_ms", "small_triton_fwd_ms", "small_torch_bwd_ms", "small_triton_bwd_ms"):
            assert row[key] > 0, (key, row)
    return len(names)


def check_plain_max() -> int:
    """pool_stats without the index, both variants of its running max (passes._PLAIN_MAX), against torch:
    NaN wins (also after an inf, and across the split of N), -inf rows, contiguous and channels_last."""
    from cafusion.kernels.backends.triton import passes as T

    count = 0
    for plain in (True, False):
        T._PLAIN_MAX = plain
        for shape in [(2, 5, 7), (1, 3, 1100), (2, 130, 20)]:  # (1, 3, 1100) splits N across programs
            base = torch.randn(shape)
            base[0, 1, shape[2] // 3] = float("inf")
            base[0, 1, shape[2] // 2] = float("nan")
            base[-1, 0, -1] = float("nan")
            base[0, 0] = float("-inf")
            for x in (base, base.transpose(1, 2).contiguous().transpose(1, 2)):
                avg, mx, idx = T.pool_stats(x, False)
                assert idx is None
                torch.testing.assert_close(mx, x.amax(2), rtol=0, atol=0, equal_nan=True)
                torch.testing.assert_close(avg, x.mean(2), rtol=1e-5, atol=1e-5, equal_nan=True)
                count += 1
    T._PLAIN_MAX = True
    return count


CHECKS: dict[str, Callable[[], int]] = {
    "plain_max": check_plain_max,
    "configs": check_configs,
    "shapes": check_shapes,
    "edges": check_edges,
    "block": check_block,
    "gpu_check": check_gpu_check_script,
}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tests.triton_cpu` when run by hand
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("set TRITON_INTERPRET=1: these checks run the kernels on the CPU interpreter")
    torch.manual_seed(0)
    for name in sys.argv[1:] or list(CHECKS):
        n_cases = CHECKS[name]()
        print(f"checked {name}: {n_cases} cases")
