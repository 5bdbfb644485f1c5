"""The Triton passes (``backends/triton/passes.py``), run on the CPU by Triton's interpreter, against
naive torch; and the whole block through the op with its CPU key routed to the Triton backend.

TRITON_INTERPRET=1 must be set before triton's @jit decorators run, so each group of checks runs
in a fresh subprocess (this file executed as a script) with the variable set. Run one group by
hand with: ``TRITON_INTERPRET=1 python tests/test_triton_kernels.py pool_stats``.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

GROUPS = ("pool_stats", "scale", "grad_ca", "grad_input", "edges", "padded", "padded_block", "block", "gpu_check")


@pytest.mark.parametrize("group", GROUPS)
def test_kernels_under_interpreter(group: str) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root / "src"), str(root), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, __file__, group], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, f"interpreter checks for {group} failed:\n{proc.stdout}\n{proc.stderr}"
    assert f"checked {group}:" in proc.stdout  # the group really ran its cases


# ---------------------------------------------------------------- the checks (run in the subprocess)


def _layouts(b: int, c: int, n: int, dtype: torch.dtype) -> Iterator[tuple[str, Tensor]]:
    """The same (B, C, N) values in three memory layouts (as x.flatten(2) would hand them over)."""
    base = torch.randn(b, c, n).to(dtype)
    yield "contiguous", base
    yield "channels_last", base.transpose(1, 2).contiguous().transpose(1, 2)
    wide = torch.zeros(b, n, 2 * c, dtype=dtype)
    wide[:, :, ::2] = base.transpose(1, 2)
    yield "strided", wide.transpose(1, 2)[:, ::2, :]  # no unit stride at all


SHAPES = [(2, 5, 7), (1, 3, 1100), (1, 130, 40), (2, 9, 1), (1, 1, 1), (3, 33, 16)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _cases() -> Iterator[tuple[str, Tensor]]:
    """Every shape x dtype x layout with ``make test-triton-full``; by default every other one (each shape,
    dtype and layout still appears, since three layouts alternate under a step of two)."""
    from tests.sweep import full_sweep

    step = 1 if full_sweep() else 2
    i = 0
    for shape in SHAPES:
        for dtype in DTYPES if shape in SHAPES[:3] else DTYPES[:2]:  # float16 shares bfloat16's code
            for name, x in _layouts(*shape, dtype):
                if i % step == 0:
                    yield f"{shape} {dtype} {name}", x
                i += 1


def _close(got: Tensor, want: Tensor, what: str, *, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def _tol(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}


def _dense(x: Tensor) -> bool:
    """Contiguous or channels_last-like: the layouts whose strides the outputs must keep."""
    return x.is_contiguous() or x.transpose(1, 2).is_contiguous()


def _scatter_ref(x: Tensor, idx: Tensor, val: Tensor) -> Tensor:
    return torch.zeros(x.shape, dtype=torch.float32).scatter(2, idx[:, :, None], val[:, :, None])


def check_pool_stats(t: object) -> int:
    from cafusion.kernels.backends.triton import passes as T

    count = 0
    for what, x in _cases():
        ref = x.float()
        for need_index in (True, False):
            avg, mx, idx = T.pool_stats(x, need_index)
            assert avg.dtype == mx.dtype == torch.float32, what
            _close(avg, ref.mean(2), f"avg {what}")
            assert torch.equal(mx, ref.amax(2)), f"max {what}"
            if need_index:
                assert idx is not None and idx.dtype == torch.int64, what
                assert torch.equal(idx, ref.argmax(2)), f"argmax {what}"  # torch: first maximal index
            else:
                assert idx is None, what
            count += 1
    # Many ties (values in {0, 1, 2}), also across split boundaries: the FIRST maximal index wins.
    for shape in [(2, 5, 7), (1, 3, 1100), (1, 130, 40)]:
        for _, x in _layouts(*shape, torch.float32):
            x = x.clone().copy_(torch.randint(0, 3, shape).float())
            _, mx, idx = T.pool_stats(x, True)
            assert idx is not None
            assert torch.equal(mx, x.amax(2)) and torch.equal(idx, x.argmax(2)), f"ties {shape}"
            count += 1
    # NaN makes the max NaN and the index points at a NaN; an all -inf row reports index 0.
    for shape in [(2, 4, 9), (2, 2, 1100), (2, 130, 20)]:
        for _, x in _layouts(*shape, torch.float32):
            x = x.clone()
            x[0, 1, shape[2] // 3] = float("inf")
            x[0, 1, shape[2] // 2] = float("nan")  # the first NaN (a later one, and an inf before it)
            x[0, 1, -1] = float("nan")
            x[-1, 0, -1] = float("nan")
            x[0, 0] = float("-inf")
            avg, mx, idx = T.pool_stats(x, True)
            assert idx is not None
            assert mx[0, 1].isnan() and mx[-1, 0].isnan(), f"nan max {shape}"
            assert idx[0, 1] == shape[2] // 2 and idx[-1, 0] == shape[2] - 1, f"first NaN index {shape}"
            assert mx[0, 0] == float("-inf") and idx[0, 0] == 0, f"-inf row {shape}"
            finite = ~mx.isnan() & ~mx.isinf()
            assert torch.equal(mx[finite], x.amax(2)[finite]) and torch.equal(idx[finite], x.argmax(2)[finite])
            count += 1
    return count


def check_scale(t: object) -> int:
    from cafusion.kernels.backends.triton import passes as T

    count = 0
    for what, x in _cases():
        b, c, _ = x.shape
        ca = torch.rand(b, c).to(x.dtype)
        y = T.scale(x, ca)
        assert y.dtype == x.dtype and y.shape == x.shape, what
        if _dense(x):
            assert y.stride() == x.stride(), f"layout {what}"
        want = x * ca[:, :, None]  # torch multiplies in float32 and rounds once, as the kernel does
        if x.dtype == torch.bfloat16:  # the interpreter rounds float32 -> bfloat16 toward zero: 1 ulp
            _close(y.float(), want.float(), f"y {what}", rtol=2**-7, atol=0.0)
        else:
            assert torch.equal(y, want), f"y {what}"
        count += 1
    return count


def check_grad_ca(t: object) -> int:
    from cafusion.kernels.backends.triton import passes as T

    count = 0
    for what, x in _cases():
        dys = _layouts(*x.shape, x.dtype) if x.dtype == torch.float32 else [("same", torch.randn_like(x))]
        for dy_name, dy in dys:  # dy and x in different layouts too
            got = T.grad_ca(dy, x)
            assert got.dtype == torch.float32, what
            _close(got, (dy.float() * x.float()).sum(2), f"grad_ca {what} dy {dy_name}", rtol=1e-4, atol=1e-4)
            count += 1
    return count


def check_grad_input(t: object) -> int:
    from cafusion.kernels.backends.triton import passes as T

    count = 0
    for what, dy in _cases():
        b, c, n = dy.shape
        ca = torch.rand(b, c).to(dy.dtype)
        g_avg, g_max = torch.randn(b, c) / n, torch.randn(b, c)
        idx = torch.randint(0, n, (b, c))
        dx = T.grad_input(dy, ca, g_avg, g_max, idx)
        assert dx.dtype == dy.dtype and dx.shape == dy.shape, what
        if _dense(dy):
            assert dx.stride() == dy.stride(), f"layout {what}"
        want = dy.float() * ca.float()[:, :, None] + g_avg[:, :, None] + _scatter_ref(dy, idx, g_max)
        _close(dx.float(), want.to(dy.dtype).float(), f"dx {what}", **_tol(dy.dtype))
        count += 1
    return count


def check_edges(t: object) -> int:
    from cafusion.kernels.backends.triton import passes as T

    assert T.is_available(torch.zeros(1, 1, 1)), "TRITON_INTERPRET=1 must make CPU float tensors eligible"
    assert not T.is_available(torch.zeros(1, 1, 1, dtype=torch.float64)), "float64 stays on the torch path"
    count = 0
    for b, c in [(0, 4), (2, 0)]:  # empty batch / no channels: empty results, no launch
        x = torch.randn(b, c, 6)
        avg, mx, idx = T.pool_stats(x, True)
        assert avg.shape == mx.shape == (b, c) and idx is not None and idx.shape == (b, c)
        assert T.scale(x, torch.rand(b, c)).shape == x.shape
        assert T.grad_ca(x, x).shape == (b, c)
        dx = T.grad_input(
            x, torch.rand(b, c), torch.zeros(b, c), torch.zeros(b, c), torch.zeros(b, c, dtype=torch.long)
        )
        assert dx.shape == x.shape
        count += 1
    # ca/g_* handed over as (B, C, 1, 1) views, as the block produces them.
    x = torch.randn(2, 3, 10)
    ca4 = torch.rand(2, 3, 1, 1)
    assert torch.equal(T.scale(x, ca4), x * ca4.view(2, 3, 1))
    # A channels_last 4-D map flattened as the dispatcher does it: y keeps the layout.
    x4 = torch.randn(2, 6, 5, 3).to(memory_format=torch.channels_last)
    y3 = T.scale(x4.flatten(2), ca4.new_ones(2, 6))
    assert y3.stride() == x4.flatten(2).stride() and torch.equal(y3, x4.flatten(2))
    for bad in (torch.zeros(2, 3), torch.zeros(1, 2, 0)):
        try:
            T.pool_stats(bad, False)
        except ValueError:
            count += 1
        else:
            raise AssertionError(f"pool_stats accepted shape {tuple(bad.shape)}")
    return count + 2


def _paddings(x: Tensor) -> Iterator[tuple[str, Tensor, Tensor]]:
    """(name, valid as the passes take it, the same padding as a (B, N) mask) for a (B, C, N) x: ragged
    lengths with 1 and N among them, and a general mask whose first position is padding."""
    b, _, n = x.shape
    lengths = torch.tensor([1, n, max(1, n // 2 + 1)] * b)[:b]
    yield "lengths", lengths, torch.arange(n) < lengths[:, None]
    mask = torch.rand(b, n) < 0.5
    mask[:, 0], mask[:, -1] = n == 1, True  # padding first (unless N = 1), a real position last
    yield "mask", mask, mask


def _masked_ref(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Naive masked statistics: mean over real positions, max and first maximal real position."""
    xf, keep = x.float(), mask[:, None, :]
    avg = torch.where(keep, xf, 0.0).sum(2) / mask.sum(1, keepdim=True)
    mx, idx = torch.where(keep, xf, float("-inf")).max(2)
    return avg, mx, idx


def check_padded(t: object) -> int:
    """pool_stats and grad_input with lengths and general masks, against naive masked torch."""
    from cafusion.kernels.backends.triton import passes as T

    count = 0
    for i, (what, x) in enumerate(_cases()):
        if not _full() and (i - i // 3) % 3:  # a third, rotating: every dtype and layout, N = 1 and the split
            continue
        b, c, n = x.shape
        for pad, valid, mask in _paddings(x):
            xp = x.clone().masked_fill_(~mask[:, None, :], float("nan"))  # padding NaN must never enter
            want_avg, want_mx, want_idx = _masked_ref(xp, mask)
            for need_index in (True, False):
                avg, mx, idx = T.pool_stats(xp, need_index, valid)
                _close(avg, want_avg, f"avg {what} {pad}")
                assert torch.equal(mx, want_mx), f"max {what} {pad}"
                assert (idx is not None) == need_index, f"index {what} {pad}"
                if idx is not None:
                    assert torch.equal(idx, want_idx), f"argmax {what} {pad}"
            ca, g_avg, g_max = torch.rand(b, c).to(x.dtype), torch.randn(b, c) / n, torch.randn(b, c)
            dy = torch.randn_like(x)
            dx = T.grad_input(dy, ca, g_avg, g_max, want_idx, valid)
            want = dy.float() * ca.float()[:, :, None] + torch.where(mask[:, None, :], g_avg[:, :, None], 0.0)
            want += _scatter_ref(dy, want_idx, g_max)
            _close(dx.float(), want.to(dy.dtype).float(), f"dx {what} {pad}", **_tol(dy.dtype))
            count += 1
    count += _padded_ties_and_nan(T)
    for bad in (torch.ones(2, 5, dtype=torch.int64), torch.ones(2, dtype=torch.float32), torch.ones(3, 5) > 0):
        try:
            T.pool_stats(torch.randn(2, 3, 5), False, bad)
        except ValueError as err:
            assert "valid must" in str(err), err
            count += 1
        else:
            raise AssertionError(f"pool_stats accepted valid {bad.dtype} {tuple(bad.shape)}")
    return count


def _padded_ties_and_nan(T: Any) -> int:
    """Ties (the first maximal REAL position wins, across split boundaries too), NaN at real positions,
    all -inf real positions behind padding (the first real position, never a padded one)."""
    count = 0
    for shape in [(3, 5, 8), (2, 3, 1100), (2, 130, 20)]:  # N = 8: loads run to the length rounded up to 8
        for name, x in _layouts(*shape, torch.float32):
            x = x.clone().copy_(torch.randint(0, 3, shape).float())
            for pad, valid, mask in _paddings(x):
                _, mx, idx = T.pool_stats(x, True, valid)
                _, want_mx, want_idx = _masked_ref(x, mask)
                assert torch.equal(mx, want_mx) and torch.equal(idx, want_idx), f"ties {shape} {name} {pad}"
                count += 1
        x = torch.randn(shape)
        n = shape[2]
        real = torch.zeros(shape[0], n, dtype=torch.bool)
        real[:, n // 3 :] = True  # the first third is padding
        x[0, 0, : n // 3] = float("nan")  # NaN in the padding only: ignored
        x[0, 1, n // 2], x[0, 1, -1] = float("nan"), float("nan")  # the first real NaN is the index
        x[1, 0, n // 3 :] = float("-inf")  # every real value -inf: the first real position
        x[1, 0, : n // 3] = float("-inf")
        avg, mx, idx = T.pool_stats(x, True, real)
        assert idx is not None
        assert not avg[0, 0].isnan() and not mx[0, 0].isnan(), f"padded NaN entered {shape}"
        assert mx[0, 1].isnan() and idx[0, 1] == n // 2, f"real NaN {shape}"
        assert mx[1, 0] == float("-inf") and idx[1, 0] == n // 3, f"-inf row {shape}"
        _, mx_len, idx_len = T.pool_stats(x.flip(2), True, torch.full((shape[0],), n - n // 3))
        assert idx_len is not None and not mx_len[0, 0].isnan() and idx_len[1, 0] == 0, f"lengths, NaN {shape}"
        count += 1
    return count


def check_padded_block(t: object) -> int:
    """The Triton backend (forward and hand-written backward) on padded batches, through the backend
    harness against the masked composite: lengths 1, L and ragged, general masks, many ties."""
    from cafusion import masking
    from tests import backend_harness as h
    from tests.parity import all_configs

    original_x = h.make_x

    def make_valid(case: Any, seed: int) -> Tensor | None:
        shape = h.SHAPES[case.rank]
        x = torch.empty(shape)
        if case.padding == "mask":
            gen = torch.Generator().manual_seed(seed)
            mask = torch.rand((shape[0], *shape[2:]), generator=gen) < 0.4
            mask.view(shape[0], -1)[:, -1] = True
            return masking.valid_mask(x, mask=mask)
        lengths = torch.tensor([1, shape[-1], shape[-1] // 2 + 1])[: shape[0]]
        return masking.valid_arg(x, lengths=lengths)  # the tensor itself for 1D, a mask for 2D/3D

    def make_x(case: Any, seed: int) -> Tensor:  # values in {-1, 0, 1}: ties everywhere
        return original_x(case, seed).round().clamp(-1, 1)

    h.make_valid, h.make_x = make_valid, make_x
    from cafusion.kernels.backends.triton import passes as T

    padded_calls = {"pool_stats": 0, "grad_input": 0}
    for name, arity in (("pool_stats", 3), ("grad_input", 6)):
        setattr(T, name, _counted_padded(getattr(T, name), padded_calls, name, arity))
    layouts, paddings, configs = ("contiguous", "channels_last", "strided"), ("lengths", "mask"), all_configs()
    selected = []
    for k, (rank, li, pi) in enumerate(itertools.product(h.SHAPES, range(3), range(2))):
        if _full() or (rank + li + pi) % 2 == 0:  # by default half: still every rank, layout and padding
            cfgs = configs[k % 16 :: 16] if _full() else configs[(5 * k) % 64 : (5 * k) % 64 + 1]
            selected += [h.Case(cfg, rank, layouts[li], torch.float32, paddings[pi]) for cfg in cfgs]
    failures = h.check("triton", selected)
    assert not failures, "\n".join(failures[:10])
    assert padded_calls == {"pool_stats": len(selected), "grad_input": len(selected)}, padded_calls  # in Triton
    return len(selected)


def _counted_padded(fn: Callable[..., Any], calls: dict[str, int], name: str, arity: int) -> Callable[..., Any]:
    """fn, counting the calls that hand it a padding (its last argument, ``valid``)."""

    def wrapper(*args: Any) -> Any:
        calls[name] += len(args) == arity and args[-1] is not None
        return fn(*args)

    return wrapper


def _full() -> bool:
    from tests.sweep import full_sweep

    return full_sweep()


def check_block(t: object) -> int:
    """The whole block through the op with its CPU key on the Triton backend, against the reference path."""
    from cafusion import ChannelAttentionFusionT
    from cafusion.kernels.backends import pytorch
    from cafusion.kernels.backends import triton as triton_backend
    from tests.triton_cpu import route_cpu_to_triton

    routed = route_cpu_to_triton()
    calls = {"forward": 0, "backward": 0}
    for name in calls:
        setattr(triton_backend, name, _counted(getattr(triton_backend, name), calls, name))
    passes_used = []
    original = pytorch.compose_forward

    def compose_forward(ops: object, *args: object, **kwargs: object) -> object:
        passes_used.append(ops)
        return original(ops, *args, **kwargs)  # type: ignore[arg-type]

    pytorch.compose_forward = compose_forward  # type: ignore[assignment]
    configs = [
        {"fusion": "softmax", "gate": "sigmoid", "act": "relu"},
        {"fusion": "sum", "gate": "hardsigmoid", "act": "silu", "learnable_temperature": True, "temperature": 0.7},
    ]
    shapes = [(2, 8, 5, 3), (3, 8, 11), (1, 8, 40, 40)]  # 4-D, rank 3, and a split reduction
    # Padded batches through the op and its autograd: lengths of a (B, C, L) x, and a mask of a 4-D map.
    mask = torch.arange(15).view(1, 5, 3) % torch.tensor([2, 3]).view(2, 1, 1) == 1  # position 0 is padding
    padded = {(3, 8, 11): {"lengths": torch.tensor([1, 11, 6])}, (2, 8, 5, 3): {"mask": mask}}
    count = 0
    for cfg in configs:
        for shape in shapes:
            for channels_last in (False, True) if len(shape) == 4 else (False,):
                for padding in ({}, padded[shape]) if shape in padded and not channels_last else ({},):
                    count += _check_block_case(ChannelAttentionFusionT, cfg, shape, channels_last, padding, count)
    assert calls["forward"] == calls["backward"] == count, calls  # every fast step ran on the Triton backend
    from cafusion.kernels.backends.triton import passes as triton_passes

    assert passes_used and all(ops is triton_passes for ops in passes_used)  # with the Triton passes
    del routed
    return count


def _check_block_case(
    cls: Any, cfg: dict[str, Any], shape: tuple[int, ...], channels_last: bool, padding: dict[str, Tensor], seed: int
) -> int:
    """One fast step (forward, backward) against impl="reference": outputs, y's layout, every gradient."""
    torch.manual_seed(seed)
    ref = cls(8, reduction=2, impl="reference", **cfg)
    fast = cls(8, reduction=2, impl="fast", **cfg)
    fast.load_state_dict(ref.state_dict())
    x = torch.randint(-3, 4, shape).float() + 0.1 * torch.randn(shape).round()  # many ties
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    what = f"{cfg} {shape} channels_last={channels_last} padding={list(padding)}"
    outs, grads = [], []
    for m in (ref, fast):
        xi = x.clone().requires_grad_(True)
        y, ca = m(xi, **padding)[:2]
        (y * torch.linspace(-1, 1, y.numel()).view(y.shape)).sum().backward()
        outs.append((y, ca))
        grads.append([xi.grad, *(p.grad for p in m.parameters())])
    for a, b in zip(outs[0], outs[1], strict=True):
        _close(b, a, f"output {what}", rtol=1e-5, atol=1e-6)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert outs[1][0].is_contiguous(memory_format=fmt), f"y layout {what}"
    for a, b in zip(grads[0], grads[1], strict=True):
        assert a is not None and b is not None, what
        _close(b, a, f"gradient {what}", rtol=1e-5, atol=1e-5)
    return 1


def _counted(fn: Callable[..., Any], calls: dict[str, int], name: str) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[name] += 1
        return fn(*args, **kwargs)

    return wrapper


def check_gpu_check_script(t: object) -> int:
    """scripts/gpu_check.py --dry-run: every code path of the GPU script, on the interpreter."""
    import importlib.util
    import json
    import tempfile

    path = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    assert spec is not None and spec.loader is not None
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    with tempfile.TemporaryDirectory() as out:
        rc = gpu_check.main(["--dry-run", "--skip-checks", "--reps", "1", "--out", out])
        report = json.loads((Path(out) / "gpu_check.json").read_text())
    assert rc == 0, rc
    rows = report["bench"]
    assert len(rows) == len(gpu_check.DRY_SHAPES) * 4, len(rows)  # 2 dtypes x 2 layouts
    for row in rows:
        for key in ("copy_ms", "ours_fwd_ms", "ours_step_ms", "ours_fwd_floor_x", "ours_step_GBps"):
            assert row[key] > 0, (key, row)
    return len(rows)


CHECKS: dict[str, Callable[[object], int]] = {
    "gpu_check": check_gpu_check_script,
    "block": check_block,
    "pool_stats": check_pool_stats,
    "scale": check_scale,
    "grad_ca": check_grad_ca,
    "grad_input": check_grad_input,
    "edges": check_edges,
    "padded": check_padded,
    "padded_block": check_padded_block,
}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tests.triton_cpu` when run by hand
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("set TRITON_INTERPRET=1: these checks run the kernels on the CPU interpreter")
    torch.manual_seed(0)
    for name in sys.argv[1:] or list(CHECKS):
        n_cases = CHECKS[name](None)
        print(f"checked {name}: {n_cases} cases")
