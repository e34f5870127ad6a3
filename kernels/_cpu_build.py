"""Compiled CPU kernels: C sources in ``kernels/csrc/``, built at first use, loaded with ctypes.

Why C and not more PyTorch ops: some chains are memory-bandwidth bound on CPU (GDFN's
depthwise 3x3 + GELU gate moves ~5 tensors of the hidden width per pixel through eager ops,
forward and backward); a loop over pixels that keeps the intermediate values in registers
and cache is the only way to fuse them here. ``torch.compile`` (inductor) was measured on the
same chain and was 3.5x *slower* than eager (it materialises the backward's shifted sums).

Build: the system C compiler (``$CC``, else ``cc``, ``gcc``, ``clang``) with
``-O3 -march=native -ffp-contract=fast -fopenmp`` into ``$IRBLOCKS_CACHE_DIR`` (default
``$XDG_CACHE_HOME/irblocks`` or ``~/.cache/irblocks``) under a name keyed by the source
(and the shared headers in csrc/),
the compiler's version and the flags, so a changed source or compiler rebuilds and
concurrent processes never see a half-written library (each writes its own temporary file
and renames it). ``-march=native`` is right because the library is built on the machine
that runs it. ``-ffp-contract=fast`` lets a * b + c become one fused multiply-add (``-std=c11``
turns contraction off; GCC's GNU modes have it on): the convolutions' tap sums are chains of
them. Measured: the GDFN gate 12-25% faster forward and backward with the data in cache,
whole training step 3.1% faster (AnyIR) and 2.6% (Restormer), interleaved in one process;
results stay within the kernels' tested tolerances (an FMA rounds once instead of twice).
The library links the OpenMP runtime torch loaded (``torch/lib/libgomp*``
when the wheel ships one): one thread pool, sized per call with ``torch.get_num_threads()``.

When no compiler (or no OpenMP) is available, :func:`load` returns ``None`` and
:func:`unavailable` says why; the dispatcher then runs the PyTorch reference
(``_dispatch.select``).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from ._dispatch import out_format

__all__ = ["CACHE_ENV", "SOURCES", "load", "unavailable", "cache_dir", "library", "applies",
           "address", "check_status"]

CACHE_ENV = "IRBLOCKS_CACHE_DIR"
SOURCES = Path(__file__).parent / "csrc"
FLAGS = ("-std=c11", "-O3", "-march=native", "-mprefer-vector-width=512", "-ffp-contract=fast",
         "-fPIC", "-shared",
         "-fopenmp", "-Wall", "-Wno-psabi")
BUILD_TIMEOUT_S = 300
_REASONS: dict[str, str] = {}


def cache_dir() -> Path:
    """Where built libraries live: $IRBLOCKS_CACHE_DIR, else $XDG_CACHE_HOME/irblocks, else
    ~/.cache/irblocks."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "irblocks"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _torch_openmp() -> list[str]:
    """Link flags that bind the library to the OpenMP runtime bundled with torch, if any."""
    lib = Path(torch.__file__).parent / "lib"
    found = sorted(lib.glob("libgomp*.so*"))
    if not found:
        return []
    return [f"-L{lib}", f"-l:{found[0].name}", f"-Wl,-rpath,{lib}"]


def _version(compiler: str) -> str:
    out = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.splitlines()[0] if out.stdout else ""


def _build(name: str) -> Path:
    """Compile csrc/<name>.c (if not cached) and return the library's path; raises
    RuntimeError with a one-line reason."""
    if sys.platform != "linux":
        raise RuntimeError(f"compiled CPU kernels are built on Linux only (this is {sys.platform})")
    source = SOURCES / f"{name}.c"
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found ($CC, cc, gcc or clang)")
    link = _torch_openmp()
    command_tail = [*FLAGS, *link]
    headers = b"".join(h.read_bytes() for h in sorted(SOURCES.glob("*.h")))
    key = hashlib.sha256(source.read_bytes() + headers + "\0".join(
        [compiler, _version(compiler), *command_tail]).encode()).hexdigest()[:16]
    target = cache_dir() / "cpu_kernels" / f"{name}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([compiler, str(source), "-o", tmp, *command_tail],
                              capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if done.returncode != 0:
            first = next((line for line in done.stderr.splitlines() if "error" in line),
                         done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "")
            raise RuntimeError(f"{Path(compiler).name} failed on {source.name}: {first[:200]}")
        os.replace(tmp, target)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{Path(compiler).name} took over {BUILD_TIMEOUT_S} s on "
                           f"{source.name}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.lru_cache(maxsize=None)
def load(name: str) -> ctypes.CDLL | None:
    """The built library for csrc/<name>.c, or ``None`` (reason in :func:`unavailable`)."""
    try:
        return ctypes.CDLL(str(_build(name)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        _REASONS[name] = str(e).splitlines()[0] if str(e) else type(e).__name__
        return None


def unavailable(name: str) -> str | None:
    """Why csrc/<name>.c could not be built or loaded (``None`` when it was, or not tried)."""
    return _REASONS.get(name)


def library(name: str, signatures: dict[str, list]) -> ctypes.CDLL:
    """The built csrc/<name>.c with its entry points typed (``signatures``: function name ->
    ctypes argument types; every entry point returns an int status). Raises RuntimeError
    when it is unavailable (the dispatcher checked; only a cache wiped meanwhile lands here)."""
    lib = load(name)
    if lib is None:
        raise RuntimeError(f"C kernels {name!r} unavailable: {unavailable(name)}")
    if not getattr(lib, "_irblocks_typed", False):
        for function, argtypes in signatures.items():
            fn = getattr(lib, function)
            fn.argtypes, fn.restype = argtypes, ctypes.c_int
        lib._irblocks_typed = True
    return lib


def _is_functorch_wrapped(t: torch.Tensor) -> bool:
    check = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return bool(check(t)) if check is not None else False


def applies(feature: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """Whether a C kernel can run on these arguments (``None`` entries ignored): ``feature`` a
    (B, C, H, W) map with channels as its fastest axis (the C kernels write channels_last
    outputs; an NCHW input keeps the reference, so outputs follow the input's layout as
    everywhere else), all float32 CPU tensors, not traced by torch.compile, not wrapped by
    torch.func, no autocast."""
    present = [feature] + [t for t in others if t is not None]
    # layout last: torch.func's wrappers cannot answer memory-format queries
    return (not torch.compiler.is_compiling()
            and not any(_is_functorch_wrapped(t) for t in present)
            and not torch.is_autocast_enabled("cpu")
            and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in present)
            and feature.dim() == 4 and out_format(feature) == torch.channels_last)


def address(t: torch.Tensor | None) -> int | None:
    """A tensor's data pointer for ctypes (``None`` -> NULL). Keep the tensor referenced until
    the call returns: a temporary passed as ``address(x.contiguous())`` is freed first."""
    return None if t is None else t.data_ptr()


def check_status(status: int, kernel: str, what: str) -> None:
    if status:
        raise MemoryError(f"{kernel}: could not allocate the {what}'s work buffers")
