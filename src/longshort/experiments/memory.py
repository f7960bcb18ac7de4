"""Low memory retention: the simple RNN against GRU and LSTM on two long-lag tasks, sweeping T.

* Adding problem (`tasks.adding_problem`): read T (value, marker) pairs, output the sum of
  the two marked values. The head is `Dense(1)` on the last output. Answering 1 always
  gives MSE 1/6, the baseline. Hochreiter & Schmidhuber (1997) count a sequence as right
  when |error| < 0.04.
* Copy task (`tasks.copy_task`, Arjovsky et al. 2016): see `copy_length` symbols, T blanks
  (the lag), a delimiter, and repeat the symbols. The head is `TimeDistributed(Dense)` on
  every output; the loss is the per-step cross-entropy, whose memoryless baseline is
  `copy_baseline_cross_entropy`.

The three models get roughly the same number of parameters (the table lists units and
counts). All train with Adam and global-norm clipping; a run stops early once its
training loss, averaged over the last `stop_window` steps, is below `stop_fraction` times
the task's baseline. Each run is then tested on fresh sequences.

The published picture (Hochreiter & Schmidhuber 1997; Le et al. 2015; Arjovsky et al.
2016): the simple RNN stays at the baseline as T grows, LSTM and GRU solve the adding
problem (at T=100, test MSE < 0.01).
"""

from __future__ import annotations

import multiprocessing
import queue
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from longshort.experiments.base import Experiment, Report, pyplot, save_figure
from longshort.experiments.tasks import ADDING_BASELINE_MSE, adding_problem, copy_baseline_cross_entropy, copy_task, long_lag_cpu
from longshort.layers import GRU, LSTM, SimpleRNN
from longshort.training import Clip, History, train_step
from longshort.wrappers import Dense, Sequential, TimeDistributed

ADDING_TOLERANCE = 0.04  # Hochreiter & Schmidhuber (1997): a sequence is right when |error| < 0.04


class Architecture(Enum):
    SIMPLE_RNN = "SimpleRNN"
    GRU = "GRU"
    LSTM = "LSTM"


LAYERS = {Architecture.SIMPLE_RNN: SimpleRNN, Architecture.GRU: GRU, Architecture.LSTM: LSTM}


@dataclass
class MemoryConfig:
    """Everything the result depends on."""

    lengths: str = "50,100,200"  # the T swept, comma-separated: adding sequence length, copy lag
    rnn_units: int = 65  # SimpleRNN (tanh) size; the three sizes give ~4.5k parameters each on the adding problem
    gru_units: int = 37  # GRU size
    lstm_units: int = 32  # LSTM size (forget-gate bias starts at 1)
    batch_size: int = 32  # sequences per Adam step
    learning_rate: float = 0.01  # Adam
    clip_norm: float = 1.0  # global gradient-norm clipping
    adding_steps: int = 1500  # most Adam steps per adding run
    copy_steps: int = 300  # most Adam steps per copy run
    stop_fraction: float = 0.02  # stop early once the training loss is below this fraction of the baseline
    stop_window: int = 50  # ... averaged over this many steps
    copy_length: int = 10  # symbols to remember in the copy task (Arjovsky et al.: 10)
    copy_symbols: int = 8  # alphabet of the copy task (Arjovsky et al.: 8)
    test_size: int = 1000  # fresh test sequences per run
    solved_mse: float = 0.01  # adding: a run solves the task when its test MSE is below this
    solved_accuracy: float = 0.99  # copy: a run solves the task when this fraction of recalled symbols is right
    baseline_fraction: float = 0.5  # a run is "at the baseline" when its test loss is above this fraction of the baseline's
    seeds: int = 2  # adding runs per model and T: seeds seed, seed + 1, ...
    copy_seeds: int = 1  # copy runs per model and T
    seed: int = 0
    threads: int = 1  # torch CPU threads per process (see tasks.long_lag_cpu)
    workers: int = 2  # processes training runs side by side (2 on 2 cores); 1: all in this process. Same results

    def __post_init__(self) -> None:
        self.length_list()  # raises on a malformed list
        for name in ("rnn_units", "gru_units", "lstm_units", "batch_size", "adding_steps", "copy_steps", "stop_window",
                     "copy_length", "copy_symbols", "test_size", "seeds", "copy_seeds", "threads", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("learning_rate", "clip_norm", "solved_mse", "baseline_fraction"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.stop_fraction < 1 or not 0 < self.solved_accuracy <= 1:
            raise ValueError("stop_fraction must lie in [0, 1) and solved_accuracy in (0, 1]")

    def length_list(self) -> list[int]:
        """`lengths` as sorted integers; each must be >= 2."""
        try:
            values = sorted({int(text) for text in self.lengths.split(",")})
        except ValueError:
            raise ValueError(f"lengths must be comma-separated integers, got {self.lengths!r}") from None
        if any(value < 2 for value in values):
            raise ValueError(f"every length must be >= 2, got {self.lengths!r}")
        return values

    def units(self, architecture: Architecture) -> int:
        return {Architecture.SIMPLE_RNN: self.rnn_units, Architecture.GRU: self.gru_units, Architecture.LSTM: self.lstm_units}[architecture]


@dataclass(frozen=True)
class Task:
    """What the training loop needs to know about a task."""

    name: str
    input_size: int
    output_size: int
    sequence_output: bool  # the head sees every output (copy) or only the last (adding)
    batch: Callable[[int, int, torch.Generator], tuple[Tensor, Tensor]]  # (batch size, T, generator) -> inputs, targets
    loss: Callable[[Tensor, Tensor], Tensor]  # (model output, targets) -> scalar
    baseline: Callable[[int], float]  # T -> the memoryless strategy's loss
    accuracy: Callable[[Tensor, Tensor], float]  # (model output, targets) -> the task's accuracy
    solved: Callable[[float, float, "MemoryConfig"], bool]  # (test loss, accuracy, config) -> solved?


def adding_task() -> Task:
    return Task(
        name="adding",
        input_size=2,
        output_size=1,
        sequence_output=False,
        batch=adding_problem,
        loss=F.mse_loss,
        baseline=lambda length: ADDING_BASELINE_MSE,
        accuracy=lambda output, targets: float(((output - targets).abs() < ADDING_TOLERANCE).float().mean()),
        solved=lambda loss, accuracy, config: loss < config.solved_mse,
    )


def copy_memory_task(config: MemoryConfig) -> Task:
    length, symbols = config.copy_length, config.copy_symbols

    def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))  # (B*T, C), (B*T,)

    def recall_accuracy(logits: Tensor, targets: Tensor) -> float:
        return float((logits[:, -length:].argmax(dim=-1) == targets[:, -length:]).float().mean())  # (B, length)

    return Task(
        name="copy",
        input_size=symbols + 2,
        output_size=symbols + 1,
        sequence_output=True,
        batch=lambda size, lag, generator: copy_task(size, lag, generator, length=length, symbols=symbols),
        loss=cross_entropy,
        baseline=lambda lag: copy_baseline_cross_entropy(lag, length=length, symbols=symbols),
        accuracy=recall_accuracy,
        solved=lambda loss, accuracy, config: accuracy >= config.solved_accuracy,
    )


def make_task(name: str, config: MemoryConfig) -> Task:
    """The task called `name` ("adding" or "copy"): a worker process rebuilds it from its name."""
    return adding_task() if name == "adding" else copy_memory_task(config)


def build_model(architecture: Architecture, units: int, task: Task) -> Sequential:
    """The recurrent layer and its head: `Dense` on the last output, or `TimeDistributed(Dense)` on all."""
    layer = LAYERS[architecture](units, input_size=task.input_size, return_sequences=task.sequence_output)
    head = Dense(task.output_size, input_size=units)
    return Sequential(layer, TimeDistributed(head) if task.sequence_output else head)


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@dataclass
class RunResult:
    """One model, one T, one seed."""

    losses: list[float]  # training loss per step
    test_loss: float  # on fresh sequences
    accuracy: float  # |error| < 0.04 (adding) or recalled symbols right (copy)
    steps: int  # steps taken (fewer than the maximum when it stopped early)


@dataclass
class ModelAtLength:
    """One model at one T: its runs over the seeds, and what they add up to."""

    task: Task
    architecture: Architecture
    length: int
    parameters: int
    runs: list[RunResult] = field(default_factory=list)

    @property
    def baseline(self) -> float:
        return self.task.baseline(self.length)

    def mean(self, attribute: str) -> float:
        return sum(getattr(run, attribute) for run in self.runs) / len(self.runs)

    def solved(self, config: MemoryConfig) -> bool:
        return all(self.task.solved(run.test_loss, run.accuracy, config) for run in self.runs)

    def at_baseline(self, config: MemoryConfig) -> bool:
        return all(not run.test_loss < config.baseline_fraction * self.baseline for run in self.runs)

    def verdict(self, config: MemoryConfig) -> str:
        return "solved" if self.solved(config) else "baseline" if self.at_baseline(config) else "partly"


Tick = Callable[[int, str], None]  # (steps done since the last call, what is training) -> None: the progress bar


@dataclass(frozen=True)
class Job:
    """One run to train: a model on a task at one T from one seed, for at most `steps` steps."""

    task: str  # "adding" or "copy"
    architecture: Architecture
    length: int
    seed: int
    steps: int


def train_run(job: Job, config: MemoryConfig, tick: Tick) -> RunResult:
    """Train one model on one task at one T from one seed with Adam and clipping; test it on fresh sequences."""
    task, length, seed = make_task(job.task, config), job.length, job.seed
    torch.manual_seed(seed)
    model = build_model(job.architecture, config.units(job.architecture), task)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    clip, history = Clip(max_norm=config.clip_norm), History()
    batches = torch.Generator().manual_seed(seed)
    stop_below = config.stop_fraction * task.baseline(length)
    for step in range(job.steps):
        inputs, targets = task.batch(config.batch_size, length, batches)
        loss = train_step(model, lambda: task.loss(model(inputs), targets), optimizer, clip, history)
        tick(1, f"{task.name} T={length} {job.architecture.value} seed {seed}: loss {loss:.4f}")
        recent = history.losses[-config.stop_window:]
        if len(recent) == config.stop_window and sum(recent) / len(recent) < stop_below:
            tick(job.steps - step - 1, "")
            break
    inputs, targets = task.batch(config.test_size, length, torch.Generator().manual_seed(1_000_000 + seed))
    model.eval()
    with torch.no_grad():
        output = model(inputs)
        return RunResult(history.losses, float(task.loss(output, targets)), task.accuracy(output, targets), len(history.losses))


# Worker processes: each trains whole runs inside tasks.long_lag_cpu, as the main process does
# (so the results are the same), and reports its steps to the main process's progress bar
# through a queue, 25 at a time.
_progress: "multiprocessing.Queue | None" = None


def _start_worker(progress: "multiprocessing.Queue") -> None:
    global _progress
    _progress = progress


def _train_in_worker(job: Job, config: MemoryConfig) -> RunResult:
    pending = [0, ""]

    def tick(steps: int, postfix: str) -> None:
        pending[0] += steps
        pending[1] = postfix or pending[1]
        if pending[0] >= 25:
            _progress.put(tuple(pending))
            pending[0] = 0

    with long_lag_cpu(config.threads):
        result = train_run(job, config, tick)
    _progress.put(tuple(pending))
    return result


def train_all(jobs: list[Job], config: MemoryConfig, bar: tqdm) -> list[RunResult]:
    """Every job's result, in order: in this process, or in `config.workers` processes side by side
    (the longest runs first, so that none is left alone at the end)."""

    def show(steps: int, postfix: str) -> None:
        bar.update(steps)
        if postfix:
            bar.set_postfix_str(postfix, refresh=False)

    if config.workers == 1 or len(jobs) == 1:
        return [train_run(job, config, show) for job in jobs]
    context = multiprocessing.get_context("spawn")  # not fork: torch's threads do not survive a fork
    progress = context.Queue()
    longest_first = sorted(range(len(jobs)), key=lambda index: -jobs[index].steps * jobs[index].length)
    expected, received = sum(job.steps for job in jobs), 0  # every job reports exactly its steps
    with ProcessPoolExecutor(config.workers, mp_context=context, initializer=_start_worker, initargs=(progress,)) as pool:
        futures = {index: pool.submit(_train_in_worker, jobs[index], config) for index in longest_first}
        # Until every job is done and its last report has crossed the queue (a worker's reports
        # can arrive after its result); a job that failed leaves its steps unreported.
        while not all(future.done() for future in futures.values()) or (received < expected and not _any_failed(futures)):
            try:
                steps, postfix = progress.get(timeout=0.2)
            except queue.Empty:
                continue
            received += steps
            show(steps, postfix)
        return [futures[index].result() for index in range(len(jobs))]


def _any_failed(futures: dict) -> bool:
    return any(future.done() and future.exception() is not None for future in futures.values())


def run(config: MemoryConfig, out: Path, progress: bool = True) -> Report:
    lengths = config.length_list()
    plan = [(adding_task(), config.adding_steps, config.seeds), (copy_memory_task(config), config.copy_steps, config.copy_seeds)]
    total = sum(steps * seeds for _, steps, seeds in plan) * len(lengths) * len(Architecture)
    bar = tqdm(total=total, desc="memory", unit="step", disable=not progress)
    cells: list[ModelAtLength] = []
    jobs: list[tuple[ModelAtLength, Job]] = []
    for task, steps, seeds in plan:
        for length in lengths:
            for architecture in Architecture:
                size = parameter_count(build_model(architecture, config.units(architecture), task))
                cells.append(ModelAtLength(task, architecture, length, size))
                jobs += [(cells[-1], Job(task.name, architecture, length, seed, steps)) for seed in range(config.seed, config.seed + seeds)]
    for (cell, _), result in zip(jobs, train_all([job for _, job in jobs], config, bar)):
        cell.runs.append(result)
    bar.close()

    rows = [
        [
            cell.task.name, cell.architecture.value, config.units(cell.architecture), cell.parameters, cell.length,
            cell.mean("test_loss"), max(run.test_loss for run in cell.runs), cell.baseline, cell.mean("accuracy"),
            round(cell.mean("steps")), cell.verdict(config),
        ]
        for cell in cells
    ]
    summary = {
        task.name: {
            architecture.value: _model_summary([cell for cell in cells if cell.task is task and cell.architecture is architecture], config)
            for architecture in Architecture
        }
        for task, _, _ in plan
    }
    figures = [_plot_against_length(cells, plan, config, out / "memory-vs-length.png"), _plot_learning_curves(cells, plan, lengths, out / "memory-learning-curves.png")]
    return Report(
        title=(
            f"Memory over T: SimpleRNN(tanh) vs GRU vs LSTM, Adam lr {config.learning_rate:g}, batch {config.batch_size}, "
            f"clip {config.clip_norm:g}; adding problem ({config.seeds} seeds, <= {config.adding_steps} steps) and copy task "
            f"({config.copy_length} of {config.copy_symbols} symbols, {config.copy_seeds} seeds, <= {config.copy_steps} steps)"
        ),
        columns=[
            "task", "model", "units", "params", "T", "test loss (mean)", "test loss (worst seed)", "baseline loss",
            f"share right (adding: |error| < {ADDING_TOLERANCE}; copy: symbols recalled)", "steps (mean)", "verdict",
        ],
        rows=rows,
        summary=summary,
        notes=_notes(summary, config),
        figures=figures,
        data={
            f"{cell.task.name} T={cell.length} {cell.architecture.value}": [
                {"seed": config.seed + index, "test_loss": run.test_loss, "accuracy": run.accuracy, "steps": run.steps, "losses": run.losses}
                for index, run in enumerate(cell.runs)
            ]
            for cell in cells
        },
    )


def _model_summary(cells: list[ModelAtLength], config: MemoryConfig) -> dict:
    """One model on one task across T: per-T numbers, the largest T solved, the first T at the baseline."""
    solved = [cell.length for cell in cells if cell.solved(config)]
    at_baseline = [cell.length for cell in cells if cell.at_baseline(config)]
    return {
        "units": config.units(cells[0].architecture),
        "parameters": cells[0].parameters,
        "test_loss": {cell.length: [run.test_loss for run in cell.runs] for cell in cells},
        "accuracy": {cell.length: [run.accuracy for run in cell.runs] for cell in cells},
        "baseline": {cell.length: cell.baseline for cell in cells},
        "verdict": {cell.length: cell.verdict(config) for cell in cells},
        "largest_solved_length": max(solved) if solved else None,
        "first_baseline_length": min(at_baseline) if at_baseline else None,
    }


def _notes(summary: dict, config: MemoryConfig) -> list[str]:
    notes = []
    for task, models in summary.items():
        parts = []
        for name, model in models.items():
            solved, fallen = model["largest_solved_length"], model["first_baseline_length"]
            parts.append(
                f"{name} solves up to T={solved if solved is not None else '(none)'}"
                + (f", at the baseline from T={fallen}" if fallen is not None else ", never at the baseline")
            )
        budget = config.adding_steps if task == "adding" else config.copy_steps
        notes.append(f"{task} (within {budget} steps): " + "; ".join(parts) + ".")
    adding = summary["adding"]
    shares = "; ".join(
        f"{name}: " + ", ".join(f"T={T} {statistics.mean(values):.2f}" for T, values in model["accuracy"].items())
        for name, model in adding.items()
    )
    notes.append(
        f"Share of adding test sequences with |error| < {ADDING_TOLERANCE} (the 1997 paper's criterion for a right "
        f"answer), mean over seeds: {shares}. Runs stop once their training MSE is below {config.stop_fraction:g} x the "
        "baseline, so a solved run has MSE well under 0.01 yet still misses this tighter mark on many sequences; "
        "`hochreiter1997` trains to the paper's own criterion."
    )
    copy = summary["copy"]
    best = min(copy, key=lambda name: min(statistics.mean(v) / copy[name]["baseline"][T] for T, v in copy[name]["test_loss"].items()))
    ratio = min(statistics.mean(v) / copy[best]["baseline"][T] for T, v in copy[best]["test_loss"].items())
    notes.append(
        f"Copy task: within {config.copy_steps} steps the best test loss relative to the memoryless baseline is {ratio:.2f} "
        f"({best}). All three first learn the memoryless strategy (blanks, then a uniform guess), which is where "
        "Arjovsky et al. (2016) show LSTMs and simple RNNs stuck on this task for long training too; this budget shows "
        "that plateau, not what a much longer run would reach."
    )
    notes.append(
        f"'solved': every seed's test MSE < {config.solved_mse:g} (adding) or recalled-symbol accuracy >= "
        f"{config.solved_accuracy:g} (copy); 'baseline': every seed's test loss above {config.baseline_fraction:g} x the "
        "memoryless baseline; 'partly' in between. Both are within the step budget: a model 'at the baseline' at T=200 "
        "may still leave it with more steps (LSTM and GRU leave the plateau suddenly, after hundreds to thousands of steps)."
    )
    return notes


def _plot_against_length(cells: list[ModelAtLength], plan: list, config: MemoryConfig, path: Path) -> Path:
    """Test loss / the memoryless baseline against T per model (every seed a dot, the mean a line), log y."""
    plt = pyplot()
    figure, panels = plt.subplots(1, len(plan), figsize=(11, 4.2))
    for axes, (task, _, _) in zip(panels, plan):
        for architecture in Architecture:
            mine = [cell for cell in cells if cell.task is task and cell.architecture is architecture]
            lengths = [cell.length for cell in mine]
            relative = [cell.mean("test_loss") / cell.baseline for cell in mine]
            line = axes.plot(lengths, relative, marker="o", label=f"{architecture.value} ({mine[0].parameters} params)")
            for cell in mine:
                seeds = [run.test_loss / cell.baseline for run in cell.runs]
                axes.plot([cell.length] * len(seeds), seeds, ".", color=line[0].get_color(), alpha=0.5)
        axes.axhline(1.0, color="k", linestyle=":", label="memoryless baseline")
        if task.name == "adding":
            axes.axhline(config.solved_mse / ADDING_BASELINE_MSE, color="0.5", linestyle="--", linewidth=1,
                         label=f"solved: MSE < {config.solved_mse:g}")
        axes.set_yscale("log")
        axes.set_xticks(lengths)
        axes.set_xlabel("T (adding: sequence length; copy: lag)")
        axes.set_ylabel(("test MSE" if task.name == "adding" else "test cross-entropy per step") + " / baseline's")
        axes.set_title(f"{task.name}: test loss relative to the memoryless baseline", fontsize=10)
        axes.legend(fontsize=8)
    return save_figure(figure, path)


def _plot_learning_curves(cells: list[ModelAtLength], plan: list, lengths: list[int], path: Path) -> Path:
    """Training loss (first seed, running mean over 25 steps) per model, one panel per task and T."""
    plt = pyplot()
    figure, panels = plt.subplots(len(plan), len(lengths), figsize=(4 * len(lengths), 3.2 * len(plan)), squeeze=False)
    for row, (task, _, _) in enumerate(plan):
        for column, length in enumerate(lengths):
            axes = panels[row][column]
            for cell in (cell for cell in cells if cell.task is task and cell.length == length):
                axes.plot(_running_mean(cell.runs[0].losses, 25), label=cell.architecture.value, linewidth=1)
            axes.axhline(task.baseline(length), color="k", linestyle=":", linewidth=1, label="baseline")
            axes.set_yscale("log")
            axes.set_title(f"{task.name}, T={length}")
            axes.set_xlabel("Adam step")
        panels[row][0].set_ylabel("training loss")
    panels[0][0].legend(fontsize=8)
    return save_figure(figure, path)


def _running_mean(values: list[float], window: int) -> list[float]:
    sums = torch.tensor(values, dtype=torch.float64).cumsum(0)  # (N,)
    counts = torch.arange(1, len(values) + 1).clamp(max=window)
    shifted = torch.cat([torch.zeros(window, dtype=torch.float64), sums])[: len(values)]  # sums[i - window]
    return ((sums - shifted) / counts).tolist()


EXPERIMENT = Experiment(
    name="memory",
    summary="SimpleRNN vs GRU vs LSTM at ~equal parameters on the adding and copy tasks as T grows: who remembers",
    config_class=MemoryConfig,
    run=run,
    tiny={
        "lengths": "4,8", "rnn_units": 6, "gru_units": 4, "lstm_units": 3, "batch_size": 8, "adding_steps": 3,
        "copy_steps": 3, "copy_length": 2, "copy_symbols": 3, "test_size": 16, "seeds": 1,
    },
)
