"""Speed of longshort's recurrent layers against their peers, measured side by side in one process.

For each grid point (B, T, H = F) it times, interleaved and as a median over repeats, a
forward pass (no grad) and a training step (forward + backward of loss = sum of all
outputs) of:

    torch.nn.LSTM            the vendor kernel (oneDNN on CPU): every ratio is against it
    ls.LSTM (auto)           longshort's default dispatch
    ls.LSTM (fused)          the fused kernel with hand-written backward-through-time, its
                             loops in C where longshort.native builds them (as by default)
    ls.LSTM (fused, torch ops)  the same with LONGSHORT_NATIVE=0: its loops in torch ops
    ls.RNN(LSTMCell) loop    the generic loop over the readable cell (implementation="loop";
                             by default RNN(LSTMCell) dispatches exactly as ls.LSTM does)
    custom cell              a user-written LSTM cell through ls.RNN (see `UserLSTMCell`)
    custom cell (compiled)   the same cell with ls.RNN(..., implementation="compiled")
    projected cell (compiled)  a user cell that declares `project_input` / `recur` and
                             `time_major_input` (see `ProjectedLSTMCell`), compiled: the input
                             matmul leaves the loop
    nn.LSTMCell loop         the naive Python loop over torch's own cell

and, in a second process, the same LSTM in JAX with `lax.scan` (benchmarks/jax_lstm.py;
skipped when jax is not installed: `make bench-deps`). It also measures the machine's
GEMM throughput at each grid point's per-step shape, (B, H) x (H, 4H), and prints each
implementation's effective GFLOP/s as a fraction of that. With --memory it reports the
peak memory growth of one training step for each LSTM implementation in a fresh process.

    python benchmarks/rnn_speed.py                # the full grid (about 9 minutes on 2 cores)
    python benchmarks/rnn_speed.py --quick        # B=1 and 32, H=256 only
    python benchmarks/rnn_speed.py --memory       # peak memory at B=32, T=1000, H=128
    python benchmarks/rnn_speed.py --cells        # fused GRU, ReLU SimpleRNN, LSTM variants against their loops
    python benchmarks/rnn_speed.py --targets      # issue 3's ratio targets: ratios within each round, with intervals

Add --hold-freed-memory to time it all with `ls.memory.hold_freed_memory()` in effect (glibc's
malloc keeping freed memory, as the longshort command line has it); by default malloc is left
as a library user gets it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

import longshort as ls

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Point:
    """One grid point: batch, time steps, hidden size (= input size)."""

    batch: int
    time: int
    hidden: int

    def flops(self, training: bool) -> float:
        """Matmul FLOPs of an LSTM pass: 2 * B * T * (F + H) * 4H forward; a training step about 3x that."""
        forward = 2 * self.batch * self.time * (2 * self.hidden) * 4 * self.hidden
        return 3 * forward if training else forward


FULL_GRID = [Point(b, 100, h) for b in (1, 32, 128) for h in (64, 256, 512)] + [Point(32, 1000, 128)]
QUICK_GRID = [Point(1, 100, 256), Point(32, 100, 256)]


class UserLSTMCell(nn.Module):
    """An LSTM cell as a user would write it for `ls.RNN`: no fast-path protocol, just the math."""

    def __init__(self, units: int, input_size: int) -> None:
        super().__init__()
        self.units = units
        self.input_layer = nn.Linear(input_size, 4 * units)
        self.recurrent_layer = nn.Linear(units, 4 * units, bias=False)

    def initial_state(self, batch_size: int, like: Tensor) -> ls.LSTMState:
        zeros = like.new_zeros(batch_size, self.units)
        return ls.LSTMState(zeros, zeros)

    def forward(self, x_t: Tensor, state: ls.LSTMState) -> tuple[Tensor, ls.LSTMState]:
        h_prev, c_prev = state
        i, f, g, o = (self.input_layer(x_t) + self.recurrent_layer(h_prev)).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, ls.LSTMState(h, c)


class ProjectedLSTMCell(UserLSTMCell):
    """The same cell, declaring the cell protocol's input projection: `recur(project_input(x_t), state)`,
    and the projection of a whole sequence time-major (`time_major_input`)."""

    def project_input(self, x: Tensor) -> Tensor:
        return self.input_layer(x)  # (B, T, 4H) for a whole sequence

    def time_major_input(self, x: Tensor) -> Tensor:
        return self.input_layer(x.transpose(0, 1))  # (T, B, 4H), as the compiled path loops over it

    def recur(self, p_t: Tensor, state: ls.LSTMState) -> tuple[Tensor, ls.LSTMState]:
        h_prev, c_prev = state
        i, f, g, o = (p_t + self.recurrent_layer(h_prev)).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, ls.LSTMState(h, c)

    def forward(self, x_t: Tensor, state: ls.LSTMState) -> tuple[Tensor, ls.LSTMState]:
        return self.recur(self.project_input(x_t), state)


def naive_cell_loop(cell: nn.LSTMCell, x: Tensor) -> Tensor:
    h = c = x.new_zeros(x.shape[0], cell.hidden_size)
    outputs = []
    for t in range(x.shape[1]):
        h, c = cell(x[:, t], (h, c))
        outputs.append(h)
    return torch.stack(outputs, dim=1)  # (B, T, H)


def implementations(point: Point) -> dict[str, Callable[[Tensor], Tensor]]:
    """Each implementation as `x -> all outputs (B, T, H)`, all with the same weights where they share a layout."""
    H = point.hidden
    reference = nn.LSTM(H, H, batch_first=True)
    naive = nn.LSTMCell(H, H)
    naive.load_state_dict({key.removesuffix("_l0"): value for key, value in reference.state_dict().items()})
    custom = ls.RNN(UserLSTMCell(H, H), return_sequences=True)
    compiled = ls.RNN(UserLSTMCell(H, H), return_sequences=True, implementation="compiled")
    projected = ls.RNN(ProjectedLSTMCell(H, H), return_sequences=True, implementation="compiled")
    return {
        "torch.nn.LSTM": lambda x: reference(x)[0],
        "ls.LSTM (auto)": ls.LSTM.from_torch(reference, return_sequences=True),
        "ls.LSTM (fused)": _with_implementation(ls.LSTM.from_torch(reference, return_sequences=True), "fused"),
        "ls.LSTM (fused, torch ops)": _without_native(_with_implementation(ls.LSTM.from_torch(reference, return_sequences=True), "fused")),
        "ls.RNN(LSTMCell) loop": ls.RNN(ls.LSTMCell(H, H), return_sequences=True, implementation="loop"),
        "custom cell": custom,
        "custom cell (compiled)": compiled,
        "projected cell (compiled)": projected,
        "nn.LSTMCell loop": lambda x: naive_cell_loop(naive, x),
    }


def _with_implementation(layer: ls.LSTM, implementation: str) -> ls.LSTM:
    layer.implementation = implementation
    return layer


def _without_native(layer: ls.LSTM) -> ls.LSTM:
    layer.native = False  # `measure` runs its calls with LONGSHORT_NATIVE=0
    return layer


@contextmanager
def native_switch(run) -> Iterator[None]:
    """LONGSHORT_NATIVE=0 through the call (forward and backward) for a run marked `native = False`."""
    if getattr(run, "native", True):
        yield
        return
    os.environ["LONGSHORT_NATIVE"] = "0"
    try:
        yield
    finally:
        del os.environ["LONGSHORT_NATIVE"]


def time_rounds(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each call of each function, calling them in turn `repeats` times after one warm-up.

    Each timed call follows an untimed call of the same function, as a layer follows itself in a
    training loop: a call right after another implementation's (a Python loop's above all) finds
    the caches cold, which cost a compiled custom cell at B=1, H=64 about 0.7 ms of its 1.3."""
    for function in functions.values():
        function()
    return ls.dispatch.time_rounds(functions, repeats)  # each timed call right after an untimed one of its own


def time_interleaved(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, timed as `time_rounds` does."""
    return {name: statistics.median(values) for name, values in time_rounds(functions, repeats).items()}


def paired_ratio(numerator: list[float], denominator: list[float], resamples: int = 2000) -> tuple[float, float, float]:
    """Median over rounds of numerator[r] / denominator[r], and a 90% bootstrap interval of that median.

    The two calls of a round are seconds apart, so a host that slows down for a while slows both:
    the ratio within a round is steadier than the ratio of two medians taken over all rounds."""
    ratios = [top / bottom for top, bottom in zip(numerator, denominator, strict=True)]
    chance = random.Random(0)
    medians = sorted(statistics.median(chance.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return statistics.median(ratios), medians[int(0.05 * resamples)], medians[int(0.95 * resamples) - 1]


def gemm_gflops(point: Point, repeats: int = 200) -> float:
    """GFLOP/s of torch.matmul at the per-step shape (B, H) x (H, 4H)."""
    a, b = torch.randn(point.batch, point.hidden), torch.randn(point.hidden, 4 * point.hidden)
    seconds = time_interleaved({"mm": lambda: torch.matmul(a, b)}, repeats)["mm"]
    return 2 * point.batch * point.hidden * 4 * point.hidden / seconds / 1e9


def training_step(run, x: Tensor) -> Callable[[], None]:
    """A training step of `run` as the benchmark times it: forward, loss = sum of all outputs, backward."""
    def call():
        with native_switch(run):
            run(x).sum().backward()
    return call


def measure(point: Point, repeats: int) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    x = torch.randn(point.batch, point.time, point.hidden)
    x_grad = x.clone().requires_grad_()
    runs = implementations(point)
    if point.batch * point.hidden * point.time > 32 * 512 * 100:  # the naive loop takes minutes here
        repeats = max(3, repeats // 2)

    def forward(run):
        def call():
            with torch.no_grad(), native_switch(run):
                run(x)
        return call

    forward_times = time_interleaved({name: forward(run) for name, run in runs.items()}, repeats)
    training_times = time_interleaved({name: training_step(run, x_grad) for name, run in runs.items()}, repeats)
    compile_seconds = {name: run.compile_seconds for name, run in runs.items() if getattr(run, "compile_seconds", None)}
    return {"forward": forward_times, "training": training_times}, compile_seconds


def jax_times(grid: list[Point], repeats: int) -> dict[str, dict[str, float]]:
    """Times from benchmarks/jax_lstm.py in a second process, keyed by str(point); {} without jax."""
    try:
        import jax  # noqa: F401
    except ImportError:
        print("jax is not installed: skipping lax.scan (make bench-deps installs it)", file=sys.stderr)
        return {}
    spec = json.dumps([[p.batch, p.time, p.hidden] for p in grid])
    result = subprocess.run(
        [sys.executable, str(HERE / "jax_lstm.py"), spec, str(repeats)], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


def memory_child(name: str, point: Point) -> None:
    """In a fresh process: peak resident memory growth (MiB) of one training step of `name`."""
    torch.manual_seed(0)
    x = torch.randn(point.batch, point.time, point.hidden, requires_grad=True)
    run = implementations(point)[name]
    with torch.no_grad():
        run(x[:, :2])  # build lazily created weights, load kernels, compile (once per batch size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run(x).sum().backward()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_growth_mib": (after - before) / 1024}))


def memory_table(point: Point) -> list[str]:
    names = ["torch.nn.LSTM", "ls.LSTM (auto)", "ls.LSTM (fused)", "ls.RNN(LSTMCell) loop", "projected cell (compiled)",
             "nn.LSTMCell loop"]
    rows = [f"Peak memory growth of one training step, B={point.batch}, T={point.time}, H=F={point.hidden} (fresh process each):", ""]
    rows += ["| implementation | MiB | vs torch.nn.LSTM |", "|---|---:|---:|"]
    baseline = None
    for name in names:
        args = [sys.executable, __file__, "--memory-child", name, f"{point.batch},{point.time},{point.hidden}"]
        mib = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)["peak_growth_mib"]
        baseline = baseline or mib
        rows.append(f"| {name} | {mib:.0f} | {mib / baseline:.2f} |")
    return rows


def fastest_matmul(m: int, k: int, n: int, calls: int) -> float:
    """Seconds of the fastest of `calls` torch.matmul of (m, k) x (k, n) (the fastest, not the
    median: a floor drawn from it is one no kernel gets below even while the host is at its quietest)."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    return min(time_rounds({"mm": lambda: a @ b}, calls)["mm"])


def gemm_peak_gflops(repeats: int = 30) -> float:
    """GFLOP/s of torch.matmul at (1024, 1024) x (1024, 1024), its fastest call of `repeats`: about
    the most this machine's matmuls reach."""
    return 2 * 1024**3 / fastest_matmul(1024, 1024, 1024, repeats) / 1e9


def matmul_floor(batch: int, hidden: int, gates: int, steps: int = 100, repeats: int = 30) -> float:
    """Seconds the matmuls of a training step of a cell with `gates` gates (H = F = hidden) take
    at the fastest rate torch.matmul reaches at each of their shapes, timed here: per step, the
    recurrent product forward, (B, H) x (H, G*H), and backward, (B, G*H) x (G*H, H); once, over all
    T*B rows, the input projection, dx, dW_ih and dW_hh. From B=4 on the fused kernels' C loops call
    the same gemm (MKL's) for the per-step products, so they get below this only by torch's few
    microseconds of dispatch a call (1-3% at B=32, H=256); at B <= 3 they do a step's products as
    matrix-vector ones of their own, faster than torch.matmul's, and do get below it."""
    rows, width = steps * batch, gates * hidden
    per_step = fastest_matmul(batch, hidden, width, 5 * repeats) + fastest_matmul(batch, width, hidden, 5 * repeats)  # z += h W^T; dh += dz W
    whole = (fastest_matmul(rows, hidden, width, repeats) + fastest_matmul(rows, width, hidden, repeats)  # x W_ih^T; dx = dz W_ih
             + 2 * fastest_matmul(width, rows, hidden, repeats))  # dW_ih = dz^T x, dW_hh = dz^T h
    return steps * per_step + whole


def fused_versus_loop_table(repeats: int) -> list[str]:
    """Training step of the fused GRU, ReLU SimpleRNN and LSTM variants (layer norm, peephole,
    zoneout) against the readable loop of the same cell, and, where torch has the layer, against
    torch's own kernel (`implementation="vendor"`, what torch.nn.GRU / RNN run). With each, the
    time its matmuls alone take at this machine's fastest rate at their shapes (`matmul_floor`):
    from B=4 on, no kernel of the same arithmetic by the same gemm gets below it, so a third of the
    loop's time is out of reach where it is lower."""
    peak = gemm_peak_gflops()
    rows = [f"Fused kernel against the autograd loop of the same cell (and torch's kernel), training step, T=100, H=F; "
            f"matmul floor = the step's matmuls at the fastest rate torch.matmul reached at each of their shapes in this run "
            f"(for reference, {peak:.0f} GFLOP/s at 1024^3, the fastest of 30):", ""]
    rows += ["| layer | B | H | loop ms | torch ms | fused ms | fused vs loop | fused vs torch | loop / 3 ms | matmul floor ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    layers = {  # name: (layer class, its options, whether torch has it, gates per unit)
        "GRU": (ls.GRU, {}, True, 3),
        "SimpleRNN relu": (ls.SimpleRNN, {"activation": "relu"}, True, 1),
        "LayerNormLSTM": (ls.LayerNormLSTM, {}, False, 4),
        "LSTM(peephole=True)": (ls.LSTM, {"peephole": True}, False, 4),
        "LSTM(zoneout=0.1)": (ls.LSTM, {"zoneout": 0.1}, False, 4),
    }
    floors: dict[tuple[int, int, int], float] = {}
    for name, (layer_class, options, in_torch, gates) in layers.items():
        paths = ("loop", "vendor", "fused") if in_torch else ("loop", "fused")
        for batch, hidden in ((1, 256), (32, 64), (32, 256)):
            x = torch.randn(batch, 100, hidden, requires_grad=True)
            runs = {path: layer_class(hidden, hidden, return_sequences=True, implementation=path, **options) for path in paths}
            for layer in runs.values():
                layer.load_state_dict(runs["loop"].state_dict())
            times = time_interleaved({path: (lambda layer=layer: layer(x).sum().backward()) for path, layer in runs.items()}, repeats)
            torch_ms, versus_torch = (f"{times['vendor'] * 1e3:.2f}", f"{times['vendor'] / times['fused']:.2f}x") if in_torch else ("", "")
            if (batch, hidden, gates) not in floors:
                floors[batch, hidden, gates] = matmul_floor(batch, hidden, gates)
            rows.append(f"| {name} | {batch} | {hidden} | {times['loop'] * 1e3:.2f} | {torch_ms} | {times['fused'] * 1e3:.2f} | "
                        f"{times['loop'] / times['fused']:.2f}x | {versus_torch} | {times['loop'] / 3 * 1e3:.2f} | "
                        f"{floors[batch, hidden, gates] * 1e3:.2f} |")
    return rows


TARGETS = {  # column: (numerator, denominator, the most issue 3 allows at B=1, at B >= 32)
    "auto / torch": ("ls.LSTM (auto)", "torch.nn.LSTM", 1.05, 1.05),
    "fused / torch": ("ls.LSTM (fused)", "torch.nn.LSTM", 2.5, 1.5),
    "custom compiled / fused": ("custom cell (compiled)", "ls.LSTM (fused)", 2.0, 2.0),
    "projected compiled / fused": ("projected cell (compiled)", "ls.LSTM (fused)", 2.0, 2.0),
}
# The control: torch.nn.LSTM timed a second time in the same rounds, against itself. Its ratio has
# no target; how far it strays from 1 is how far any ratio here can stray by the host's noise (and
# a call's place in the round) alone.
CONTROL = "torch.nn.LSTM (again)"


def print_targets(grid: list[Point], repeats: int) -> None:
    """Issue 3's ratio targets on the grid, training step, printed point by point: each ratio is the
    median over rounds of the two calls' ratio within a round (`paired_ratio`), with its 90%
    bootstrap interval; then a verdict per column: met where the median is at most the target at
    every point, and 'met at every point's upper bound' where even the interval's top is. The last
    column is the control (CONTROL against torch.nn.LSTM): the noise a ratio carries here."""
    print("Issue 3's targets, training step: median over rounds of the ratio within a round, [90% bootstrap interval]\n")
    print("| B, T, H=F | torch.nn.LSTM ms | " + " | ".join(TARGETS) + " | control: torch again / torch |\n|---|---:|"
          + "---:|" * (len(TARGETS) + 1))
    print("| target (B=1 ; B >= 32) | | " + " | ".join(f"{at_one} ; {at_more}" for *_, at_one, at_more in TARGETS.values()) + " | (1) |")
    worst = {column: (0.0, 0.0) for column in TARGETS}  # the most (median / target, upper bound / target) over the grid
    control_range = (math.inf, 0.0)  # the least and most median of the control over the grid
    for point in grid:
        torch.manual_seed(0)
        x = torch.randn(point.batch, point.time, point.hidden, requires_grad=True)
        runs = implementations(point)
        names = [name for name in runs if any(name in pair[:2] for pair in TARGETS.values())]
        calls = {name: training_step(runs[name], x) for name in names}
        calls[CONTROL] = training_step(runs["torch.nn.LSTM"], x)  # last in each round
        rounds = time_rounds(calls, repeats)
        cells = []
        for column, (numerator, denominator, at_one, at_more) in TARGETS.items():
            middle, low, high = paired_ratio(rounds[numerator], rounds[denominator])
            target = at_one if point.batch == 1 else at_more
            worst[column] = (max(worst[column][0], middle / target), max(worst[column][1], high / target))
            cells.append(f"{middle:.2f} [{low:.2f}-{high:.2f}]" + (" **over**" if middle > target else ""))
        middle, low, high = paired_ratio(rounds[CONTROL], rounds["torch.nn.LSTM"])
        control_range = (min(control_range[0], middle), max(control_range[1], middle))
        cells.append(f"{middle:.2f} [{low:.2f}-{high:.2f}]")
        print(f"| {point.batch}, {point.time}, {point.hidden} | {statistics.median(rounds['torch.nn.LSTM']) * 1e3:.2f} | "
              + " | ".join(cells) + " |", flush=True)
    print()
    for column, (middle, high) in worst.items():
        verdict = "met at every point's upper bound" if high <= 1 else "met" if middle <= 1 else "not met"
        print(f"{column}: {verdict} (the most, as a fraction of the target: median {middle:.3f}, upper bound {high:.3f})")
    print(f"control, torch.nn.LSTM against itself: medians {control_range[0]:.2f} to {control_range[1]:.2f} (the noise of a ratio here)")


def cpu_model() -> str:
    """The processor's name as /proc/cpuinfo gives it (the host under a cloud machine changes between runs)."""
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine(malloc: str = "as it starts") -> str:
    return (
        f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads, oneDNN {'on' if torch.backends.mkldnn.is_available() else 'off'}), "
        f"Python {platform.python_version()}; fused kernels' loops (LSTM, GRU, SimpleRNN, LSTM variants): {ls.native.status()}; malloc: {malloc}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two grid points only")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--memory", action="store_true", help="peak memory at B=32, T=1000, H=128 only")
    parser.add_argument("--cells", action="store_true", help="fused GRU, ReLU SimpleRNN and LSTM variants against their loops (and torch) only")
    parser.add_argument("--targets", action="store_true", help="issue 3's ratio targets on the grid, as paired ratios with intervals, only")
    parser.add_argument("--hold-freed-memory", action="store_true", help="time with ls.memory.hold_freed_memory() in effect")
    parser.add_argument("--memory-child", nargs=2, metavar=("NAME", "B,T,H"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        name, shape = args.memory_child
        memory_child(name, Point(*map(int, shape.split(","))))
        return
    malloc = "as it starts"
    if args.hold_freed_memory:
        malloc = "holds freed memory (ls.memory)" if ls.memory.hold_freed_memory() else "not glibc's: --hold-freed-memory did nothing"
    print(f"Machine: {machine(malloc)}\nCommand: python {' '.join(sys.argv)}\n")
    if args.memory:
        print("\n".join(memory_table(Point(32, 1000, 128))))
        return
    if args.cells:
        print("\n".join(fused_versus_loop_table(args.repeats)))
        return
    grid = QUICK_GRID if args.quick else FULL_GRID
    if args.targets:
        print_targets(grid, args.repeats)
        return

    jax = jax_times(grid, args.repeats)
    for point in grid:
        times, compile_seconds = measure(point, args.repeats)
        peak = gemm_gflops(point)
        print(f"Compile time at B={point.batch}, H={point.hidden} (trace and compile, once per batch size and mode): "
              + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in compile_seconds.items()) + "\n")
        for mode, by_name in times.items():
            if str(point) in jax:
                by_name["JAX lax.scan"] = jax[str(point)][mode]
            base = by_name["torch.nn.LSTM"]
            print(f"### B={point.batch}, T={point.time}, H=F={point.hidden}: {mode} "
                  f"(GEMM peak at the step shape: {peak:.1f} GFLOP/s)\n")
            print("| implementation | ms | vs torch.nn.LSTM | GFLOP/s | of GEMM peak |\n|---|---:|---:|---:|---:|")
            for name, seconds in by_name.items():
                gflops = point.flops(mode == "training") / seconds / 1e9
                print(f"| {name} | {seconds * 1e3:.2f} | {seconds / base:.2f} | {gflops:.1f} | {gflops / peak:.0%} |")
            print(flush=True)


if __name__ == "__main__":
    main()
