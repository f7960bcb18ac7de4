"""Which implementation of a recurrent layer runs, and why.

`RNN(cell)` (and so `LSTM`, `GRU`, `SimpleRNN`) runs a sequence by one of four paths,
all with the same parameters:

* "vendor": PyTorch's own kernel (`torch.lstm` / `torch.gru` / `torch.rnn_tanh|relu`,
  what `torch.nn.LSTM` calls; oneDNN on CPU). Only for the configurations it knows:
  default activations, no mask, no recurrent dropout.
* "fused": longshort's fused loop with a hand-written backward (`fused_*.py`): masks and
  recurrent dropout included, default activations.
* "compiled": any cell, your own included, with longshort's own backward-through-time and
  the step compiled by TorchInductor (`longshort.compiled`). Only when asked for: compiling
  takes seconds at the first call.
* "loop": the readable cell stepped by `RNN.run_loop`: anything, your own cells included.

A cell offers the first two by the optional methods `vendor_refusal(masked)` /
`fused_refusal(masked)` (None when it can run, else why not) and `run_vendor(x, state)` /
`run_fused(x, state, mask)`; the built-in cells have them, and refuse when a subclass
overrides their `recur`, whose math the kernels would not follow.

`implementation="auto"` takes the first path that can run the call, in the order the cell
prefers (`cell.preference`, by default vendor, fused, loop: the LSTM's; GRU and SimpleRNN put
fused first, because torch's CPU kernels for them are an autograd loop in C++, slower than the
fused ones in training and no faster in inference: see benchmarks/RESULTS.md, HISTORY.md), except that
the fused kernel comes first (`fused_first`) in a call autograd records (a backward pass can
follow), where the fused training step is the faster (short of VENDOR_FIRST_PRODUCT
multiply-adds in a step's recurrent product: from there on, both run at the machine's GEMM rate
and oneDNN's training step was as fast or faster), and in a call of up to
FUSED_FIRST_BATCH rows, where a step is a matrix-vector product, which the fused loops in C do
faster than oneDNN's call a step, forward only too; both where its loops run in C (float32 or
float64 on CPU, `longshort.native` built): with torch ops, or in bfloat16, oneDNN is the
faster. Naming one asks for it and raises if it cannot. `layer.dispatch(masked=..., batch=...,
backward=...)` says which path a call would take and why each other path was refused;
`layer.last_dispatch` is the decision of the last call.

Measured, where the order above is a guess. Where both the fused kernel and the vendor one can run
a call of more than FUSED_FIRST_BATCH rows, which is the faster depends on the CPU as much as on
the shape: on an AMD Zen 4 host (AVX-512) oneDNN's LSTM ran at the machine's matmul rate and its
training step at B=32, H=512 took 0.82x-0.85x the fused one's time, where on the Zen 3 host the
order above was measured on it took 0.9x to 1.1x (benchmarks/RESULTS.md, HISTORY.md). So "auto"
times the two there, once per layer and shape: at the first call of a shape (batch, steps, dtype,
mask or not, training or not, the cell unchanged) whose recurrent products hold at least
MEASURED_FROM_PRODUCT multiply-adds (B x T x weight_hh.numel()), it times each kernel
MEASURE_ROUNDS times in turn (`time_paths`), with the gradients of everything a backward would
reach when autograd records the call (taken by `torch.autograd.grad`: no `.grad` is touched), and
keeps the fused kernel where its median was FUSED_BY_AT_LEAST faster, else the vendor one
(`faster`). `last_dispatch.measured` holds the seconds it measured. The random state is put back
after the rehearsals, so dropout masks come out as without them; the outputs of the two kernels
agree to rounding, but not bit for bit, so for runs that repeat exactly set
`longshort.dispatch.measure = False` (the order above then decides, as in smaller calls), or name
the path.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple, Optional

from torch import Tensor, nn

from longshort import workspace

IMPLEMENTATIONS = ("auto", "vendor", "fused", "compiled", "loop")
PREFERENCE = ("vendor", "fused", "loop")  # the order "auto" tries unless the cell says otherwise; "compiled" runs only when named
# "auto" tries the fused kernel first in a call autograd records, and in a call of up to this
# batch. The fused LSTM's time / torch.nn.LSTM's (AMD EPYC, T=100, H=64 / 256 / 512, 9 to 11
# interleaved repeats): training at B=1 0.67 / 0.47 / 0.46, B=2 0.53 / 0.80 / 0.73, B=3 0.68 /
# 0.86 / 0.67, B=4 0.60 / 0.96 / 0.79, B=8 0.58 / 0.99 / 1.04, B=16 - / 0.98 / 0.93, B=32 0.70 /
# 0.72 / 0.77, B=128 0.48 / 0.69 / 0.84; forward only (no grad) at B=1 0.97 / 0.87 / 0.98, B=2
# 0.47 / 0.86 / 0.95, B=3 0.57 / 1.01 / 1.19, B=4 0.63 / 1.27 / 1.67, and at B=32 1.06-1.27.
# A later sweep of the forward over B=3-128, T=1-100, H=64-1024 (benchmarks/RESULTS.md) found the
# fused one ahead in places (H=64 from T=30, some short calls of 3-8 rows at large H) and behind
# in most others, the regions crossing in B, T and H at once: the inference order stays.
FUSED_FIRST_BATCH = 2
# ... but not in a training call whose step's recurrent product, batch * weight_hh.numel() (B x 4H x H
# multiply-adds for the LSTM), has this many or more: there both kernels spend their time in gemm,
# and oneDNN's was as fast or faster. The fused LSTM's training step / torch.nn.LSTM's (AMD EPYC, T=100,
# 7-9 interleaved rounds, median of the ratio within a round), below: B=32 H=256 0.91, H=384 0.83,
# H=512 0.93, H=768 1.03; B=64 H=256 0.88, H=384 0.79, H=512 0.90; B=128 H=256 0.82, H=384 0.82;
# B=256 H=256 0.75; from it on: B=128 H=512 0.97-1.11 (six runs on one day, 1.06 in the middle), H=640 1.06, H=768
# 1.04; B=64 H=768 1.20-1.28; B=32 H=1024 1.22; B=256 H=512 0.99 (a tie).
VENDOR_FIRST_PRODUCT = 1 << 27  # B=128, H=512; B=32, H=1024
# "auto" times the fused and vendor kernels against each other in a call whose recurrent
# products (B x T x weight_hh.numel() multiply-adds) hold this many or more (B=32, T=100, H=64
# holds 2^25.6; a training step there takes about 7 ms), when `measure` is on.
MEASURED_FROM_PRODUCT = 1 << 24
MEASURE_ROUNDS = 3  # timed calls of each kernel, in turn, each after an untimed one (`time_paths`)
# ... and it runs the fused kernel only where that measured this much faster than the vendor one:
# three rounds on a shared host do not tell apart kernels closer than this (torch.nn.LSTM timed
# against itself strays by 2-8%), and within it the vendor kernel is the one torch.nn.LSTM runs.
# On the Zen 4 host, choosing the faster median alone, "auto" ran the fused kernel at B=32,
# H=64 (measured 6.2 ms against 6.4) and read 1.05x torch.nn.LSTM's time in the benchmark's rounds.
FUSED_BY_AT_LEAST = 0.05
measure = True  # whether "auto" measures (above); False: the order of `preference` decides every call
NOT_ASKED = "it runs only when asked for (implementation='compiled'): compiling takes seconds at the first call"


class Dispatch(NamedTuple):
    implementation: str  # the path that runs
    refused: dict[str, str]  # each path that cannot run this call, and why
    measured: Optional[dict[str, float]] = None  # seconds a call took by each kernel "auto" timed, if it did


def check_implementation(implementation: str) -> str:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    return implementation


def refusals(cell: nn.Module, masked: bool, compiled_refusal: Optional[str] = NOT_ASKED) -> dict[str, str]:
    """Each fast path the cell cannot run for this call, with the reason. `compiled_refusal` is
    why the compiled path cannot run (None when it can), as `RNN` knows it."""
    reasons = {}
    for path in ("vendor", "fused"):
        refusal = getattr(cell, f"{path}_refusal", None)
        reason = f"{type(cell).__name__} has no {path} kernel" if refusal is None else refusal(masked)
        if reason is not None:
            reasons[path] = reason
    if compiled_refusal is not None:
        reasons["compiled"] = compiled_refusal
    return reasons


def fused_comes_first(batch: Optional[int], backward: bool, recurrent_weight: Optional[Tensor]) -> bool:
    """Whether "auto" tries the fused kernel first for a call of `batch` rows (None: not known),
    recorded by autograd if `backward`, with the cell's `recurrent_weight` (its weight_hh, if any),
    given that the fused loops run in C: at up to FUSED_FIRST_BATCH rows, and in training short of
    VENDOR_FIRST_PRODUCT multiply-adds a step."""
    if batch is not None and batch <= FUSED_FIRST_BATCH:
        return True
    step_product = None if batch is None or recurrent_weight is None else batch * recurrent_weight.numel()
    return backward and (step_product is None or step_product < VENDOR_FIRST_PRODUCT)


def preference(cell: nn.Module, fused_first: bool = False) -> tuple[str, ...]:
    """The order "auto" tries the paths in: the cell's, with the fused kernel first if `fused_first`."""
    order = tuple(getattr(cell, "preference", PREFERENCE))
    if fused_first and "fused" in order:
        order = ("fused", *(path for path in order if path != "fused"))
    return order


def choose(implementation: str, cell: nn.Module, masked: bool, who: str, compiled_refusal: Optional[str] = NOT_ASKED,
           fused_first: bool = False) -> Dispatch:
    """The path for `implementation` ("auto" or one path), the fused kernel tried first by "auto"
    if `fused_first`, or a ValueError saying why it cannot run."""
    refused = refusals(cell, masked, compiled_refusal)
    if implementation == "auto":
        path = next(path for path in preference(cell, fused_first) if path not in refused)
        if path != "loop":  # the compiled path would only be slower; mention it where it could help
            del refused["compiled"]
        return Dispatch(path, refused)
    if implementation in refused:
        raise ValueError(
            f"{who}(implementation={implementation!r}) cannot run this configuration: "
            f"{refused[implementation]}. Use implementation='auto' to fall back."
        )
    return Dispatch(implementation, refused)


def measures(decision: Dispatch, batch: int, steps: int, recurrent_weight: Optional[Tensor]) -> bool:
    """Whether "auto", having chosen `decision` by the order of the paths, times the fused and
    vendor kernels for a call of `batch` rows and `steps` steps (see the module docstring)."""
    if not measure or batch <= FUSED_FIRST_BATCH or recurrent_weight is None:
        return False
    large = batch * steps * recurrent_weight.numel() >= MEASURED_FROM_PRODUCT
    return large and decision.implementation in ("fused", "vendor") and not {"fused", "vendor"} & decision.refused.keys()


def time_rounds(calls: dict[str, Callable[[], object]], rounds: int,
                between: Callable[[], object] = lambda: None) -> dict[str, list[float]]:
    """Seconds of each timed call of each function, the functions taken in turn `rounds` times.

    Each timed call follows an untimed call of the same function, as a layer's call follows its
    own in a training loop: right after the other kernel's, the caches are the other's, which
    cost oneDNN's training step at B=128, T=100, H=64 about 40% more (42 ms against 24) and the
    fused one's less, and so had "auto" pick the fused kernel where oneDNN's was 6% faster.
    `between` runs after each timed call. (benchmarks/rnn_speed.py times by this too.)"""
    seconds: dict[str, list[float]] = {path: [] for path in calls}
    for _ in range(rounds):
        for path, call in calls.items():
            call()  # untimed: the timed call follows one of its own
            start = time.perf_counter()
            call()
            seconds[path].append(time.perf_counter() - start)
            between()
    return seconds


def time_paths(calls: dict[str, Callable[[], object]], rounds: int = MEASURE_ROUNDS) -> dict[str, float]:
    """Median seconds of a call of each function (`time_rounds`), letting go the buffers the fused
    kernels keep (`longshort.workspace`) after each timed call, so that the peak memory of the
    first call of a shape is the larger of the two kernels' own (kept through oneDNN's calls, they
    raised it from 0.88x torch.nn.LSTM's to 1.80x at B=32, T=1000, H=128), and none is kept for a
    kernel not chosen."""
    return {path: statistics.median(values) for path, values in time_rounds(calls, rounds, workspace.clear).items()}


def faster(seconds: dict[str, float]) -> str:
    """The kernel "auto" runs given the seconds it measured of each: the fused one where it was
    faster by FUSED_BY_AT_LEAST, else the vendor one."""
    return "fused" if seconds["fused"] < (1 - FUSED_BY_AT_LEAST) * seconds["vendor"] else "vendor"


@contextmanager
def fixed_order() -> Iterator[None]:
    """Inside, "auto" decides by the order of the paths alone and measures nothing (`measure` off,
    restored after): the two kernels agree to rounding, not bit for bit, and a measurement can come
    out either way where they are close, so a run that must equal another bit for bit (a resumed
    training run, each replica of a distributed one, a seeded experiment) runs without it. The
    trainers (`checkpoints.fit`) and the experiments do."""
    global measure
    previous, measure = measure, False
    try:
        yield
    finally:
        measure = previous
