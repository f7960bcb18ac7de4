"""The fused LSTM's per-step gate math in C (`csrc/lstm_steps.c`), compiled on first use.

The fused LSTM (`longshort.fused_lstm`) runs a step as one torch matmul plus its gate math.
Where this module can build the C version of the gate math, the fused LSTM calls it (through
ctypes) instead of seven torch ops forward and four backward: at small batches those ops'
dispatch, not their arithmetic, is most of a step.

Building. The first process that needs it compiles the source with the C compiler (`$CC`, else
`cc`) into `$LONGSHORT_CACHE` (default `~/.cache/longshort`), under a name that hashes the
source, the flags, the compiler and this CPU's feature flags (it is built with
`-march=native`); later processes load the file. Compiling takes a fraction of a second.

Where it cannot be built (no compiler, not glibc >= 2.35 on x86-64, whose vector exp and tanh
it needs to beat torch's ops), the fused LSTM keeps to torch ops: the same results, slower at
small batches. `status()` says which runs and why; `LONGSHORT_NATIVE=0` turns it off.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

logger = logging.getLogger("longshort")

SOURCE = Path(__file__).with_name("csrc") / "lstm_steps.c"
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fPIC", "-shared")
SUFFIXES = {torch.float32: "f32", torch.float64: "f64"}


@dataclass(frozen=True)
class StepKernels:
    """The C step functions for one dtype (signatures in csrc/lstm_steps.c)."""

    forward: Callable[..., None]  # (B, H, z, c_prev, h_prev, c, h, tanh_c, step_mask)
    backward: Callable[..., None]  # (B, H, gates, c_prev, tanh_c, dh, dh_prev, dc, dz, step_mask)


_library: Optional[ctypes.CDLL] = None
_failure: Optional[str] = None  # why the library could not be built or loaded; None: not tried yet, or built


def _cache_dir() -> Path:
    return Path(os.environ.get("LONGSHORT_CACHE", Path.home() / ".cache" / "longshort"))


def _cpu_flags() -> str:
    """This CPU's feature flags (what -march=native compiles for), so a cache shared between machines keeps one build per kind."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _build() -> ctypes.CDLL:
    """Compile (or find already compiled) and load the library; raises OSError, saying why, where it cannot."""
    compiler = os.environ.get("CC", "cc")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), compiler.encode(), _cpu_flags().encode()]))
    library = _cache_dir() / f"lstm_steps-{key.hexdigest()[:16]}.so"
    if not library.exists():
        try:
            library.parent.mkdir(parents=True, exist_ok=True)
            # Into a temporary name first, then renamed: processes that build at once never load a half-written file.
            handle, partial = tempfile.mkstemp(dir=library.parent, prefix=library.stem, suffix=".partial")
        except OSError as error:
            raise OSError(f"cannot write to the cache folder {library.parent} ({error.strerror}; LONGSHORT_CACHE sets another)") from None
        os.close(handle)
        try:
            result = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", partial, "-lm"], capture_output=True, text=True, timeout=120)
            if result.returncode != 0:
                raise OSError(f"{compiler} failed: {_first_error(result.stderr) or result.returncode}")
            os.replace(partial, library)
        except (subprocess.SubprocessError, FileNotFoundError) as error:
            raise OSError(f"could not run the C compiler {compiler!r} ({error})") from None
        finally:
            if os.path.exists(partial):
                os.remove(partial)
        logger.info("built the C gate math of the fused LSTM: %s", library)
    loaded = ctypes.CDLL(str(library))
    loaded.path = library  # for status()
    return loaded


def _first_error(stderr: str) -> str:
    """The compiler's first error line (its message, not the caret lines under it)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return next((line for line in lines if "error" in line), lines[0] if lines else "")


def _library_or_none() -> Optional[ctypes.CDLL]:
    global _library, _failure
    if _library is None and _failure is None:
        try:
            _library = _build()
        except OSError as error:
            _failure = str(error)
            logger.info("the fused LSTM runs its gate math with torch ops: %s", _failure)
    return _library


def enabled() -> bool:
    return os.environ.get("LONGSHORT_NATIVE", "1") != "0"


def step_kernels(dtype: torch.dtype) -> Optional[StepKernels]:
    """The C step functions for `dtype`, or None where they do not run (see `status`)."""
    suffix = SUFFIXES.get(dtype)
    library = _library_or_none() if enabled() and suffix is not None else None
    if library is None:
        return None
    forward, backward = getattr(library, f"lstm_forward_step_{suffix}"), getattr(library, f"lstm_backward_step_{suffix}")
    if forward.argtypes is None:  # every argument after B, H is a pointer (a tensor's data_ptr(), or None for no mask)
        forward.argtypes = [ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * 7
        backward.argtypes = [ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * 8
        forward.restype = backward.restype = None
    return StepKernels(forward, backward)


def status() -> str:
    """Which gate math the fused LSTM runs (in float32 and float64), and why."""
    if not enabled():
        return "torch ops: LONGSHORT_NATIVE=0"
    if _library_or_none() is None:
        return f"torch ops: the C version could not be built ({_failure})"
    return f"C ({_library.path})"
