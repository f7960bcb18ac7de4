"""Forget-gate bias 0, 1 or chrono: how fast an LSTM learns the adding problem as the lag grows.

Jozefowicz, Zaremba & Sutskever (2015) found that starting the forget-gate bias at 1
instead of 0 closes most of the gap between LSTM and GRU. Tallec & Ollivier (2018) go
further with chrono initialisation: b_f ~ log(U(1, T_max - 1)), b_i = -b_f, so that at
the start each unit forgets on its own time scale of up to T_max steps. This experiment
trains the same LSTM from the same weights with the three forget-gate biases on the
adding problem (`tasks.adding_problem`) at several lengths T, over several seeds, and
counts the steps until the test MSE falls below a threshold; a run stops there (solved)
or at the step budget, and its final test MSE is the last one measured.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from longshort.cells import LSTMCell
from longshort.experiments.base import Experiment, Report, pyplot, save_figure
from longshort.experiments.tasks import ADDING_BASELINE_MSE, adding_problem
from longshort.layers import LSTM
from longshort.training import Clip, train_step
from longshort.wrappers import Dense, Sequential


class ForgetInit(str, Enum):
    """How the forget-gate bias (and, for chrono, the input-gate bias) starts."""

    ZERO = "zero"  # b_f = 0: torch.nn.LSTM's default
    ONE = "one"  # b_f = 1: Jozefowicz et al. (2015); Keras' and longshort's default
    CHRONO = "chrono"  # b_f ~ log U(1, T_max - 1), b_i = -b_f: Tallec & Ollivier (2018)

    @property
    def label(self) -> str:
        return {"zero": "forget bias 0", "one": "forget bias 1", "chrono": "chrono"}[self.value]


def chrono_init_(cell: LSTMCell, max_lag: int, generator: Optional[torch.Generator] = None) -> None:
    """Chrono initialisation in place: b_f ~ log(U(1, max_lag - 1)), b_i = -b_f; g and o biases unchanged.

    A unit with forget gate sigmoid(b_f) keeps its cell for about 1 + e^{b_f} steps, so the
    units start with memories spread over 2 .. max_lag steps (Tallec & Ollivier 2018).
    """
    if cell.bias is None:
        raise ValueError("chrono initialisation needs a cell with a bias (use_bias=True)")
    if max_lag < 3:
        raise ValueError(f"chrono initialisation needs max_lag >= 3, got {max_lag}")
    units = cell.units
    with torch.no_grad():
        forget = torch.log(torch.empty(units).uniform_(1.0, max_lag - 1.0, generator=generator))  # (H,)
        cell.bias[units : 2 * units] = forget
        cell.bias[:units] = -forget


def lstm_with_forget_init(
    units: int, input_size: int, init: ForgetInit, max_lag: int, return_sequences: bool = False
) -> LSTM:
    """An `LSTM` whose forget-gate bias starts as `init` says (chrono draws from torch's global generator)."""
    layer = LSTM(units, input_size=input_size, unit_forget_bias=init is ForgetInit.ONE, return_sequences=return_sequences)
    if init is ForgetInit.CHRONO:
        chrono_init_(layer.cell, max_lag)
    return layer


@dataclass
class ForgetBiasConfig:
    """Everything the result depends on."""

    lags: str = "25,50,100"  # adding-problem lengths T to sweep, comma-separated (a run costs about T x its steps)
    seeds: int = 3  # runs per (initialisation, T): seeds seed, seed + 1, ... (weights and training batches)
    seed: int = 0  # the first seed
    units: int = 32  # H of the LSTM
    steps: int = 1500  # most Adam steps per run; a run stops once its test MSE is below the threshold
    batch_size: int = 32  # sequences per step
    learning_rate: float = 1e-2  # Adam
    clip_norm: float = 1.0  # global gradient-norm clipping
    threshold: float = 0.01  # a run has solved T once its test MSE is below this (always answering 1 scores 1/6)
    eval_every: int = 50  # steps between test evaluations (so steps-to-threshold are multiples of it)
    test_size: int = 1000  # fixed test sequences per T
    test_seed: int = 2015  # seed of the test sequences
    threads: int = 1  # torch CPU threads (see tasks.long_lag_cpu)

    def __post_init__(self) -> None:
        lags = self.lag_list()  # raises on a malformed list
        if min(lags) < 3:
            raise ValueError(f"lags must be >= 3 (chrono draws from U(1, T - 1)), got {self.lags!r}")
        for name in ("seeds", "units", "steps", "batch_size", "eval_every", "test_size", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("learning_rate", "clip_norm", "threshold"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.eval_every > self.steps:
            raise ValueError(f"eval_every ({self.eval_every}) must not exceed steps ({self.steps}): a run needs one evaluation")

    def lag_list(self) -> list[int]:
        try:
            lags = sorted({int(text) for text in self.lags.split(",")})
        except ValueError:
            raise ValueError(f"lags must be comma-separated integers such as 50,100,200, got {self.lags!r}") from None
        return lags


@dataclass
class RunResult:
    """One initialisation, one T, one seed."""

    test_mse: list[float]  # at steps eval_every, 2 * eval_every, ... until solved or the budget
    steps_to_threshold: Optional[int]  # first evaluated step with test MSE < threshold; None if never

    @property
    def final_mse(self) -> float:
        return self.test_mse[-1]


def train_run(init: ForgetInit, lag: int, seed: int, test: tuple[Tensor, Tensor], config: ForgetBiasConfig, bar: tqdm) -> RunResult:
    """Train `LSTM(units) -> Dense(1)` with forget initialisation `init` on the adding problem of length `lag`."""
    torch.manual_seed(seed)  # the same weights for every initialisation: only the biases differ
    model = Sequential(lstm_with_forget_init(config.units, 2, init, lag), Dense(1, input_size=config.units))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    clip = Clip(max_norm=config.clip_norm)
    batches = torch.Generator().manual_seed(seed)
    test_inputs, test_targets = test
    test_mse: list[float] = []
    reached = None
    for step in range(1, config.steps + 1):
        inputs, targets = adding_problem(config.batch_size, lag, batches)
        loss = train_step(model, lambda: torch.nn.functional.mse_loss(model(inputs), targets), optimizer, clip)
        if step % config.eval_every == 0:
            with torch.no_grad():
                test_mse.append(float(torch.nn.functional.mse_loss(model(test_inputs), test_targets)))
            bar.set_postfix(T=lag, init=init.value, loss=f"{loss:.4f}", test=f"{test_mse[-1]:.4f}")
            if test_mse[-1] < config.threshold:
                bar.update(config.steps - step + 1)
                return RunResult(test_mse, step)
        bar.update(1)
    return RunResult(test_mse, None)


def run(config: ForgetBiasConfig, out: Path, progress: bool = True) -> Report:
    lags, seeds = config.lag_list(), range(config.seed, config.seed + config.seeds)
    runs: dict[ForgetInit, dict[int, list[RunResult]]] = {init: {lag: [] for lag in lags} for init in ForgetInit}
    total = len(ForgetInit) * len(lags) * config.seeds * config.steps
    with tqdm(total=total, desc="forget bias", unit="step", disable=not progress) as bar:
        for lag in lags:
            test = adding_problem(config.test_size, lag, torch.Generator().manual_seed(config.test_seed))
            for init in ForgetInit:
                for seed in seeds:
                    runs[init][lag].append(train_run(init, lag, seed, test, config, bar))

    rows = [_row(init, lag, runs[init][lag], config) for lag in lags for init in ForgetInit]
    summary = _summary(runs, config)
    figures = [_plot(runs, config, out / "forget_bias.png")]
    return Report(
        title=(
            f"Forget-gate initialisation on the adding problem: LSTM({config.units}), Adam {config.learning_rate:g}, "
            f"batch {config.batch_size}, {config.steps} steps, {config.seeds} seeds per row"
        ),
        columns=["T", "initialisation", "solved", f"steps to test MSE < {config.threshold:g}: median [min, max]", "final test MSE: mean ± std"],
        rows=rows,
        summary=summary,
        notes=_notes(runs, summary, config),
        figures=figures,
        data={
            "eval_steps": [config.eval_every * (k + 1) for k in range(config.steps // config.eval_every)],
            "test_mse": {init.value: {lag: [r.test_mse for r in runs[init][lag]] for lag in lags} for init in ForgetInit},
            "steps_to_threshold": {init.value: {lag: [r.steps_to_threshold for r in runs[init][lag]] for lag in lags} for init in ForgetInit},
        },
    )


def _solved_steps(results: list[RunResult]) -> list[int]:
    return [r.steps_to_threshold for r in results if r.steps_to_threshold is not None]


def _row(init: ForgetInit, lag: int, results: list[RunResult], config: ForgetBiasConfig) -> list:
    reached = _solved_steps(results)
    steps = f"{statistics.median(reached):.0f} [{min(reached)}, {max(reached)}]" if reached else "never"
    finals = [r.final_mse for r in results]
    spread = statistics.stdev(finals) if len(finals) > 1 else 0.0
    return [lag, init.label, f"{len(reached)}/{len(results)}", steps, f"{statistics.mean(finals):.2g} ± {spread:.1g}"]


def _summary(runs: dict[ForgetInit, dict[int, list[RunResult]]], config: ForgetBiasConfig) -> dict:
    def largest_solved(init: ForgetInit) -> Optional[int]:
        solved = [lag for lag, results in runs[init].items() if len(_solved_steps(results)) == len(results)]
        return max(solved) if solved else None

    def per_init(measure) -> dict:
        return {init.value: {lag: measure(results) for lag, results in runs[init].items()} for init in ForgetInit}

    return {
        "threshold": config.threshold,
        "seeds": config.seeds,
        "largest_lag_solved_by_all_seeds": {init.value: largest_solved(init) for init in ForgetInit},
        "seeds_solved": per_init(lambda results: len(_solved_steps(results))),
        "median_steps_to_threshold": per_init(lambda results: statistics.median(_solved_steps(results)) if _solved_steps(results) else None),
        "mean_final_mse": per_init(lambda results: statistics.mean(r.final_mse for r in results)),
    }


def _notes(runs: dict[ForgetInit, dict[int, list[RunResult]]], summary: dict, config: ForgetBiasConfig) -> list[str]:
    largest = summary["largest_lag_solved_by_all_seeds"]
    longest = max(config.lag_list())
    medians = summary["median_steps_to_threshold"]

    def median_text(init: ForgetInit) -> str:
        value = medians[init.value][longest]
        return "never" if value is None else f"{value:.0f}"

    notes = [
        "Largest T solved by every seed within the budget: "
        + ", ".join(f"{init.label}: {largest[init.value] or 'none'}" for init in ForgetInit)
        + f". Median steps to MSE < {config.threshold:g} at T={longest}: "
        + ", ".join(f"{init.label} {median_text(init)}" for init in ForgetInit)
        + ".",
    ]
    notes.append(_bias_note(summary, config))
    notes.append(
        "Chrono initialisation, which starts some units with memories as long as the sequence, was the fastest (median "
        "steps) at every T."
        if all(
            (medians["chrono"][lag] or math.inf) <= min(medians["one"][lag] or math.inf, medians["zero"][lag] or math.inf)
            for lag in config.lag_list()
        )
        else "Chrono initialisation was not the fastest at every T: see the table."
    )
    notes.append(
        "A run stops once solved, so the final MSE of a solved run is its first below the threshold; the same seed "
        "gives every initialisation the same weights and batches, so the rows differ only in the gate biases. Steps to "
        f"threshold are multiples of {config.eval_every} (the evaluation interval); 'solved' counts seeds that got there "
        f"within {config.steps} steps."
    )
    return notes


def _bias_note(summary: dict, config: ForgetBiasConfig) -> str:
    """Forget bias 1 against 0, T by T, and what that says about Jozefowicz et al.'s finding."""
    solved, medians = summary["seeds_solved"], summary["median_steps_to_threshold"]

    def steps(init: str, lag: int) -> str:
        value = medians[init][lag]
        return f"{solved[init][lag]}/{config.seeds}" + (f" in {value:.0f} steps" if value is not None else "")

    lags = config.lag_list()
    per_lag = "; ".join(f"T={lag}: bias 1 {steps('one', lag)}, bias 0 {steps('zero', lag)}" for lag in lags)
    more = sum(solved["one"][lag] for lag in lags) - sum(solved["zero"][lag] for lag in lags)
    faster = sum((medians["one"][lag] or math.inf) < (medians["zero"][lag] or math.inf) for lag in lags)
    slower = sum((medians["one"][lag] or math.inf) > (medians["zero"][lag] or math.inf) for lag in lags)
    if more > 0 or (more == 0 and faster > slower):
        verdict = ("Forget bias 1 did better than 0, in line with Jozefowicz et al. (2015): with bias 0 the forget gate "
                   "starts at 0.5, and the error from the end of the sequence halves at every step back.")
    elif more == 0 and faster == slower:
        verdict = "No clear difference between forget bias 1 and 0 here, unlike Jozefowicz et al. (2015)."
    else:
        verdict = "Forget bias 0 did better than 1 here, unlike Jozefowicz et al. (2015)."
    return (
        f"Seeds solved (median steps) per T: {per_lag}. {verdict} Adam rescales each parameter's gradient, which "
        "offsets part of a vanishing signal; Jozefowicz et al. compared architectures over many tasks and tuned "
        "hyperparameters, so this single task is a spot check of their finding, not a replication."
    )


def _plot(runs: dict[ForgetInit, dict[int, list[RunResult]]], config: ForgetBiasConfig, path: Path) -> Path:
    """Left: test MSE curves at the largest T, one line per seed. Right: steps to threshold vs T."""
    plt = pyplot()
    lags = config.lag_list()
    longest = lags[-1]
    colours = {ForgetInit.ZERO: "tab:red", ForgetInit.ONE: "tab:blue", ForgetInit.CHRONO: "tab:green"}
    figure, (curves, sweep) = plt.subplots(1, 2, figsize=(12, 4.5))
    for init in ForgetInit:
        for number, result in enumerate(runs[init][longest]):
            steps = [config.eval_every * (k + 1) for k in range(len(result.test_mse))]  # until solved or the budget
            curves.plot(steps, result.test_mse, color=colours[init], linewidth=1, alpha=0.8, label=init.label if number == 0 else None)
    curves.axhline(ADDING_BASELINE_MSE, color="0.5", linestyle="--", linewidth=1, label="always answer 1 (1/6)")
    curves.axhline(config.threshold, color="k", linestyle=":", linewidth=1, label=f"threshold {config.threshold:g}")
    curves.set_yscale("log")
    curves.set_xlabel("training step")
    curves.set_ylabel("test MSE")
    curves.set_title(f"Adding problem, T={longest}: {config.seeds} seeds each (a run stops once solved)", fontsize=10)
    curves.legend(fontsize=8)
    for offset, init in zip((-0.03, 0.0, 0.03), ForgetInit):
        sweep.plot([], [], color=colours[init], marker="o", label=init.label)  # the legend entry, even if no seed got there
        for lag in lags:
            reached = _solved_steps(runs[init][lag])
            position = lag * (1 + offset)
            missed = len(runs[init][lag]) - len(reached)
            if reached:
                median = statistics.median(reached)
                sweep.errorbar(
                    position, median, yerr=[[median - min(reached)], [max(reached) - median]], color=colours[init],
                    marker="o", capsize=3,
                )
            if missed:
                sweep.scatter([position], [config.steps * 1.08], color=colours[init], marker="x")
                sweep.annotate(f"{missed} never", (position, config.steps * 1.08), fontsize=7, color=colours[init],
                               xytext=(4, 2 + 8 * offset / 0.03), textcoords="offset points")
    sweep.axhline(config.steps, color="0.5", linestyle="--", linewidth=1)
    sweep.set_xscale("log")
    sweep.set_xticks(lags, [str(lag) for lag in lags])
    sweep.minorticks_off()
    sweep.set_ylim(0, config.steps * 1.2)
    sweep.set_xlabel("T (sequence length)")
    sweep.set_ylabel(f"steps to test MSE < {config.threshold:g}")
    sweep.set_title("Median [min, max] over seeds; x = seeds that never got there", fontsize=10)
    sweep.legend(fontsize=8, loc="upper left")
    return save_figure(figure, path)


EXPERIMENT = Experiment(
    name="forget-bias",
    summary="forget-gate bias 0 vs 1 vs chrono init on the adding problem over a sweep of lags (Jozefowicz et al. 2015)",
    config_class=ForgetBiasConfig,
    run=run,
    tiny={"lags": "10,20", "seeds": 2, "units": 8, "steps": 40, "eval_every": 10, "test_size": 64},
)
