"""Exploding gradients: a ReLU simple RNN against tanh on the adding problem, and what clipping does.

Pascanu, Mikolov & Bengio (2013) show that the gradient of a recurrent network can grow
exponentially with the distance back in time, so that one step of gradient descent lands
far off ("cliffs"), and that rescaling the gradient to a maximum global norm before the
step (their Algorithm 1, `Clip(max_norm=...)`) fixes it. They show it for tanh networks
too: tanh bounds the state, not the gradient. Le, Jaitly & Hinton (2015) train ReLU simple
RNNs whose recurrent weights start as the identity (IRNN) with clipping and a small
learning rate.

Every run is `Sequential(SimpleRNN(H, activation), Dense(1))` on the adding problem,
trained by plain SGD (no momentum: with momentum or Adam the step is no longer the
gradient times a constant, which hides the explosion). Initialisation, stated in every
table title: input weights ~ N(0, input_weight_std^2), bias 0, and recurrent weights
either the identity (IRNN) or `spectral_radius` times a random orthogonal matrix (every
eigenvalue of modulus 1.5). The settings (`settings`): ReLU and tanh, each from both
recurrent initialisations, at the same learning rate, each without and with clipping;
ReLU (identity) at a small learning rate; tanh (identity) at a large one; each over
`seeds` seeds.

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
from longshort.training import Clip, History, NonFiniteError, train_step
from longshort.wrappers import Dense, Sequential

GROWTH_ORDERS = 2  # "grows by orders of magnitude": the largest gradient norm is at least 10^2 x the first


class Nonlinearity(str, Enum):
    RELU = "relu"
    TANH = "tanh"


class RecurrentInit(str, Enum):
    """How the recurrent weights W_hh start (input weights ~ N(0, input_weight_std^2) and bias 0 in both)."""

    IDENTITY = "identity"  # W_hh = I: Le et al.'s (2015) IRNN; spectral radius 1
    SCALED = "scaled"  # W_hh = spectral_radius x a random orthogonal matrix: every eigenvalue has modulus spectral_radius


@dataclass
class ExplodingConfig:
    """Everything the result depends on."""

    length: int = 100  # T of the adding problem
    units: int = 32  # H of the simple RNN
    batch_size: int = 32  # sequences per SGD step
    steps: int = 500  # SGD steps per run; a run that diverges stops there
    learning_rate: float = 0.01  # the shared learning rate of ReLU and tanh
    small_learning_rate: float = 0.001  # ReLU's "small learning rate" runs
    large_learning_rate: float = 0.1  # tanh's "large learning rate" runs: does tanh explode too?
    clip_norm: float = 1.0  # max global gradient norm of the clipped runs (Pascanu et al.'s threshold)
    spectral_radius: float = 1.5  # the "scaled" recurrent init: this times a random orthogonal matrix
    input_weight_std: float = 0.001  # input weights ~ N(0, std^2), bias = 0, in every run
    divergence_loss: float = 1000.0  # a run has diverged once its loss (or gradient norm) is non-finite or its loss exceeds this
    profile_steps: int = 10  # ||dL/dh_t|| is measured before steps 0, 1, ..., and this one (first seed)
    profile_batch: int = 256  # sequences for the ||dL/dh_t|| profiles
    test_size: int = 1000  # fresh sequences for the final test MSE
    seeds: int = 3  # runs per setting: seeds seed, seed + 1, ...
    seed: int = 0
    threads: int = 1  # torch CPU threads (see tasks.long_lag_cpu)

    def __post_init__(self) -> None:
        if self.length < 2:
            raise ValueError(f"length must be >= 2, got {self.length}")
        for name in ("units", "batch_size", "steps", "profile_batch", "test_size", "seeds", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("learning_rate", "small_learning_rate", "large_learning_rate", "clip_norm", "spectral_radius", "divergence_loss"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.input_weight_std < 0 or self.profile_steps < 0:
            raise ValueError("input_weight_std and profile_steps must be >= 0")
        if len({self.learning_rate, self.small_learning_rate, self.large_learning_rate}) < 3:
            raise ValueError("learning_rate, small_learning_rate and large_learning_rate must differ (each names its own rows)")


@dataclass(frozen=True)
class Setting:
    """One row of the table: which nonlinearity, which recurrent initialisation, which learning rate, clipped or not."""

    nonlinearity: Nonlinearity
    init: RecurrentInit
    learning_rate: float
    clipped: bool

    @property
    def model(self) -> str:
        """The setting without the clipping: the title of its panel."""
        return f"{self.nonlinearity.value}, {self.init.value} init, lr {self.learning_rate:g}"

    @property
    def label(self) -> str:
        return f"{self.model}, {'clipped' if self.clipped else 'unclipped'}"


def settings(config: ExplodingConfig) -> list[Setting]:
    """Each model unclipped then clipped: ReLU and tanh from both inits at the shared lr, then small-lr ReLU, large-lr tanh."""
    relu, tanh, identity, scaled = Nonlinearity.RELU, Nonlinearity.TANH, RecurrentInit.IDENTITY, RecurrentInit.SCALED
    models = [
        (relu, identity, config.learning_rate),
        (relu, scaled, config.learning_rate),
        (tanh, identity, config.learning_rate),
        (tanh, scaled, config.learning_rate),
        (relu, identity, config.small_learning_rate),
        (tanh, identity, config.large_learning_rate),
    ]
    return [Setting(*model, clipped=clipped) for model in models for clipped in (False, True)]


@dataclass
class RunResult:
    """One setting, one seed."""

    history: History  # loss and pre-clip global gradient norm per step, up to divergence
    diverged_at: Optional[int]  # the step whose loss or gradient was non-finite or too large; None if it never was
    test_mse: float  # on fresh sequences after training; nan if diverged
    profiles: dict[int, list[float]]  # step -> ||dL/dh_t|| for t = 0..T-1 (first seed only)


def simple_rnn_model(nonlinearity: Nonlinearity, init: RecurrentInit, config: ExplodingConfig) -> Sequential:
    """`SimpleRNN -> Dense(1)`: recurrent weights as `init` says, zero bias, small Gaussian input weights."""
    units = config.units
    rnn = SimpleRNN(units, input_size=2, activation=nonlinearity.value)
    with torch.no_grad():
        if init is RecurrentInit.IDENTITY:
            rnn.cell.weight_hh.copy_(torch.eye(units))
        else:
            nn.init.orthogonal_(rnn.cell.weight_hh).mul_(config.spectral_radius)
        rnn.cell.weight_ih.normal_(0.0, config.input_weight_std)
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


def train_run(setting: Setting, seed: int, config: ExplodingConfig, bar: tqdm) -> RunResult:
    """Train one setting from one seed with plain SGD; stop at the first diverged step."""
    torch.manual_seed(seed)
    model = simple_rnn_model(setting.nonlinearity, setting.init, config)
    rnn, head = model[0], model[1]
    optimizer = torch.optim.SGD(model.parameters(), lr=setting.learning_rate)
    clip = Clip(max_norm=config.clip_norm) if setting.clipped else None
    batches = torch.Generator().manual_seed(seed)
    profile_inputs, profile_targets = adding_problem(config.profile_batch, config.length, torch.Generator().manual_seed(10_000 + seed))
    history, profiles, diverged_at = History(), {}, None
    for step in range(config.steps):
        if step in (0, 1, config.profile_steps):
            profiles[step] = hidden_state_gradient_norms(rnn.cell, head, profile_inputs, profile_targets).tolist()
        inputs, targets = adding_problem(config.batch_size, config.length, batches)  # (B, T, 2), (B, 1)
        try:
            loss = train_step(model, lambda: F.mse_loss(model(inputs), targets), optimizer, clip, history)
        except NonFiniteError:  # the step is recorded in history, not taken: the run has diverged
            loss = history.losses[-1]
        bar.update()
        bar.set_postfix_str(f"{setting.label}, seed {seed}: loss {loss:.3g}", refresh=False)
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


def growth(result: RunResult) -> float:
    """How many times the largest gradient norm exceeds the first one (inf once it went non-finite)."""
    first, largest = result.history.grad_norms[0], _largest(result.history.grad_norms)
    return largest / first if 0 < first < math.inf else math.inf


def exploded(result: RunResult) -> bool:
    """The issue's criterion: the run diverged, or its gradient norm grew by GROWTH_ORDERS orders of magnitude."""
    return result.diverged_at is not None or growth(result) >= 10**GROWTH_ORDERS


def back_in_time_ratio(profile: list[float]) -> float:
    """||dL/dh_0|| / ||dL/dh_{T-1}||: > 1 the gradient grows going back in time, < 1 it vanishes."""
    first, last = profile[0], profile[-1]
    if not math.isfinite(first):
        return math.inf
    return first / last if last > 0 else math.inf if first > 0 else math.nan


def _largest(values: list[float]) -> float:
    """The maximum, with any non-finite value (nan included) counting as inf."""
    return max(value if math.isfinite(value) else math.inf for value in values)


def _setting_summary(setting: Setting, results: list[RunResult], config: ExplodingConfig) -> dict:
    return {
        "nonlinearity": setting.nonlinearity.value,
        "init": setting.init.value,
        "learning_rate": setting.learning_rate,
        "clipped": setting.clipped,
        "diverged_seeds": sum(result.diverged_at is not None for result in results),
        "exploded_seeds": sum(exploded(result) for result in results),  # diverged, or growth >= 10^GROWTH_ORDERS
        "diverged_at": [result.diverged_at for result in results],
        "grad_norm_growth": [growth(result) for result in results],  # per seed: max / first gradient norm
        "max_grad_norm": _largest([norm for result in results for norm in result.history.grad_norms]),
        "back_in_time_ratio": {  # per seed: ||dL/dh_0|| / ||dL/dh_T-1|| before these steps
            step: [back_in_time_ratio(result.profiles[step]) for result in results if step in result.profiles]
            for step in sorted(results[0].profiles)
        },
        "test_mse": [result.test_mse for result in results],
    }


def _row(setting: Setting, results: list[RunResult], config: ExplodingConfig) -> list:
    diverged = [result.diverged_at for result in results if result.diverged_at is not None]
    finite_mse = [result.test_mse for result in results if not math.isnan(result.test_mse)]
    return [
        setting.nonlinearity.value, setting.init.value, setting.learning_rate, "yes" if setting.clipped else "no",
        f"{len(diverged)}/{len(results)}" + (f" ({diverged.count(0)} at init)" if 0 in diverged else ""),
        min(diverged) if diverged else "-",
        f"{sum(exploded(result) for result in results)}/{len(results)}",
        min(growth(result) for result in results), _largest([norm for result in results for norm in result.history.grad_norms]),
        sum(finite_mse) / len(finite_mse) if finite_mse else math.nan,
    ]


def run(config: ExplodingConfig, out: Path, progress: bool = True) -> Report:
    seeds = list(range(config.seed, config.seed + config.seeds))
    runs: dict[Setting, list[RunResult]] = {}
    with tqdm(total=len(settings(config)) * len(seeds) * config.steps, desc="exploding", unit="step", disable=not progress) as bar:
        for setting in settings(config):
            runs[setting] = [train_run(setting, seed, config, bar) for seed in seeds]

    unclipped_relu = [s for s in runs if s.nonlinearity is Nonlinearity.RELU and not s.clipped and s.learning_rate == config.learning_rate]
    summary = {
        "settings": {setting.label: _setting_summary(setting, results, config) for setting, results in runs.items()},
        "unclipped_relu_exploded_every_seed": {s.init.value: all(exploded(r) for r in runs[s]) for s in unclipped_relu},
        # diverged at step 0 = the initial weights' loss was already beyond divergence_loss: before any update
        "clipped_runs_diverged_in_training": sum(bool(r.diverged_at) for s in runs if s.clipped for r in runs[s]),
        "clipped_runs_diverged_at_init": sum(r.diverged_at == 0 for s in runs if s.clipped for r in runs[s]),
        "clipped_runs": sum(len(runs[s]) for s in runs if s.clipped),
        "growth_orders": GROWTH_ORDERS,
    }
    figures = [
        _plot_training(runs, config, out / "exploding-training.png"),
        _plot_profiles(runs, config, out / "exploding-time-steps.png"),
    ]
    return Report(
        title=(
            f"Exploding gradients: simple RNN (H={config.units}) on the adding problem, T={config.length}, plain SGD, "
            f"batch {config.batch_size}, {config.steps} steps, {len(seeds)} seeds. Init: input weights N(0, "
            f"{config.input_weight_std:g}^2), bias 0, recurrent weights identity (IRNN) or {config.spectral_radius:g} x random "
            f"orthogonal (scaled). Clipping: global norm {config.clip_norm:g} (Pascanu et al. 2013, Algorithm 1)"
        ),
        columns=[
            "nonlinearity", "init", "lr", "clipped", "diverged", "first divergence (step)",
            f"exploded (diverged or growth >= 1e{GROWTH_ORDERS})", "min growth over seeds (max/first grad norm)",
            "max grad norm", "test MSE (finite runs)",
        ],
        rows=[_row(setting, results, config) for setting, results in runs.items()],
        summary=summary,
        notes=_notes(runs, summary, config),
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


def _notes(runs: dict[Setting, list[RunResult]], summary: dict, config: ExplodingConfig) -> list[str]:
    table = summary["settings"]

    def count(setting: Setting, key: str = "diverged_seeds") -> str:
        return f"{table[setting.label][key]}/{len(runs[setting])}"

    def growth_text(setting: Setting) -> str:
        low, high = min(table[setting.label]["grad_norm_growth"]), max(table[setting.label]["grad_norm_growth"])
        if high <= 1:
            return "gradient norm never above its first value"
        top = "non-finite" if math.isinf(high) else f"{high:.3g}x"
        return f"largest gradient norm {top if low == high else f'{low:.3g}x to {top}'} its first"

    def first_norms(setting: Setting) -> str:
        return "..".join(f"{value:.2g}" for value in _extremes([result.history.grad_norms[0] for result in runs[setting]]))

    (relu, relu_clip, relu_scaled, relu_scaled_clip, tanh, tanh_clip, tanh_scaled, tanh_scaled_clip,
     relu_small, relu_small_clip, tanh_large, tanh_large_clip) = settings(config)
    at_init = [(s, seed) for s in runs for seed, result in enumerate(runs[s], config.seed) if result.diverged_at == 0]
    unclipped_tanh = (tanh, tanh_scaled, tanh_large)
    tanh_diverged = [s for s in unclipped_tanh if table[s.label]["diverged_seeds"]]
    return [
        f"Unclipped ReLU at lr {config.learning_rate:g}: with identity init it diverged in {count(relu)} seeds "
        f"({growth_text(relu)}); with {config.spectral_radius:g} x orthogonal init in {count(relu_scaled)} "
        f"({growth_text(relu_scaled)}). Exploded (diverged, or gradient norm up >= 1e{GROWTH_ORDERS}x): "
        f"{count(relu, 'exploded_seeds')} and {count(relu_scaled, 'exploded_seeds')}.",
        f"Clipped runs: {summary['clipped_runs_diverged_in_training']} of {summary['clipped_runs']} diverged during "
        "training. "
        + (
            f"{len([1 for s, _ in at_init if s.clipped])} started beyond the threshold: "
            + ", ".join(f"{s.model} seed {seed} (initial loss {runs[s][seed - config.seed].history.losses[0]:.2g})" for s, seed in at_init if s.clipped)
            + ". With ReLU the state itself can grow by up to the spectral radius per step, so the first forward "
            "pass is already far off, before any update: there is no step for clipping to shorten."
            if any(s.clipped for s, _ in at_init)
            else "None started beyond the threshold."
        ),
        "Unclipped tanh: "
        + "; ".join(f"{s.model}: diverged {count(s)}, {growth_text(s)}" for s in unclipped_tanh)
        + f". With {config.spectral_radius:g} x orthogonal init tanh's gradient norm at the start was {first_norms(tanh_scaled)}, "
        f"against {first_norms(tanh)} from the identity"
        + (": its gradient explodes back in time too. " if _first(runs[tanh_scaled]) > 10 * _first(runs[tanh]) else ". ")
        + (
            "tanh diverged too ("
            + ", ".join(f"{s.model}: {count(s)} unclipped, {count(_clipped(s, runs))} clipped" for s in tanh_diverged)
            + "): tanh bounds the state, not the gradient or the step (Pascanu et al. 2013 report tanh networks explode "
            "as well), and clipping, not the choice of tanh, is what prevented divergence here."
            if tanh_diverged
            else "No unclipped tanh run diverged here; that is no evidence that tanh prevents it: Pascanu et al. (2013) "
            "report tanh networks explode too, and clipping, not tanh alone, is their fix."
        ),
        f"Small lr without clipping (ReLU, identity, lr {config.small_learning_rate:g}): diverged in {count(relu_small)} "
        f"seeds within {config.steps} steps; {growth_text(relu_small)}"
        + (
            ": a smaller step makes a cliff less likely to throw the run off; it does not stop the gradient from exploding."
            if table[relu_small.label]["exploded_seeds"]
            else "."
        ),
        _irnn_note(runs, relu_small_clip, relu_clip, config),
        _profile_note(runs, (relu, relu_scaled, tanh, tanh_scaled), config),
    ]


def _first(results: list[RunResult]) -> float:
    """The smallest first-step gradient norm over the seeds."""
    return min(result.history.grad_norms[0] for result in results)


def _clipped(setting: Setting, runs: dict[Setting, list[RunResult]]) -> Setting:
    """The clipped twin of an unclipped setting."""
    return next(s for s in runs if s.clipped and s.model == setting.model)


def _extremes(values: list[float]) -> list[float]:
    """[min, max], or one value when they are equal."""
    return sorted({min(values), max(values)})


def _irnn_note(runs: dict[Setting, list[RunResult]], irnn: Setting, relu_clip: Setting, config: ExplodingConfig) -> str:
    """What ReLU + identity init + clipping (+ small lr) reach: Le et al.'s IRNN recipe."""

    def mse(setting: Setting) -> str:
        values = [result.test_mse for result in runs[setting]]
        return ", ".join("nan" if math.isnan(value) else f"{value:.3f}" for value in values)

    return (
        f"Le et al.'s (2015) IRNN recipe, ReLU + identity init + clipping, trains without diverging here: test MSE per seed "
        f"{mse(relu_clip)} at lr {config.learning_rate:g} and {mse(irnn)} at lr {config.small_learning_rate:g}, against "
        f"{ADDING_BASELINE_MSE:.3f} for always answering 1. Within {config.steps} plain SGD steps that is stability, not "
        "a solution of the task: Le et al. train IRNNs on the adding problem for many thousands of steps."
    )


def _profile_note(runs: dict[Setting, list[RunResult]], shown: tuple[Setting, ...], config: ExplodingConfig) -> str:
    def ratios(setting: Setting) -> str:
        profiles = runs[setting][0].profiles
        return ", ".join(f"{back_in_time_ratio(profiles[step]):.2g} before step {step}" for step in sorted(profiles))

    return (
        f"Per time step (first seed), ||dL/dh_0|| / ||dL/dh_T-1||, how much stronger the gradient is {config.length - 1} "
        "steps back from the loss than at it (> 1: grows going back, < 1: vanishes): "
        + "; ".join(f"{s.model}: {ratios(s)}" for s in shown)
        + "."
    )


def _log_safe(values: list[float]) -> list[float]:
    """Non-finite values as nan, so a log-scale plot leaves them out instead of failing."""
    return [value if math.isfinite(value) else math.nan for value in values]


def _plot_training(runs: dict[Setting, list[RunResult]], config: ExplodingConfig, path: Path) -> Path:
    """One column per model: gradient norm per step (top) and loss per step (bottom), unclipped red, clipped blue."""
    plt = pyplot()
    models = list(dict.fromkeys(setting.model for setting in runs))  # in order, each once
    figure, panels = plt.subplots(2, len(models), figsize=(3.3 * len(models), 6.4), sharex=True, squeeze=False)
    for column, model in enumerate(models):
        norms, losses = panels[0][column], panels[1][column]
        for setting in (s for s in runs if s.model == model):
            colour, layer = ("tab:blue", 2) if setting.clipped else ("tab:red", 3)  # unclipped on top: they end soonest
            for seed_index, result in enumerate(runs[setting]):
                label = ("clipped" if setting.clipped else "unclipped") if seed_index == 0 else None
                steps = range(1, len(result.history.losses) + 1)
                style = {"color": colour, "linewidth": 0.8, "alpha": 0.7, "zorder": layer}
                norms.plot(steps, _log_safe(result.history.grad_norms), label=label, **style)
                losses.plot(steps, _log_safe(result.history.losses), **style)
                if result.diverged_at is not None:
                    finite = [value for value in _log_safe(result.history.grad_norms) if not math.isnan(value)]
                    norms.plot(len(steps), max(finite, default=1.0), "x", color=colour, markersize=9, markeredgewidth=2, zorder=4)
        norms.axhline(config.clip_norm, color="k", linestyle=":", linewidth=1)
        losses.axhline(ADDING_BASELINE_MSE, color="k", linestyle=":", linewidth=1)
        norms.set_title(model, fontsize=9)
        losses.set_xlabel("SGD step")
        for axes in (norms, losses):
            axes.set_yscale("log")
    panels[0][0].set_ylabel(f"gradient norm before clipping\n(dotted: clip at {config.clip_norm:g}; x: diverged)")
    panels[1][0].set_ylabel("training loss (MSE)\n(dotted: always answer 1)")
    panels[0][0].legend(fontsize=8)
    figure.suptitle(f"Simple RNN on the adding problem, T={config.length}, plain SGD, {config.seeds} seeds per colour")
    return save_figure(figure, path)


def _plot_profiles(runs: dict[Setting, list[RunResult]], config: ExplodingConfig, path: Path) -> Path:
    """||dL/dh_t|| against the distance back from the loss, first seed, unclipped, ReLU and tanh from both inits."""
    plt = pyplot()
    shown = [s for s in settings(config) if not s.clipped and s.learning_rate == config.learning_rate]
    figure, panels = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 3.8))  # each its own y range
    for axes, setting in zip(panels, shown):
        for step, norms in sorted(runs[setting][0].profiles.items()):
            distance = range(len(norms) - 1, -1, -1)  # t = 0 is T-1 steps back from the loss
            axes.plot(distance, _log_safe(norms), label=f"before step {step}")
        axes.set_yscale("log")
        axes.set_xlabel("steps back from the loss (T-1-t)")
        axes.set_title(f"{setting.label}", fontsize=9)
        axes.legend(fontsize=8)
    panels[0].set_ylabel("||dL/dh_t||, mean over sequences")
    figure.suptitle(
        "How strongly the loss depends on the state t steps back (first seed, log scale; no line: the run had diverged "
        "before that step, or the gradient is exactly 0)", fontsize=10,
    )
    return save_figure(figure, path)


EXPERIMENT = Experiment(
    name="exploding",
    summary="ReLU vs tanh simple RNN on the adding problem with plain SGD: gradient explosion and clipping (Pascanu et al. 2013)",
    config_class=ExplodingConfig,
    run=run,
    tiny={"length": 12, "units": 8, "steps": 6, "seeds": 1, "profile_steps": 3, "profile_batch": 8, "test_size": 16},
)
