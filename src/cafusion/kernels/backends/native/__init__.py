"""The C++ CPU kernels (``caft_cpu.cpp``): compiled on first use, cached, and optional.

They are built with ``torch.utils.cpp_extension.load`` against the installed torch, for this machine's
CPU (``-march=native``), into ``~/.cache/cafusion/native`` (``CAFUSION_NATIVE_DIR``). The build's name
covers the sources, the flags, the torch version, the CPU and the checkout's path, so an upgrade or
another machine rebuilds instead of loading a stale or illegal binary. Building takes about 30-60 s
once; ``cafusion build-native`` does it ahead of time. Later processes import the built file directly.

Without a C++ compiler or ninja, or with ``CAFUSION_NATIVE=0``, ``library()`` is None and the fast
path runs its PyTorch backend (``kernels/backends/pytorch/``): the same results, only slower. A failed build
warns once and never raises into the model.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from cafusion.kernels.contract import Gradients, Options, Outputs, Saved, Weights

_DIR = Path(__file__).parent
_SOURCE = _DIR / "caft_cpu.cpp"  # includes the headers beside it
_CFLAGS = ["-O3", "-march=native", "-fopenmp"]
_LDFLAGS = ["-fopenmp"]
_MAX_N = 2**31 - 1  # lane indices are int32
ENV = "CAFUSION_NATIVE"
CACHE_ENV = "CAFUSION_CPU_CACHE_MB"
DIR_ENV = "CAFUSION_NATIVE_DIR"
GATHER_ENV = "CAFUSION_POOL_GATHERS"

log = logging.getLogger(__name__)


def _switched_off(value: str) -> bool:
    """How the environment switches here read: 0, false, no or off (any case) is off."""
    return value.strip().lower() in ("0", "false", "no", "off")


def enabled() -> bool:
    """False when the user switched the native kernels off (``CAFUSION_NATIVE=0``)."""
    return not _switched_off(os.environ.get(ENV, "1"))


def _cpu_id() -> str:
    """What ``-march=native`` compiles for: the CPU's feature flags (Linux), else the platform string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:  # no /proc (macOS, Windows): the platform string names the build instead
        pass
    return platform.processor() or platform.machine()


def build_name() -> str:
    """The extension's cache name: changes whenever the binary would (and per checkout, so that two
    copies of the sources never rebuild over each other's cache entry)."""
    code = [f.read_text() for f in sorted(_DIR.glob("*.[ch]*")) if f.suffix in (".cpp", ".h")]
    key = "\n".join([*code, " ".join(_CFLAGS + _LDFLAGS), torch.__version__, _cpu_id(), str(_DIR)])
    return "cafusion_cpu_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def build_dir() -> Path:
    """Where the build lives: ``$CAFUSION_NATIVE_DIR``, else ``~/.cache/cafusion/native``, one folder per build."""
    root = os.environ.get(DIR_ENV) or str(Path.home() / ".cache" / "cafusion" / "native")
    return Path(root) / build_name()


def build(verbose: bool = False, advice: bool = True) -> ModuleType:
    """Import the compiled extension, compiling it first if this build is not in the cache yet; raises
    when it cannot be built.

    A finished build is imported directly; torch's ``load`` (a lock file, a ninja run) is only used to
    compile, so processes that start together (torchrun workers) just import the same file.
    """
    folder = build_dir()
    built = folder / f"{folder.name}.so"
    if built.exists():
        return _import(folder.name, built)
    quiet = logging.getLogger("torch.utils.cpp_extension")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its import warns about CUDA_HOME on machines without CUDA: irrelevant here
    try:
        from torch.utils.cpp_extension import load
    finally:
        quiet.setLevel(level)
    _find_ninja()
    if shutil.which("ninja") is None:  # fail before announcing a compile that cannot start
        raise RuntimeError("Ninja is required to load C++ extensions")
    hint = f"; 'cafusion build-native' does it ahead of time, {ENV}=0 skips it" if advice else ""
    print(
        f"cafusion: compiling the C++ CPU kernels for this machine, once (about 30-60 s){hint}",
        file=sys.stderr,
        flush=True,
    )
    log.info("cafusion: building into %s", folder)
    folder.mkdir(parents=True, exist_ok=True)
    module: ModuleType = load(
        name=folder.name,
        sources=[str(_SOURCE)],
        extra_cflags=list(_CFLAGS),  # copies: torch appends to these lists, which would change build_name()
        extra_ldflags=list(_LDFLAGS),
        build_directory=str(folder),
        verbose=verbose,
    )
    return module


def _import(name: str, path: Path) -> ModuleType:
    """Import a compiled extension module from its file (what torch's ``load`` does once it is built)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the native CPU kernels from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


def _find_ninja() -> None:
    """torch runs ``ninja`` from PATH; the PyPI ``ninja`` package (the ``native`` extra) sits in the
    environment's bin folder, which is not on PATH when a venv's python is called directly."""
    if shutil.which("ninja") is not None:
        return
    try:
        import ninja  # type: ignore[import-untyped]
    except ImportError:
        return
    os.environ["PATH"] = str(ninja.BIN_DIR) + os.pathsep + os.environ.get("PATH", "")


@functools.cache
def library() -> ModuleType | None:
    """The compiled kernels, or None when switched off or not buildable here (warned once).

    Loading them registers their CPU kernels and CPU autograd on the op ``cafusion.kernels.op`` defines
    (an implementation may be registered before its schema; the kernels look the op up when first called).
    """
    if not enabled():
        return None
    from cafusion.kernels.double_backward import differentiable_backward

    try:
        lib = build()
    except Exception as exc:  # no compiler, no ninja, a failing build: the PyTorch path still works
        warnings.warn(
            f"cafusion: the C++ CPU kernels could not be built ({_build_error(exc)}); using the PyTorch path "
            f"instead (same results, slower); set {ENV}=0 to skip the attempt",
            RuntimeWarning,
            stacklevel=_caller_level(),
        )
        return None
    mib = os.environ.get(CACHE_ENV)
    if mib is not None:
        lib.cache_set_limit(int(float(mib) * 2**20))
    lib.set_double_backward(differentiable_backward)
    lib.set_gather_rows(choose_pool_variant(lib))
    return lib


# Row lengths at which the pool variants are compared: a 1D signal of 16 steps, 7x7, 14x14 and 28x28
# maps (~0.26-0.8M floats each).
_CALIBRATION = ((256, 64, 16), (64, 256, 49), (16, 256, 196), (4, 256, 784))
POOL_RECORD = "pool_variant.json"


def choose_pool_variant(lib: ModuleType) -> bool:
    """Whether short float32 rows pool faster through AVX-512 gathers than row by row on this CPU, and up
    to which row length (``lib.set_gather_max_n``): the one per-machine kernel choice, made here.

    No fixed choice is right everywhere (the gathers were 4.1x faster at 7x7 maps on an Intel Xeon VM
    with AVX-512 and slower at 14x14 on an AMD Zen 4 one), so it is measured once per build and machine
    (the build folder is per CPU) and remembered in ``pool_variant.json``: both variants pool rows of 16,
    49, 196 and 784 positions in alternation, and the gathers take rows up to the longest length from
    which down they won every comparison. Both variants add each row in the same order and keep the same first max, so
    the choice changes speed only, never a number (``tests/test_native.py``).
    ``CAFUSION_POOL_GATHERS=0/1`` overrides the measurement (1: every row up to 1024 positions).
    """
    forced = os.environ.get(GATHER_ENV)
    if forced is not None and forced.strip():
        on = not _switched_off(forced)
        lib.set_gather_max_n(1024 if on else 0)
        return on
    record = build_dir() / POOL_RECORD
    try:
        saved = json.loads(record.read_text())
        lib.set_gather_max_n(int(saved["gather_max_n"]))
        return bool(saved["gathers"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    limit, seconds = 0, {}
    lib.set_gather_max_n(1024)  # while measuring, the gathers take every row length they can
    for shape in _CALIBRATION:
        rows, gathered = _pool_seconds(lib, torch.randn(*shape))
        seconds[str(shape[2])] = {"rows": rows, "gathers": gathered}
        if gathered >= rows:
            break
        limit = shape[2]
    lib.set_gather_max_n(limit)
    with contextlib.suppress(OSError):
        record.write_text(json.dumps({"gathers": limit > 0, "gather_max_n": limit, "seconds": seconds}))
    return limit > 0


def _pool_seconds(lib: ModuleType, x3: Tensor) -> tuple[float, float]:
    """Median seconds of a training-mode pool_stats call (rows, gathers), the two timed in alternation."""
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(9):
        for gathers in (False, True):
            lib.set_gather_rows(gathers)
            start = time.perf_counter()
            lib.pool_stats(x3, True)
            times[gathers].append(time.perf_counter() - start)
    return statistics.median(times[False][1:]), statistics.median(times[True][1:])


def _build_error(exc: BaseException) -> str:
    """The compiler's first error line, not the ninja command line and build log torch's message holds."""
    text = str(exc)
    if "ninja is required" in text.lower():
        return "ninja is not installed: pip install 'cafusion[native]'"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line.lower() and not line.startswith("FAILED:")]
    first = (errors or lines or [type(exc).__name__])[0]
    return first if len(first) <= 200 else first[:197] + "..."


def _caller_level() -> int:
    """``warnings.warn`` stacklevel of the first frame outside cafusion and torch: the user's call."""
    package = next(p for p in Path(__file__).parents if p.name == "cafusion")
    inside = (str(package), str(Path(torch.__file__).parent))
    frame, level = sys._getframe(1), 1  # level 1 is library() itself, the caller of this helper
    while frame.f_back is not None and frame.f_code.co_filename.startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


def forward(x: Tensor, w: Weights, opts: Options, need_index: bool, valid: Tensor | None = None) -> Outputs:
    """The op's CPU forward in the compiled kernels (the schema's argument order)."""
    return Outputs._make(_loaded().forward(x, valid, *w, *opts, need_index))


def backward(
    dy: Tensor,
    g_ca: Tensor | None,
    g_w: Tensor | None,
    x: Tensor,
    saved: Saved,
    w: Weights,
    opts: Options,
    need_x: bool,
    valid: Tensor | None = None,
) -> Gradients:
    """The op's CPU backward in the compiled kernels (the schema's argument order)."""
    return Gradients._make(_loaded().backward(dy, g_ca, g_w, x, valid, *saved, *w, *opts, need_x))


def _loaded() -> ModuleType:
    lib = library()
    if lib is None:
        raise RuntimeError(f"the native CPU kernels are not available (no compiler, or {ENV}=0)")
    return lib


def set_cache_limit(nbytes: int) -> int:
    """Bound the cache of freed y/dx buffers (0 turns it off, default 1 GiB); returns the bytes it still holds.

    Fresh full-size outputs on the CPU pay page faults and kernel zeroing (about one copy's worth of
    time); the kernels keep freed output buffers for reuse, as PyTorch's CUDA allocator does. The
    cache only holds memory the block's outputs already used. ``CAFUSION_CPU_CACHE_MB`` sets the
    limit at load time.
    """
    lib = library()
    return 0 if lib is None else int(lib.cache_set_limit(int(nbytes)))


def cache_held() -> int:
    """Bytes of freed output buffers the cache holds now."""
    lib = library()
    return 0 if lib is None else int(lib.cache_held())


@contextlib.contextmanager
def cache_disabled() -> Iterator[None]:
    """Run without the output cache (memory measurements: every buffer then goes through torch's allocator)."""
    lib = library()
    if lib is None:
        yield
        return
    limit = int(lib.cache_limit())
    lib.cache_set_limit(0)
    try:
        yield
    finally:
        lib.cache_set_limit(limit)
