"""Exploding gradients: a ReLU simple RNN against tanh on the adding problem, and what clipping does.

Pascanu, Mikolov & Bengio (2013) show that the gradient of a recurrent network can grow
exponentially with the distance back in time, so that one step of gradient descent lands
far off ("cliffs"), and that rescaling the gradient to a maximum global norm before the
step (their Algorithm 1, `Clip(max_norm=...)`) fixes it. Le, Jaitly & Hinton (2015)
train ReLU simple RNNs whose recurrent weights start as the identity (IRNN) with
clipping and a small learning rate.

Every run here is `Sequential(SimpleRNN(H, activation), Dense(1))` with the IRNN
initialisation (recurrent weights = identity, zero bias, input weights drawn from
N(0, input_weight_std^2)), trained by plain SGD (no momentum: with momentum or Adam the
step size is no longer the gradient times a constant, which hides the explosion) on the
adding problem. Eight settings: ReLU and tanh at the same learning rate, each with and
without clipping; ReLU at a small learning rate, with and without clipping; tanh at a
large learning rate, with and without clipping. Each over `seeds` seeds.

Recorded: the global gradient norm before clipping at every step, the loss, and, for the
first seed, `||dL/dh_t||` for every time step t at a few early steps (how strongly the
loss at the end depends on the state t steps back).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from longshort.cells import SimpleRNNCell
from longshort.experiments.base import Experiment, Report, pyplot, save_figure
from longshort.experiments.tasks import ADDING_BASELINE_MSE, adding_problem
from longshort.layers import SimpleRNN
from longshort.training import Clip, History, train_step
from longshort.wrappers import Dense, Sequential


class Nonlinearity(str, Enum):
    RELU = "relu"
    TANH = "tanh"


@dataclass
class ExplodingConfig:
    """Everything the result depends on."""

    length: int = 100  # T of the adding problem
    units: int = 64  # H of the simple RNN
    batch_size: int = 32  # sequences per SGD step
    steps: int = 1500  # SGD steps per run; a run that diverges stops there
    learning_rate: float = 0.01  # the shared learning rate of ReLU and tanh
    small_learning_rate: float = 0.001  # ReLU's "small learning rate" runs
    large_learning_rate: float = 0.1  # tanh's "large learning rate" runs: does tanh explode too?
    clip_norm: float = 1.0  # max global gradient norm of the clipped runs (Pascanu et al.'s threshold)
    input_weight_std: float = 0.001  # input weights ~ N(0, std^2); recurrent = identity, bias = 0 (IRNN)
    divergence_loss: float = 1000.0  # a run has diverged once its loss (or gradient norm) is non-finite or its loss exceeds this
    profile_steps: int = 10  # ||dL/dh_t|| is measured before steps 0, 1, ..., and this one (first seed)
    profile_batch: int = 256  # sequences for the ||dL/dh_t|| profiles
    test_size: int = 1000  # fresh sequences for the final test MSE
    seeds: int = 3  # runs per setting: seeds seed, seed + 1, ...
    seed: int = 0

    def __post_init__(self) -> None:
        if self.length < 2:
            raise ValueError(f"length must be >= 2, got {self.length}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        for name in ("units", "batch_size", "steps", "profile_batch", "test_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("learning_rate", "small_learning_rate", "large_learning_rate", "clip_norm", "divergence_loss"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.profile_steps < 0:
            raise ValueError(f"profile_steps must be >= 0, got {self.profile_steps}")
        if len({self.learning_rate, self.small_learning_rate, self.large_learning_rate}) < 3:
            raise ValueError("learning_rate, small_learning_rate and large_learning_rate must differ (each names its own rows)")


@dataclass(frozen=True)
class Setting:
    """One row of the table: which nonlinearity, which learning rate, clipped or not."""

    nonlinearity: Nonlinearity
    learning_rate: float
    clipped: bool

    @property
    def label(self) -> str:
        clipping = "clipped" if self.clipped else "unclipped"
        return f"{self.nonlinearity.value}, lr {self.learning_rate:g}, {clipping}"


def settings(config: ExplodingConfig) -> list[Setting]:
    relu, tanh = Nonlinearity.RELU, Nonlinearity.TANH
    return [
        Setting(relu, config.learning_rate, clipped=False),
        Setting(tanh, config.learning_rate, clipped=False),
        Setting(relu, config.learning_rate, clipped=True),
        Setting(tanh, config.learning_rate, clipped=True),
        Setting(relu, config.small_learning_rate, clipped=False),
        Setting(relu, config.small_learning_rate, clipped=True),
        Setting(tanh, config.large_learning_rate, clipped=False),
        Setting(tanh, config.large_learning_rate, clipped=True),
    ]


@dataclass
class RunResult:
    """One setting, one seed."""

    history: History  # loss and pre-clip global gradient norm per step, up to divergence
    diverged_at: Optional[int]  # the step whose loss or gradient was non-finite or too large; None if it never was
    test_mse: float  # on fresh sequences after training; nan if diverged
    profiles: dict[int, list[float]]  # step -> ||dL/dh_t|| for t = 0..T-1 (first seed only)


def irnn_model(nonlinearity: Nonlinearity, units: int, input_weight_std: float) -> Sequential:
    """`SimpleRNN -> Dense(1)` with recurrent weights = identity, zero bias, small Gaussian input weights."""
    rnn = SimpleRNN(units, input_size=2, activation=nonlinearity.value)
    with torch.no_grad():
        rnn.cell.weight_hh.copy_(torch.eye(units))
        rnn.cell.weight_ih.normal_(0.0, input_weight_std)
        rnn.cell.bias.zero_()
    return Sequential(rnn, Dense(1, input_size=units))


def hidden_state_gradient_norms(cell: SimpleRNNCell, head: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    """`||dL/dh_t||` for t = 0..T-1, averaged over the batch, where L is the MSE of `head(h_T)`.

    Steps the cell by hand so that every state h_t is a node of the graph; the gradient
    with respect to it is the total one, through all later states. Leaves the parameters'
    `.grad` untouched.
    """
    state = cell.initial_state(inputs.shape[0], inputs)
    states = []
    for x_t in inputs.unbind(1):  # T tensors (B, F)
        _, state = cell(x_t, state)  # (B, H)
        states.append(state)
    loss = F.mse_loss(head(state), targets)
    gradients = torch.autograd.grad(loss, states)  # T tensors (B, H)
    return torch.stack(gradients, dim=1).norm(dim=-1).mean(dim=0)  # (B, T, H) -> (T,)


def has_diverged(loss: float, grad_norm: float, divergence_loss: float) -> bool:
    """True when a training step went off: non-finite loss or gradient norm, or a loss above `divergence_loss`."""
    return not (math.isfinite(loss) and math.isfinite(grad_norm)) or loss > divergence_loss


def train_run(setting: Setting, seed: int, config: ExplodingConfig, profile: bool, bar: tqdm) -> RunResult:
    """Train one setting from one seed with plain SGD; stop at the first diverged step."""
    torch.manual_seed(seed)
    model = irnn_model(setting.nonlinearity, config.units, config.input_weight_std)
    rnn, head = model[0], model[1]
    optimizer = torch.optim.SGD(model.parameters(), lr=setting.learning_rate)
    clip = Clip(max_norm=config.clip_norm) if setting.clipped else None
    batches = torch.Generator().manual_seed(seed)
    profile_inputs, profile_targets = adding_problem(config.profile_batch, config.length, torch.Generator().manual_seed(10_000 + seed))
    profile_at = {0, 1, config.profile_steps} if profile else set()
    history, profiles, diverged_at = History(), {}, None
    for step in range(config.steps):
        if step in profile_at:
            profiles[step] = hidden_state_gradient_norms(rnn.cell, head, profile_inputs, profile_targets).tolist()
        inputs, targets = adding_problem(config.batch_size, config.length, batches)  # (B, T, 2), (B, 1)
        loss = train_step(model, lambda: F.mse_loss(model(inputs), targets), optimizer, clip, history)
        bar.update()
        bar.set_postfix_str(f"{setting.label}, seed {seed}: loss {loss:.3g}")
        if has_diverged(loss, history.grad_norms[-1], config.divergence_loss):
            diverged_at = step
            bar.update(config.steps - step - 1)
            break
    test_mse = math.nan if diverged_at is not None else _test_mse(model, config, seed)
    return RunResult(history, diverged_at, test_mse, profiles)


def _test_mse(model: nn.Module, config: ExplodingConfig, seed: int) -> float:
    inputs, targets = adding_problem(config.test_size, config.length, torch.Generator().manual_seed(20_000 + seed))
    with torch.no_grad():
        return float(F.mse_loss(model(inputs), targets))


def _growth(history: History) -> float:
    """How many times the largest gradient norm exceeds the first one (inf if it went non-finite)."""
    first, largest = history.grad_norms[0], _largest(history.grad_norms)
    return largest / first if 0 < first < math.inf else math.inf


def _largest(values: list[float]) -> float:
    """The maximum, with any non-finite value (nan included) counting as inf."""
    return max(value if math.isfinite(value) else math.inf for value in values)


def run(config: ExplodingConfig, out: Path, progress: bool = True) -> Report:
    seeds = list(range(config.seed, config.seed + config.seeds))
    runs: dict[Setting, list[RunResult]] = {}
    bar = tqdm(total=len(settings(config)) * len(seeds) * config.steps, desc="exploding", unit="step", disable=not progress)
    for setting in settings(config):
        runs[setting] = [train_run(setting, seed, config, profile=seed == seeds[0], bar=bar) for seed in seeds]
    bar.close()

    rows, summary = [], {}
    for setting, results in runs.items():
        diverged = [result.diverged_at for result in results if result.diverged_at is not None]
        finite_mse = [result.test_mse for result in results if not math.isnan(result.test_mse)]
        growth = [_growth(result.history) for result in results]
        max_norm = _largest([norm for result in results for norm in result.history.grad_norms])
        final_mse = sum(finite_mse) / len(finite_mse) if finite_mse else math.nan
        rows.append([
            setting.nonlinearity.value, setting.learning_rate, "yes" if setting.clipped else "no",
            f"{len(diverged)}/{len(seeds)}", min(diverged) if diverged else "-", results[0].history.grad_norms[0],
            max_norm, min(growth), final_mse,
        ])
        summary[setting.label] = {
            "nonlinearity": setting.nonlinearity.value,
            "learning_rate": setting.learning_rate,
            "clipped": setting.clipped,
            "diverged_seeds": len(diverged),
            "diverged_at": [result.diverged_at for result in results],
            "grad_norm_growth": growth,  # per seed: max / first gradient norm
            "max_grad_norm": max_norm,
            "test_mse": [result.test_mse for result in results],
        }
    figures = [
        _plot_training(runs, config, out / "exploding-training.png"),
        _plot_profiles(runs, config, out / "exploding-time-steps.png"),
    ]
    return Report(
        title=(
            f"Exploding gradients: simple RNN (H={config.units}, IRNN init: recurrent weights = identity, zero bias, "
            f"input weights N(0, {config.input_weight_std:g}^2)) on the adding problem, T={config.length}, plain SGD, "
            f"batch {config.batch_size}, {config.steps} steps, {len(seeds)} seeds; clipping = global norm {config.clip_norm:g}"
        ),
        columns=[
            "nonlinearity", "lr", "clipped", "diverged seeds", "first divergence (step)", "grad norm at step 0",
            "max grad norm", "min growth over seeds (max/first)", "test MSE (finite runs)",
        ],
        rows=rows,
        summary=summary,
        notes=_notes(runs, config),
        figures=figures,
        data={
            setting.label: [
                {
                    "seed": seed,
                    "losses": result.history.losses,
                    "grad_norms": result.history.grad_norms,
                    "diverged_at": result.diverged_at,
                    "time_step_grad_norms": result.profiles,
                }
                for seed, result in zip(seeds, results)
            ]
            for setting, results in runs.items()
        },
    )


def _notes(runs: dict[Setting, list[RunResult]], config: ExplodingConfig) -> list[str]:
    def count(setting: Setting) -> str:
        results = runs[setting]
        return f"{sum(result.diverged_at is not None for result in results)}/{len(results)}"

    relu, tanh, relu_clip, tanh_clip, relu_small, relu_small_clip, tanh_large, tanh_large_clip = settings(config)
    clipped = [setting for setting in runs if setting.clipped]
    clipped_diverged = sum(result.diverged_at is not None for setting in clipped for result in runs[setting])
    best_mse = min((result.test_mse for results in runs.values() for result in results if not math.isnan(result.test_mse)), default=math.nan)
    return [
        f"Unclipped ReLU at lr {relu.learning_rate:g} diverged in {count(relu)} seeds; unclipped tanh at the same lr "
        f"in {count(tanh)}, and at {tanh_large.learning_rate:g} in {count(tanh_large)}. Clipped runs diverged in "
        f"{clipped_diverged} of {sum(len(runs[setting]) for setting in clipped)}.",
        "tanh is not the fix: its states are bounded, so at a moderate lr its loss cannot blow up the way ReLU's "
        "does, but at a larger lr its gradient explodes and training diverges too. This is Pascanu et al.'s point: "
        "tanh networks explode as well, and clipping the gradient norm, not the choice of tanh, is what prevents it.",
        f"Small lr without clipping (ReLU, lr {relu_small.learning_rate:g}): diverged in {count(relu_small)} seeds; "
        "its gradient norm still spikes by orders of magnitude early on (see the growth column), it just does not "
        "take the step far enough to leave the finite region.",
        "The per-time-step profiles show the mechanism: at initialisation (identity recurrence, tiny inputs) ReLU and "
        "tanh pass the gradient back almost unchanged; after one unclipped SGD step ReLU's ||dL/dh_t|| grows "
        "exponentially with the distance back from the loss, tanh's shrinks (saturation).",
        f"ReLU with identity init + clipping + a small lr (Le et al. 2015's IRNN recipe) trains stably here, but "
        f"plain SGD does not get it below the baseline MSE {ADDING_BASELINE_MSE:.3f} within {config.steps} steps "
        f"(best test MSE of any finite run {best_mse:.3f}); Le et al. train IRNNs on the adding problem for far "
        "longer. This experiment shows stability, not learning.",
    ]


def _log_safe(values: list[float]) -> list[float]:
    """Non-finite values as nan, so a log-scale plot leaves them out instead of failing."""
    return [value if math.isfinite(value) else math.nan for value in values]


def _plot_training(runs: dict[Setting, list[RunResult]], config: ExplodingConfig, path: Path) -> Path:
    """(a) global gradient norm per step and (b) training loss per step, every setting and seed, log-log."""
    plt = pyplot()
    figure, (norms, losses) = plt.subplots(1, 2, figsize=(13, 5))
    colours = plt.get_cmap("tab10")
    for index, (setting, results) in enumerate(runs.items()):
        style = {"color": colours(index), "linestyle": "-" if setting.clipped else "--", "linewidth": 1, "alpha": 0.8}
        for seed_index, result in enumerate(results):
            steps = range(1, len(result.history.losses) + 1)
            label = setting.label if seed_index == 0 else None
            norms.plot(steps, _log_safe(result.history.grad_norms), label=label, **style)
            losses.plot(steps, _log_safe(result.history.losses), label=label, **style)
            if result.diverged_at is not None:
                finite = [value for value in _log_safe(result.history.grad_norms) if not math.isnan(value)]
                norms.plot(len(steps), max(finite, default=1.0), "x", color=colours(index), markersize=8)
    for axes, name in ((norms, "global gradient norm before clipping"), (losses, "training loss (MSE)")):
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("SGD step")
        axes.set_ylabel(name)
    losses.axhline(ADDING_BASELINE_MSE, color="k", linestyle=":", linewidth=1, label="baseline (always answer 1)")
    norms.set_title(f"(a) gradient norm per step (x: run diverged); clip at {config.clip_norm:g}")
    losses.set_title(f"(b) loss, adding problem T={config.length}")
    losses.legend(fontsize=7, loc="upper right")
    return save_figure(figure, path)


def _plot_profiles(runs: dict[Setting, list[RunResult]], config: ExplodingConfig, path: Path) -> Path:
    """(c) ||dL/dh_t|| against the distance back from the loss, for the first seed of the shared-lr settings."""
    plt = pyplot()
    shown = settings(config)[:3]  # ReLU and tanh unclipped, ReLU clipped, all at the shared lr
    figure, panels = plt.subplots(1, len(shown), figsize=(13, 4), sharey=True)
    for axes, setting in zip(panels, shown):
        for step, norms in sorted(runs[setting][0].profiles.items()):
            distance = range(len(norms) - 1, -1, -1)  # t = 0 is T-1 steps back from the loss
            axes.plot(distance, _log_safe(norms), label=f"before step {step}")
        axes.set_yscale("log")
        axes.set_xlabel("steps back from the loss (T-1-t)")
        axes.set_title(f"(c) {setting.label}")
        axes.legend(fontsize=8)
    panels[0].set_ylabel("||dL/dh_t||, mean over sequences")
    return save_figure(figure, path)


EXPERIMENT = Experiment(
    name="exploding",
    summary="ReLU vs tanh simple RNN on the adding problem with plain SGD: gradient explosion and clipping (Pascanu et al. 2013)",
    config_class=ExplodingConfig,
    run=run,
    tiny={"length": 12, "units": 8, "steps": 6, "seeds": 1, "profile_steps": 3, "profile_batch": 8, "test_size": 16},
)
