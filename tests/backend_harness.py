"""One harness for every implementation of the block's math: each backend against the reference composite.

A case is a configuration (the reference's 64 switch combinations: fusion, gate, act, bias, learnable
temperature, and whether fusion_w receives an upstream gradient, i.e. return_fusion_weights) x a rank
(1D, 2D, 3D) x a layout x a dtype. For each case the backend's forward and hand-written backward get
the same x, weights and random upstream gradients as ``cafusion.functional.composite`` differentiated
by autograd, and every output and gradient must match: 1e-10 in float64, 1e-5 in float32, bf16
rounding for bfloat16 x (float32 weights, as under autocast). The composite itself is checked against
the reference file (../shared/seed) in tests/test_parity.py, for every configuration.

Backends: "pytorch" and "native" call ``forward``/``backward`` of ``cafusion.kernels.backends.*``
directly; "op" runs the registered operator through the dispatcher (its autograd included, the C++
one on the CPU when the native kernels are built); "triton" runs the Triton kernels under
``TRITON_INTERPRET=1`` (this file executed as a script, since the interpreter must be set before
triton loads). Usage as a script: ``TRITON_INTERPRET=1 python tests/backend_harness.py triton [quick]``.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cafusion import ChannelAttentionFusionT, masking
from cafusion.functional import composite
from cafusion.kernels.contract import Options, Saved, Weights
from tests.parity import CONFIG_AXES, all_configs, config_id

SHAPES = {1: (3, 8, 7), 2: (2, 8, 3, 5), 3: (2, 8, 2, 3, 4)}
LAYOUTS = ("contiguous", "channels_last", "strided")
DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}
TOLERANCE = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2)}
NAMES = ("y", "ca", "fusion_w", "dx", *(f"d_{f}" for f in Weights._fields))

assert len(all_configs()) == 64 and list(CONFIG_AXES)[-1] == "return_fusion_weights"


class Case(NamedTuple):
    config: dict[str, Any]
    rank: int
    layout: str
    dtype: torch.dtype
    # "lengths": a valid prefix of the last dim, passed as lengths (as the block passes them: the (B,)
    # tensor itself for 1D, a mask for 2D/3D); "prefix_mask": the same padding as a boolean mask;
    # "mask": any real positions
    padding: str = "none"

    def id(self) -> str:
        name = f"{config_id(self.config)}-{self.rank}d-{self.layout}-{self.dtype}-{self.padding}"
        return name.replace("torch.", "")


def cases(rank: int, layout: str, dtype: torch.dtype, padding: str = "none") -> list[Case]:
    return [Case(cfg, rank, layout, dtype, padding) for cfg in all_configs()]


def make_valid(case: Case, seed: int) -> Tensor | None:
    """The padding argument the op takes for a padded case (``masking.valid_arg``: lengths (B,) for 1D
    lengths, else the (B, N) mask of real positions; every sample keeps at least one)."""
    if case.padding == "none":
        return None
    gen = torch.Generator().manual_seed(seed + 7)
    shape = SHAPES[case.rank]
    if case.padding in ("lengths", "prefix_mask"):
        lengths = torch.randint(1, shape[-1] + 1, (shape[0],), generator=gen)
        if case.padding == "prefix_mask":
            return masking.valid_mask(torch.empty(shape), lengths=lengths)
        return masking.valid_arg(torch.empty(shape), lengths=lengths)
    mask = torch.rand((shape[0], *shape[2:]), generator=gen) < 0.6
    mask.view(shape[0], -1)[:, 0] = True
    return masking.valid_mask(torch.empty(shape), mask=mask)


def make_x(case: Case, seed: int) -> Tensor:
    """Random x of the case's rank in the case's layout (channels last, or a strided slice of a bigger map)."""
    gen = torch.Generator().manual_seed(seed)
    shape = SHAPES[case.rank]
    if case.layout == "channels_last":  # C innermost: (B, *spatial, C) permuted to (B, C, *spatial)
        raw = torch.randn((shape[0], *shape[2:], shape[1]), generator=gen, dtype=torch.float64)
        x = raw.movedim(-1, 1)
    elif case.layout == "strided":  # every other position of a map twice as long in the last dim
        big = torch.randn((*shape[:-1], 2 * shape[-1]), generator=gen, dtype=torch.float64)
        x = big[..., ::2]
    else:
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
    x = x.to(case.dtype)
    assert x.shape == shape
    return x


def make_params(case: Case, seed: int) -> Weights:
    """The block's tensors for this configuration (weights in float64 for float64 x, else float32)."""
    torch.manual_seed(seed)
    cfg = {k: v for k, v in case.config.items() if k != "return_fusion_weights"}
    wdtype = torch.float64 if case.dtype == torch.float64 else torch.float32
    block = ChannelAttentionFusionT(SHAPES[case.rank][1], temperature=0.7, **cfg, dtype=wdtype)
    with torch.no_grad():  # non-trivial biases and router, so that every term matters
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))
    weights = [None if t is None else t.detach() for t in block._tensors()]
    return Weights(*weights, block.get_T().detach().clone())


def upstream(case: Case, y: Tensor, ca: Tensor, w: Tensor, seed: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """Random upstream gradients, rounded to the dtypes the backend's outputs have (x's for y and ca)."""
    gen = torch.Generator().manual_seed(seed + 1)

    def draw(t: Tensor, dtype: torch.dtype) -> Tensor:
        return torch.randn(t.shape, generator=gen, dtype=torch.float64).to(dtype).to(t.dtype)

    wdtype = torch.float64 if case.dtype == torch.float64 else torch.float32
    wants_w = case.config["fusion"] == "softmax" and case.config["return_fusion_weights"]
    return draw(y, case.dtype), draw(ca, case.dtype), draw(w, wdtype) if wants_w else None


def truth(case: Case, x: Tensor, p: Weights, seed: int, wide: torch.dtype | None = None) -> dict[str, Tensor | None]:
    """Outputs and gradients of the composite, by autograd (``wide``: in that dtype, on the same values)."""
    xs = x.detach().to(wide or x.dtype).requires_grad_(True)
    ps = [None if t is None else t.detach().to(wide or t.dtype).requires_grad_(True) for t in p]
    fusion, gate, act = case.config["fusion"], case.config["gate"], case.config["act"]
    if fusion == "sum":
        ps[4:8] = [None] * 4
    valid = masking.as_mask(make_valid(case, seed), x)  # the composite takes masks only
    y, ca, w = composite.channel_attention_fusion(xs, *ps[:4], fusion, *ps[4:8], ps[8], gate, act, valid)
    w = w if w is not None else y.new_empty((x.shape[0], 0), dtype=ca.dtype)
    gy, gca, gw = upstream(case, y, ca, w, seed)
    loss = (y.double() * gy.double()).sum() + (ca.double() * gca.double()).sum()
    if gw is not None:
        loss = loss + (w.double() * gw.double()).sum()
    wanted = [t for t in [xs, *ps] if t is not None]
    grads = iter(torch.autograd.grad(loss, wanted, allow_unused=True))
    found = [None if t is None else next(grads) for t in [xs, *ps]]
    return dict(zip(NAMES, [y, ca, w, *found], strict=True))


def _direct(backend: Any) -> Callable[[Case, Tensor, Weights, int], dict[str, Tensor | None]]:
    """A backend module's forward and hand-written backward, called directly."""

    def run(case: Case, x: Tensor, p: Weights, seed: int) -> dict[str, Tensor | None]:
        fusion, gate, act = case.config["fusion"], case.config["gate"], case.config["act"]
        if fusion == "sum":
            p = p._replace(r1_w=None, r1_b=None, r2_w=None, r2_b=None)
        valid = make_valid(case, seed)
        y, ca, w, avg, mx, idx = backend.forward(x, p, Options(fusion, gate, act), True, valid)
        gy, gca, gw = upstream(case, y, ca, w, seed)
        dx, *dp = backend.backward(gy, gca, gw, x, Saved(avg, mx, idx), p, Options(fusion, gate, act), True, valid)
        dp = [None if t is None else d for d, t in zip(dp, p, strict=True)]
        return dict(zip(NAMES, [y, ca, w, dx, *dp], strict=True))

    return run


def _through_op(case: Case, x: Tensor, p: Weights, seed: int) -> dict[str, Tensor | None]:
    """The registered operator through the dispatcher and autograd, as the block runs it."""
    from cafusion.kernels import op

    xs = x.detach().clone().requires_grad_(True)
    ps = Weights._make(None if t is None else t.detach().clone().requires_grad_(True) for t in p)
    fusion, gate, act = case.config["fusion"], case.config["gate"], case.config["act"]
    y, ca, w = op.run(xs, ps, Options(fusion, gate, act), make_valid(case, seed))
    w = w if w is not None else y.new_empty((x.shape[0], 0), dtype=ca.dtype)
    gy, gca, gw = upstream(case, y, ca, w, seed)
    outs, grads_out = [y, ca], [gy, gca]
    if gw is not None:
        outs.append(w)
        grads_out.append(gw)
    torch.autograd.backward(outs, grads_out)
    found = [t if t is None else t.grad for t in [xs, *ps]]
    if fusion == "sum":
        assert all(t is None or t.grad is None for t in ps[4:8]), "sum fusion must not touch the router"
    return dict(zip(NAMES, [y, ca, w, *found], strict=True))


def backend_runner(name: str) -> Callable[[Case, Tensor, Weights, int], dict[str, Tensor | None]]:
    if name == "pytorch":
        from cafusion.kernels.backends import pytorch

        return _direct(pytorch)
    if name == "native":
        from cafusion.kernels.backends import native

        if native.library() is None:
            raise RuntimeError("the native CPU kernels are not available (no compiler, or CAFUSION_NATIVE=0)")
        return _direct(native)
    if name == "triton":
        from cafusion.kernels.backends import triton

        return _direct(triton)
    if name == "op":
        return _through_op
    raise ValueError(f"unknown backend {name!r}")


def _bf16_dtype(name: str) -> torch.dtype:
    """What a backend returns for bfloat16 x and float32 weights: x's dtype for y, ca and dx, else float32."""
    return torch.bfloat16 if name in ("y", "ca", "dx") else torch.float32


def compare(
    case: Case, ours: dict[str, Tensor | None], ref: dict[str, Tensor | None], peer: dict[str, Tensor | None]
) -> list[str]:
    """Every mismatch, as 'name: message' lines (empty when the backend agrees).

    ``ref`` is exact (the composite in float64 for bfloat16 x); ``peer`` the composite in x's own dtype.
    A bfloat16 gradient is a sum of products rounded to bf16, with cancellation, in every implementation:
    there ours must be about as close to the exact value as the composite's own bf16 run (within twice
    its error, plus the tolerance).
    """
    rtol, atol = TOLERANCE[case.dtype]
    problems = []
    for name in NAMES:
        a, b = ours[name], ref[name]
        if b is None or (name == "fusion_w" and b.numel() == 0):
            if a is not None and a.numel() and name != "fusion_w":
                problems.append(f"{name}: expected no gradient, got one")
            continue
        if a is None:
            problems.append(f"{name}: missing")
            continue
        want = b.dtype if case.dtype != torch.bfloat16 else _bf16_dtype(name)
        if a.dtype != want or a.shape != b.shape:
            problems.append(f"{name}: {a.dtype} {tuple(a.shape)} instead of {want} {tuple(b.shape)}")
            continue
        scale = 1.0 if case.dtype != torch.float64 else max(1.0, b.double().abs().max().item())
        if case.dtype == torch.bfloat16 and name.startswith("d"):
            truth_, other = b.double(), peer[name]
            assert other is not None
            bound = 2 * (other.double() - truth_).abs() + atol + rtol * truth_.abs()
            excess = ((a.double() - truth_).abs() - bound).max().item() if truth_.numel() else 0.0
            if excess > 0:
                problems.append(f"{name}: further from the exact gradient than bf16 allows (excess {excess:.3g})")
            continue
        try:
            torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol * scale, equal_nan=True)
        except AssertionError as err:
            problems.append(f"{name}: {str(err).splitlines()[-1]}")
    return problems


def check(backend: str, selected: list[Case]) -> list[str]:
    """Run every case on one backend; returns the failures (case id and what differs)."""
    run = backend_runner(backend)
    failures = []
    for i, case in enumerate(selected):
        x, p = make_x(case, seed=i), make_params(case, seed=i)
        exact = truth(case, x, p, i, torch.float64 if case.dtype == torch.bfloat16 else None)
        peer = truth(case, x, p, i) if case.dtype == torch.bfloat16 else exact
        problems = compare(case, run(case, x, p, i), exact, peer)
        failures += [f"{backend} {case.id()}: {msg}" for msg in problems]
    return failures


def select(backend: str, quick: bool) -> list[Case]:
    """The cases a backend runs: all of them, or for the (slow) Triton interpreter every configuration at
    one rank/layout plus a sample of configurations at every rank x layout x dtype x padding.

    ``quick`` (make test) takes every 8th configuration at that rank/layout and one configuration per
    group elsewhere, a different one in each group (40 of the 64 configurations in all), and pads
    in float32 only (float64 is not a Triton dtype: those calls run the PyTorch passes, tested above).
    """
    if backend != "triton":
        groups = [*iter_groups(), *iter_padded_groups()]
        return [c for r, lay, d, *pad in groups for c in cases(r, lay, d, *pad)]
    configs = all_configs()
    full = cases(2, "contiguous", torch.float32)
    plain = list(itertools.product(SHAPES, LAYOUTS, (torch.float32, torch.bfloat16)))
    padded = [(r, lay, pad) for r, lay, d, pad in iter_padded_groups() if d == torch.float32 or not quick]
    if quick:
        sample = [Case(configs[(7 * g + 3) % 64], r, lay, d) for g, (r, lay, d) in enumerate(plain)]
        sample += [
            Case(configs[(7 * g + 5) % 64], r, lay, torch.float32, pad) for g, (r, lay, pad) in enumerate(padded)
        ]
        return full[::8] + sample
    sample = [Case(cfg, r, lay, d) for r, lay, d in plain for cfg in configs[::16]]
    sample += [Case(cfg, r, lay, d, pad) for r, lay, d, pad in iter_padded_groups() for cfg in configs[::16]]
    return full + sample


def iter_groups() -> Iterator[tuple[int, str, torch.dtype]]:
    yield from itertools.product(SHAPES, LAYOUTS, DTYPES.values())


def iter_padded_groups() -> Iterator[tuple[int, str, torch.dtype, str]]:
    """Padded batches: lengths (as lengths and as a mask) and general masks, every rank, contiguous and
    channels-last, float64/float32."""
    layouts = ("contiguous", "channels_last")
    paddings = ("lengths", "prefix_mask", "mask")
    yield from itertools.product(SHAPES, layouts, (torch.float64, torch.float32), paddings)


if __name__ == "__main__":  # the Triton backend under the interpreter (tests/test_backends.py runs this)
    name = sys.argv[1]
    chosen = select(name, quick="quick" in sys.argv[2:])
    fails = check(name, chosen)
    print("\n".join(fails[:20]))
    print(f"checked {len(chosen)} cases on {name}: {len(fails)} mismatches")
    sys.exit(1 if fails else 0)
