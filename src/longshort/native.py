"""The fused kernels' loops over time in C (`csrc/rnn_loops.c`), compiled on first use.

The fused kernels (`longshort.fused_lstm`, `fused_gru`, `fused_simple_rnn`,
`fused_lstm_variants`) run a step as one matmul plus its gate math. With torch ops that is a matmul and a few small ops (the LSTM's: seven
forward, four backward), each dispatched from Python: at small batches the dispatch, not the
arithmetic, is most of a step. Where this module can build the C version, the kernels call it
(through ctypes) once for the whole forward loop and once for the backward: each step there is
a call of torch's own BLAS gemm (MKL's `sgemm_` / `dgemm_`, found in libtorch_cpu, its address
handed to C), or on up to 3 rows matrix-vector products of the C file's own, and one pass of
gate math. Where `threads_for` gives more than one, each of torch's threads runs its share of the batch's
rows through the whole loop (the rows of a recurrence never meet), its gemm on that thread alone.
A batch of one row cannot be shared out, and a few rows stream the whole weight from cache for
little arithmetic: up to SMALL_BATCH rows, from a recurrent weight of SPLIT_PRODUCT elements on,
the threads split each step's matrix-vector product instead (`splits_products`), each computing
a part of it, and `forward_weight` lays the weight out for them. So do they from more than
SMALL_BATCH rows a thread up to SPLIT_BATCH rows, each a gemm on a part of the outputs.

Building. The first process that needs it compiles the source with the C compiler (`$CC`, else
`cc`) into `$LONGSHORT_CACHE` (default `~/.cache/longshort`), under a name that hashes the
source, the flags, the compiler and this CPU's feature flags (it is built with
`-march=native`); later processes load the file. Compiling takes 2.5 to 4 s for rnn_loops.c
(gcc 12 on this 2-core host) and under 1 for step_loops.c.
The compiled path's loops over time (csrc/step_loops.c, `step_loops_library()`) are built the
same way, into a library of their own.

Where it cannot be built (no compiler, not glibc >= 2.35 on x86-64, whose vector exp and tanh
it needs to beat torch's ops) or torch's library exports no gemm, the kernels keep to torch ops:
the same results, slower at small batches. `status()` says which runs and why;
`LONGSHORT_NATIVE=0` turns it off.
"""

from __future__ import annotations

import ctypes
import functools
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

CSRC = Path(__file__).with_name("csrc")  # the C sources, and the headers they include
SOURCE = CSRC / "rnn_loops.c"
STEP_LOOPS_SOURCE = SOURCE.with_name("step_loops.c")  # the compiled path's loops over time (`compiled_loops`), built the same way
SMALL_BATCH = 3  # up to this batch the C loops do a step's products as matrix-vector ones of their own (rnn_loops.c)
# From a recurrent weight of this many elements on, the threads split each step's products at
# batches up to SMALL_BATCH (`splits_products`; rnn_loops.c, Threads). An LSTM's loops at B=1,
# T=100, one thread / split between two, us a step (built with the split from any size): at H=128
# (2^16) 4.1 / 6.4 forward, 3.5 / 5.4 backward; H=160 7.8 / 8.1 and 7.5 / 6.8; H=192 (1.1 x 2^17)
# 9.3 / 6.9 and 8.9 / 5.4; H=256 (2^18) 19.2 / 13.0 and 19.5 / 13.1. (A busy host can undo it: in
# one run minutes earlier the split lost even at H=256, 21.6 against 19.0 forward.)
SPLIT_PRODUCT = 1 << 17
# Beyond SMALL_BATCH rows a thread, a thread's own rows' product is a gemm of a few rows that
# streams the whole weight as well: from there up to SPLIT_BATCH rows the threads split each
# step's product too (each a gemm on a part of the outputs, for all rows). Side by side, a fused
# LSTM training step, split / each its own rows: B=8 0.83-0.92 (H=256), 0.78-0.86 (H=512);
# B=12 0.78-0.90; B=24, 32 0.89-0.94; the GRU, LayerNormLSTM and SimpleRNN at B=8 0.80-0.83. At
# B=4-6 (up to 3 rows a thread, matrix-vector products) splitting lost or tied (0.99-1.16);
# beyond 32 it made no difference (0.95-1.08, the noise of the host).
SPLIT_BATCH = 32
# From this many steps on, a forward loop whose threads do not split the products takes a copy of
# W^T row-major (`forward_weight`); a shorter one takes W as it is. The copy costs 33 us at H=64,
# 124 at H=128, 203 at H=180 (an LSTM's W_hh), a few us a step saved. A fused LSTM's forward (no
# grad), uncopied / copied, 41 interleaved rounds: T=1 0.57-0.83 (B=1, 2, 8; H=64, 128, 180), T=4
# 0.66-0.94, T=16 0.79-0.89, T=64 0.94-1.10 (H=64 0.94-1.00, H=128 0.95-0.97, H=180 1.01-1.10).
TRANSPOSED_FROM_STEPS = 64
# -O2 with -O3's vectorizer (-ftree-vectorize for gcc before 12, whose -O2 has none; the cost model
# -O3 uses): the loops run as fast as at -O3 (side by side, every fused kernel's training step at
# B=1, 2, 32 and H=64, 256: 0.97-1.05 of -O3's time; the compiled path's 0.95-1.02) and
# rnn_loops.c compiles in 4 s instead of 11-17 (gcc 12; plain -O2: 2.5 s, but 1.2-2.3x slower
# loops, its cheap cost model leaving the gate math unvectorized).
FLAGS = ("-O2", "-ftree-vectorize", "-fvect-cost-model=dynamic", "-march=native", "-fno-math-errno", "-fopenmp",
         "-fPIC", "-shared", f"-DSMALL_BATCH={SMALL_BATCH}")
SUFFIXES = {torch.float32: "f32", torch.float64: "f64"}


@dataclass(frozen=True)
class LoopKernels:
    """The C loops of one dtype (their signatures and equations: csrc/rnn_loops.c) and the gemm
    they call. Arguments: T, B, H, then the buffers' addresses (a tensor's data_ptr(), None for
    no mask), whether the weight is stored transposed, `gemm`, the threads to split the batch
    between and whether they split the products (`loop_threads`)."""

    lstm_forward: Callable[..., None]  # z_all, h_all, c_all, tanh_c_all, masks, recurrent_mask, buffer, w
    lstm_backward: Callable[..., None]  # z_all, c_all, tanh_c_all, dh_outs, dc, dz_all, masks, recurrent_mask, buffer, w
    gru_forward: Callable[..., None]  # rzq_all, n_all, h_all, recurrent_mask, buffer, w
    gru_backward: Callable[..., None]  # rzq_all, n_all, h_all, dq_all, da_n_all, dh_all, recurrent_mask, buffer, w
    simple_rnn_forward: Callable[..., None]  # h_all, masks, relu (a flag), recurrent_mask, buffer, w
    simple_rnn_backward: Callable[..., None]  # da_all, dh_all, masks, recurrent_mask, buffer, w
    lstm_variant_forward: Callable[..., None]  # see fused_lstm_variants._forward_steps_in_c
    lstm_variant_backward: Callable[..., None]  # see fused_lstm_variants._backward_steps_in_c
    gemm: int  # the address of torch's BLAS gemm for this dtype


SIGNATURES = {  # after T, B, H: p a pointer, i an int64; every loop ends with w_transposed (i), gemm (p), threads (i) and split (i)
    "lstm_forward": "pppppppp", "lstm_backward": "pppppppppp", "gru_forward": "pppppp",
    "gru_backward": "ppppppppp", "simple_rnn_forward": "ppippp", "simple_rnn_backward": "pppppp",
    "lstm_variant_forward": "p" * 13 + "pipi" + "pppp", "lstm_variant_backward": "p" * 14 + "ppi" + "ppi" + "ppp",
}
# Even one row a thread pays: side by side, a fused LSTM training step at B=2, H=256 took 6.8 ms
# split and 9.3 on one thread; at B=4, 14.5 and 19.9 (2.1 and 2.4 at H=64).
ROWS_PER_THREAD = 1
GEMMS = {torch.float32: "sgemm_", torch.float64: "dgemm_"}  # Fortran BLAS names, as MKL exports them from libtorch_cpu


_built: dict[Path, ctypes.CDLL] = {}  # source -> its library, once built or found
_failures: dict[Path, str] = {}  # source -> why its library could not be built or loaded


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


def _build(source_path: Path) -> ctypes.CDLL:
    """Compile (or find already compiled) and load the library of `source_path`; raises OSError, saying why, where it cannot."""
    compiler = os.environ.get("CC", "cc")
    source = source_path.read_bytes()
    headers = [header.read_bytes() for header in sorted(CSRC.glob("*.h"))]  # what the C files include
    key = hashlib.sha256(b"\0".join([source, *headers, " ".join(FLAGS).encode(), compiler.encode(), _cpu_flags().encode()]))
    library = _cache_dir() / f"{source_path.stem}-{key.hexdigest()[:16]}.so"
    if not library.exists():
        try:
            library.parent.mkdir(parents=True, exist_ok=True)
            # Into a temporary name first, then renamed: processes that build at once never load a half-written file.
            handle, partial = tempfile.mkstemp(dir=library.parent, prefix=library.stem, suffix=".partial")
        except OSError as error:
            raise OSError(f"cannot write to the cache folder {library.parent} ({error.strerror}; LONGSHORT_CACHE sets another)") from None
        os.close(handle)
        try:
            result = subprocess.run([compiler, *FLAGS, f"-I{CSRC}", str(source_path), "-o", partial, "-lm"], capture_output=True, text=True, timeout=120)
            if result.returncode != 0:
                raise OSError(f"{compiler} failed: {_first_error(result.stderr) or result.returncode}")
            os.replace(partial, library)
        except (subprocess.SubprocessError, FileNotFoundError) as error:
            raise OSError(f"could not run the C compiler {compiler!r} ({error})") from None
        finally:
            if os.path.exists(partial):
                os.remove(partial)
        logger.info("built %s: %s", source_path.name, library)
    loaded = ctypes.CDLL(str(library))
    loaded.path = library  # for status()
    return loaded


def _first_error(stderr: str) -> str:
    """The compiler's first error line (its message, not the caret lines under it)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return next((line for line in lines if "error" in line), lines[0] if lines else "")


def _library_or_none(source: Optional[Path] = None) -> Optional[ctypes.CDLL]:
    """The library of `source` (default: the fused kernels' loops, SOURCE), built on first use; None
    where it cannot be (why: `_failures[source]`)."""
    source = source or SOURCE
    if source not in _built and source not in _failures:
        try:
            _built[source] = _build(source)
        except OSError as error:
            _failures[source] = str(error)
            logger.info("%s could not be built: %s", source.name, error)
    return _built.get(source)


def step_loops_library() -> ctypes.CDLL:
    """The compiled path's loops over time (csrc/step_loops.c); OSError, saying why, where it cannot
    be built. (LONGSHORT_NATIVE=0 is for the fused kernels; `compiled.STEP_LOOPS_IN_C` turns these off.)"""
    library = _library_or_none(STEP_LOOPS_SOURCE)
    if library is None:
        raise OSError(_failures[STEP_LOOPS_SOURCE])
    if library.forward_steps.restype is not None:  # ctypes' default (int) until the signatures are set, once
        addresses, sizes, mask, count = ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int64), ctypes.c_void_p, ctypes.c_int64
        # program, length, T, base, stride, mask, B, leaves, state (cotangent), its stride, its bytes, gemm
        arguments = [sizes, count, count, addresses, sizes, mask, count, count, addresses, sizes, sizes, addresses]
        library.forward_steps.argtypes, library.backward_steps.argtypes = arguments, [*arguments, addresses]  # backward: + passed
        library.forward_steps.restype = library.backward_steps.restype = None
    return library


def enabled() -> bool:
    return os.environ.get("LONGSHORT_NATIVE", "1") != "0"


@functools.lru_cache(maxsize=None)
def gemm_address(dtype: torch.dtype) -> Optional[int]:
    """The address of torch's own BLAS gemm for `dtype` (MKL's, in libtorch_cpu), or None where it exports none."""
    try:
        blas = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        return ctypes.cast(getattr(blas, GEMMS[dtype]), ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None


def loop_kernels(dtype: torch.dtype) -> Optional[LoopKernels]:
    """The C loops for `dtype`, or None where they do not run (see `status`)."""
    suffix = SUFFIXES.get(dtype)
    library = _library_or_none() if enabled() and suffix is not None else None
    gemm = gemm_address(dtype) if library is not None else None
    return None if gemm is None else _kernels(library, suffix, gemm)


@functools.lru_cache(maxsize=None)
def _kernels(library: ctypes.CDLL, suffix: str, gemm: int) -> LoopKernels:
    """The loops of one build of the library, made once (every fused call asks for them)."""
    types = {"p": ctypes.c_void_p, "i": ctypes.c_int64}
    loops = {}
    for name, signature in SIGNATURES.items():
        loop = getattr(library, f"{name}_loop_{suffix}")
        loop.argtypes = [types[kind] for kind in "iii" + signature + "ipii"]
        loop.restype = None
        loops[name] = loop
    return LoopKernels(**loops, gemm=gemm)


def splits_products(batch: int, weight: torch.Tensor) -> bool:
    """Whether the C loops' threads split each step's product with the recurrent `weight` (G, K)
    at a batch of `batch` rows, rather than each doing its own rows' (rnn_loops.c, Threads): from
    SPLIT_PRODUCT elements of weight on, on more than one thread, up to SMALL_BATCH rows and from
    more than SMALL_BATCH rows a thread up to SPLIT_BATCH rows."""
    threads = torch.get_num_threads()
    if threads == 1 or weight.numel() < SPLIT_PRODUCT:
        return False
    return batch <= SMALL_BATCH or SMALL_BATCH * min(threads, batch) < batch <= SPLIT_BATCH


def threads_for(batch: int, weight: torch.Tensor) -> int:
    """The threads a C loop runs on: torch's intra-op threads (`torch.get_num_threads()`), each
    with at least ROWS_PER_THREAD rows of the batch; 1 is the caller alone. A batch of one row
    cannot be shared out: it gets them only where they split the products (`splits_products`)."""
    if batch == 1:
        return torch.get_num_threads() if splits_products(batch, weight) else 1
    return max(1, min(torch.get_num_threads(), batch // ROWS_PER_THREAD))


def loop_threads(batch: int, weight: torch.Tensor) -> tuple[int, int]:
    """A C loop's last two arguments at a batch of `batch` rows: its threads (`threads_for`) and
    whether they split the products (1 or 0, `splits_products`: the C loops take the decision
    from here, and a forward loop's `forward_weight` lays out the weight by the same value)."""
    return threads_for(batch, weight), int(splits_products(batch, weight))


def forward_weight(weight: torch.Tensor, split: int, steps: int) -> tuple[torch.Tensor, int]:
    """A recurrent weight W (G, K) laid out for a C forward loop of `steps` steps whose threads
    split the products or not (`split`, from `loop_threads`), with its flag (as `weight_layout`),
    copied where it is stored the other way. A step's z += W h is
    faster with W^T row-major (in the forward loop of an LSTM, T=100, per step: at B=1 3.6 us
    against 5.5 at H=128; at B=3 31 against 39 at H=256; at B=32 194 against 203), except where
    the threads split the products (`splits_products`): there each thread's outputs are rows of W
    (10.2 us against 12.2 at B=1, H=256). The copy of W^T costs about what it saves over
    TRANSPOSED_FROM_STEPS steps; a shorter loop takes W as the layer holds it, uncopied.
    The backward's dh += W^T dz takes W as the layer holds it: the same speed either way on one
    thread, and no copy."""
    if split:
        return weight_layout(weight.contiguous())
    if steps < TRANSPOSED_FROM_STEPS:
        return weight_layout(weight)
    return weight_layout(weight.T.contiguous().T)


def loops_for(x: torch.Tensor) -> Optional[LoopKernels]:
    """The C loops for a kernel working on tensors like x: its dtype's, on CPU; None elsewhere."""
    return loop_kernels(x.dtype) if x.device.type == "cpu" else None


def address(x: Optional[torch.Tensor]) -> Optional[int]:
    """A tensor's address for the C loops (None stays None)."""
    return None if x is None else x.data_ptr()


def weight_layout(weight: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A recurrent weight (G, K) as the C loops take it: memory holding it row-major (flag 0), or
    its transpose row-major (flag 1, as a contiguous copy of weight.T, viewed back, leaves it)."""
    if weight.is_contiguous():
        return weight, 0
    if weight.T.is_contiguous():
        return weight, 1
    return weight.contiguous(), 0


def status() -> str:
    """Which loops the fused kernels run (in float32 and float64): C or torch ops, and why."""
    if not enabled():
        return "torch ops: LONGSHORT_NATIVE=0"
    if _library_or_none() is None:
        return f"torch ops: the C version could not be built ({_failures[SOURCE]})"
    if gemm_address(torch.float32) is None:
        return f"torch ops: torch's library exports no BLAS gemm ({GEMMS[torch.float32]}) for the C loops to call"
    return f"C ({_built[SOURCE].path})"
