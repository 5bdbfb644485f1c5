"""The C++ CPU kernels (``caft_cpu.cpp``): compiled on first use, cached, and optional.

They are built with ``torch.utils.cpp_extension.load`` against the installed torch, for this machine's
CPU (``-march=native``), into ``~/.cache/cafusion/native`` (``CAFUSION_NATIVE_DIR``). The build's name
covers the sources, the flags, the torch version, the CPU and the checkout's path, so an upgrade or
another machine rebuilds instead of loading a stale or illegal binary. Building takes about 30-60 s
once; ``cafusion build-native`` does it ahead of time. Later processes import the built file directly.

Without a C++ compiler or ninja, or with ``CAFUSION_NATIVE=0``, ``library()`` is None and the fast
path runs its PyTorch primitives (``kernels/cpu.py``): the same results, only slower. A failed build
warns once and never raises into the model.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from cafusion._dtypes import FLOAT_DTYPES

_DIR = Path(__file__).parent
_SOURCE = _DIR / "caft_cpu.cpp"  # includes the headers beside it
_CFLAGS = ["-O3", "-march=native", "-fopenmp"]
_LDFLAGS = ["-fopenmp"]
_MAX_N = 2**31 - 1  # lane indices are int32
ENV = "CAFUSION_NATIVE"
CACHE_ENV = "CAFUSION_CPU_CACHE_MB"
DIR_ENV = "CAFUSION_NATIVE_DIR"

log = logging.getLogger(__name__)


def enabled() -> bool:
    """False when the user switched the native kernels off (``CAFUSION_NATIVE=0``)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _cpu_id() -> str:
    """What ``-march=native`` compiles for: the CPU's feature flags (Linux), else the platform string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
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


def build(verbose: bool = False) -> ModuleType:
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
    log.info("cafusion: compiling the native CPU kernels into %s (once, ~30-60 s)", folder)
    folder.mkdir(parents=True, exist_ok=True)
    module: ModuleType = load(
        name=folder.name,
        sources=[str(_SOURCE)],
        extra_cflags=_CFLAGS,
        extra_ldflags=_LDFLAGS,
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
    """The compiled kernels, or None when switched off or not buildable here (warned once)."""
    if not enabled():
        return None
    try:
        lib = build()
    except Exception as exc:  # no compiler, no ninja, a failing build: the PyTorch path still works
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        warnings.warn(
            f"cafusion: the native CPU kernels could not be built ({first}); the fast path uses its PyTorch "
            f"primitives instead (set {ENV}=0 to skip the attempt)",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    mib = os.environ.get(CACHE_ENV)
    if mib is not None:
        lib.cache_set_limit(int(float(mib) * 2**20))
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


def layout_ok(t3: Tensor) -> bool:
    """Whether the kernels take this (B, C, N) view: unit stride along N, or dense channels_last."""
    b, c, n = t3.shape
    if n > _MAX_N:
        return False
    if _rows(t3):
        return True
    return t3.stride(1) == 1 and t3.stride(2) == c and (b == 1 or t3.stride(0) == c * n)


def for_tensor(x3: Tensor) -> ModuleType | None:
    """The kernels if they apply to ``x3`` (a CPU float tensor in a layout they take), else None."""
    if not x3.is_cpu or x3.dtype not in FLOAT_DTYPES or not layout_ok(x3):
        return None
    return library()


def like(dy: Tensor, x: Tensor) -> Tensor:
    """dy in a layout the kernels take together with x, both (B, C, *spatial). Autograd may hand over
    any strides: an expanded scalar for ``y.sum().backward()``, a contiguous gradient for channels_last y.
    Usually dy has y's strides, which are x's."""
    if dy.stride() == x.stride():
        return dy
    dy3, x3 = dy.flatten(2), x.flatten(2)
    if layout_ok(dy3) and _rows(dy3) == _rows(x3):
        return dy
    return torch.empty_like(x).copy_(dy)


def _rows(t3: Tensor) -> bool:
    """The kernels' row layout (unit stride along N), as opposed to channels_last."""
    return t3.stride(2) == 1 or t3.shape[2] == 1
