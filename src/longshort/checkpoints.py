"""Checkpoints that are safe to load, and the resumable epoch loop that writes them.

A checkpoint is one file, `checkpoint.pt` in the output folder, holding only plain data
(str, int, float, bool, None, lists, tuples and dicts of them) and tensors:

    format      "longshort-checkpoint"
    version     1
    kind        "series" (a forecaster) or "text" (a character language model)
    config      the task's config dataclass, as a dict
    data        what using the model needs: column names, scaling and the series (series);
                the vocabulary (text); and a fingerprint of the training data
    model       the latest weights (to resume training)
    optimizer   the optimizer's state (to resume training)
    training    TrainingState as a dict: epoch, losses, early stopping, best weights, RNG states
    report      the task's report once training has finished, else None

It is written with `torch.save` to a temporary file in the same folder and renamed over the
old one (`os.replace`), so an interrupt never leaves half a checkpoint, and it is read
with `torch.load(weights_only=True)`, which refuses to run pickled code.

`train_epochs` is the epoch loop both trainers share: shuffled mini-batches, gradient
clipping, a progress bar with loss and throughput, validation and early stopping (keeping
the best weights), and a checkpoint after every epoch, so that an interrupted run resumes
where it stopped and loses at most the epoch in progress.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import pickle
import socket
import tempfile
import time
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

try:
    import fcntl  # POSIX: the lock on an output folder
except ImportError:  # Windows: no lock
    fcntl = None

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from longshort.distributed import Replicas, process_group
from longshort.experiments.tasks import long_lag_cpu
from longshort.training import Clip, History, NonFiniteError, train_step

FORMAT = "longshort-checkpoint"
VERSION = 1
FILENAME = "checkpoint.pt"
LOCKFILE = ".lock"  # held by the run training into the folder (see `exclusive_use`)
KINDS = {"series": "a time-series forecaster", "text": "a character language model (trained with --text)"}
RESUMABLE_CHANGES = ("epochs", "patience", "threads", "skip_nonfinite")  # config fields a resumed run may change

Batch = tuple[Tensor, Tensor]  # (inputs, targets)
NONFINITE_FIX = "lower learning_rate or clip_norm (a change that needs --fresh)"
NONFINITE_ADVICE = f"{NONFINITE_FIX}, or skip such steps with --skip_nonfinite=true (the config's field skip_nonfinite)"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, not longshort's, of the wrong kind, or does not fit."""


@dataclass
class TrainingState:
    """Where training stands after `epoch` epochs: all a resumed run needs besides weights and optimizer."""

    epoch: int = 0  # epochs completed
    train_losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    validation_losses: list[float] = field(default_factory=list)  # validation loss after each epoch
    best_epoch: int = 0  # the epoch with the lowest validation loss (1-based; 0 before the first)
    best_validation: float = math.inf
    stale_epochs: int = 0  # epochs since the best one
    stopped_early: bool = False
    seconds: float = 0.0  # time spent training, over all runs
    best_weights: Optional[dict[str, Tensor]] = None  # state_dict of the best epoch
    shuffle_rng: Optional[Tensor] = None  # state of the generator that orders the batches
    global_rng: Optional[Tensor] = None  # state of torch's global generator (dropout)
    steps: int = 0  # optimizer steps tried (batches trained on), over all epochs
    skipped_steps: list[int] = field(default_factory=list)  # steps (1-based) skipped: non-finite loss or gradient

    def finished(self, epochs: int) -> bool:
        return self.stopped_early or self.epoch >= epochs


@dataclass
class EpochLoop:
    """What the shared epoch loop needs from a task."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    epoch_batches: Callable[[torch.Generator], list[Batch]]  # one epoch of shuffled batches
    batch_loss: Callable[[nn.Module, Tensor, Tensor], Tensor]  # (model, inputs, targets) -> mean loss over the rows
    validation_loss: Callable[[], float]  # run in eval mode without gradients
    clip: Clip
    seed: int  # seeds the batch order of a fresh run
    unit: str  # what the progress bar counts: "seq" or "char"
    items_per_sequence: int = 1  # throughput: 1 (sequences) or the sequence length (characters)
    skip_nonfinite: bool = False  # skip a step with a non-finite loss or gradient instead of stopping (NonFiniteError)


def train_epochs(
    loop: EpochLoop,
    state: TrainingState,
    epochs: int,
    patience: int,
    save: Callable[[TrainingState], None],
    progress: bool,
    description: str,
    replicas: Replicas = Replicas(),
) -> TrainingState:
    """Train from `state.epoch` up to `epochs` epochs, or until `patience` epochs bring no better
    validation loss (0: never stop early). Calls `save(state)` after every epoch; the model keeps
    its latest weights (the best are in `state.best_weights`). Ctrl-C raises KeyboardInterrupt
    with the last finished epoch saved. A NaN or infinite loss or gradient raises NonFiniteError
    (longshort.training's guard) with the step, epoch and batch, or with `loop.skip_nonfinite` the
    step is skipped (`state.skipped_steps`) until an epoch's worth of steps in a row were; a
    non-finite validation loss raises too, or with skipping is never the best. With several
    `replicas` (longshort.distributed) each process trains on its shard of every batch."""
    generator = torch.Generator()
    if state.shuffle_rng is None:
        generator.manual_seed(loop.seed)
    else:
        generator.set_state(state.shuffle_rng)
        torch.set_rng_state(state.global_rng)
    model, trained = loop.model, replicas.wrap(loop.model)
    bar = None
    while not state.finished(epochs):
        started = time.perf_counter()
        model.train()
        batches = loop.epoch_batches(generator)
        if bar is None:
            per_epoch = sum(len(inputs) for inputs, _ in batches) * loop.items_per_sequence
            bar = tqdm(
                total=epochs * per_epoch, initial=state.epoch * per_epoch, desc=description, unit=loop.unit,
                unit_scale=True, disable=not progress, dynamic_ncols=True,
            )
        history = History()  # this epoch's steps
        for batch, (inputs, targets) in enumerate(batches, 1):
            state.steps += 1
            where = f"step {state.steps} (epoch {state.epoch + 1} of {epochs}, batch {batch} of {len(batches)})"
            loss = _guarded_step(loop, trained, replicas, inputs, targets, history, state, where, give_up_after=len(batches))
            bar.update(len(inputs) * loop.items_per_sequence)
            bar.set_postfix_str(f"epoch {state.epoch + 1}/{epochs} loss {loss:.4f}{_skipped(state)}", refresh=False)
        model.eval()
        with torch.no_grad():
            validation = replicas.from_main(loop.validation_loss() if replicas.main else None)  # rank 0's decides for all
        if not math.isfinite(validation) and not loop.skip_nonfinite:
            problem = f"the validation loss is {validation} after epoch {state.epoch + 1}"
            raise NonFiniteError(f"{problem}: the epoch is not kept; {NONFINITE_ADVICE}", problem, state.steps)
        state.epoch += 1
        kept = [loss for step, loss in enumerate(history.losses, 1) if step not in history.skipped]
        state.train_losses.append(sum(kept) / len(kept))
        state.validation_losses.append(validation)
        if validation < state.best_validation:  # never true for a NaN: a non-finite validation loss is never the best
            state.best_validation, state.best_epoch, state.stale_epochs = validation, state.epoch, 0
            state.best_weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        else:
            state.stale_epochs += 1
            state.stopped_early = patience > 0 and state.stale_epochs >= patience
        state.shuffle_rng, state.global_rng = generator.get_state(), torch.get_rng_state()
        state.seconds += time.perf_counter() - started
        replicas.check_identical(model, state.epoch)
        save(state)
        bar.set_postfix_str(f"epoch {state.epoch}/{epochs} loss {state.train_losses[-1]:.4f} val {validation:.4f}{_skipped(state)}")
    if bar is not None:
        bar.close()
    return state


def _guarded_step(loop: EpochLoop, trained: nn.Module, replicas: Replicas, inputs: Tensor, targets: Tensor, history: History,
                  state: TrainingState, where: str, give_up_after: int) -> float:
    """`train_step` of `trained` (the model, or DDP around it) on this process's shard of one
    batch, whose loss has the whole batch's value, so that every process's guard decides alike;
    with the step's place in the run (`where`) in its NonFiniteError. A step it skips goes into
    `state.skipped_steps`; `give_up_after` skipped in a row raise."""
    inputs, targets, weight = replicas.shard(inputs, targets)

    def loss() -> Tensor:
        return replicas.whole_batch_loss(loop.batch_loss(trained, inputs, targets) * weight)

    try:
        value = train_step(loop.model, loss, loop.optimizer, loop.clip, history, loop.skip_nonfinite)
    except NonFiniteError as error:
        raise NonFiniteError(f"{error.problem} at {where}: the weights were not updated; {NONFINITE_ADVICE}", error.problem, state.steps) from None
    if history.skipped[-1:] == [len(history.losses)]:  # train_step skipped this step
        state.skipped_steps.append(state.steps)
        if state.skipped_steps[-give_up_after:] == list(range(state.steps - give_up_after + 1, state.steps + 1)):
            problem = f"the last {give_up_after} steps (an epoch's worth) all had a non-finite loss or gradient and were skipped"
            raise NonFiniteError(f"{problem}, up to {where}: giving up; {NONFINITE_FIX}", problem, state.steps)
    return value


def _skipped(state: TrainingState) -> str:
    """The progress bar's note of skipped steps, if any."""
    return f" skipped {len(state.skipped_steps)} non-finite steps" if state.skipped_steps else ""


def _steps(numbers: list[int], shown: int = 10) -> str:
    """The first `shown` step numbers, and how many more."""
    return ", ".join(map(str, numbers[:shown])) + (f" and {len(numbers) - shown} more" if len(numbers) > shown else "")


def fit(
    loop: EpochLoop,
    kind: str,
    config: Any,
    data: dict[str, Any],
    out: Optional[Path],
    fresh: bool,
    progress: bool,
    description: str,
    echo: Callable[[str], None],
    evaluate: Callable[[TrainingState], dict[str, Any]],
) -> tuple[TrainingState, dict[str, Any]]:
    """A whole training run, as both trainers do it: resume from `out/checkpoint.pt` if it is
    there, run the epochs (saving after each), switch to the best weights, `evaluate` them into
    a report, and save the checkpoint once more with the report, all on `config.threads` CPU
    threads with denormals flushed to zero and the kernels `auto` picks fixed by their order
    (`long_lag_cpu`, as the experiments run: a resumed run, and each replica, runs the kernels the
    uninterrupted one ran). `config` has
    `epochs`, `patience` and `threads`; `data["fingerprint"]` identifies the training data.

    Started by torchrun, each process runs `fit` as one of the replicas of longshort.distributed:
    rank 0 resumes, prints, draws the progress bar and writes the checkpoint for all."""
    path = Path(out) / FILENAME if out is not None else None
    with process_group() as replicas, long_lag_cpu(config.threads), ExitStack() as held:
        if not replicas.main:
            echo, progress, path = (lambda _: None), False, None

        def start() -> TrainingState:
            if path is not None:
                held.enter_context(exclusive_use(path.parent))  # until the run ends
                for stale in remove_stale_temporaries(path):
                    echo(f"Removed {stale}: half a checkpoint, left by a run killed while writing it.")
            return resume(out, kind, config, data["fingerprint"], loop.model, loop.optimizer, fresh, echo)

        def save(state: TrainingState, report: Optional[dict[str, Any]] = None, weights: Optional[dict] = None) -> None:
            if path is not None:
                save_checkpoint(path, kind, config, data, weights or loop.model.state_dict(), loop.optimizer, state, report)

        state = replicas.start_together(loop.model, loop.optimizer, start, data["fingerprint"])
        state = train_epochs(loop, state, config.epochs, config.patience, save, progress, description, replicas)
        if state.skipped_steps:
            echo(f"Skipped {len(state.skipped_steps)} of {state.steps} steps (a non-finite loss or gradient): {_steps(state.skipped_steps)}.")
        latest = {name: tensor.detach().clone() for name, tensor in loop.model.state_dict().items()}
        if state.best_weights is not None:
            loop.model.load_state_dict(state.best_weights)
        loop.model.eval()
        report = evaluate(state)
        save(state, report, latest)
    return state, report


def fingerprint(content: bytes) -> str:
    """A short hash that tells whether a resumed run sees the same training data."""
    return hashlib.sha256(content).hexdigest()[:16]


@contextmanager
def exclusive_use(folder: Path) -> Iterator[None]:
    """Lock `folder` (its file .lock) for one training run: a second run into the same folder, which
    would overwrite the first's checkpoints, gets a CheckpointError instead. The operating system
    drops the lock when the process ends, however it ends (SIGKILL too), so no stale lock remains.
    Without fcntl (Windows) there is no lock."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(folder / LOCKFILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise CheckpointError(
                f"{folder} is in use by another run of longshort train ({holder}): wait for it to end, or choose another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        yield


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the temporary files `save_checkpoint` left beside `path` when a run was killed while
    writing (they are never the checkpoint: that appears only by the rename); return them."""
    stale = sorted(Path(path).parent.glob(f".{Path(path).name}.*.tmp"))
    for file in stale:
        file.unlink(missing_ok=True)
    return stale


def checkpoint_file(path: Path) -> Path:
    """`path` itself, or `path/checkpoint.pt` when `path` is a folder."""
    path = Path(path)
    return path / FILENAME if path.is_dir() else path


def save_checkpoint(
    path: Path,
    kind: str,
    config: Any,
    data: dict[str, Any],
    weights: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    state: TrainingState,
    report: Optional[dict[str, Any]] = None,
) -> Path:
    """Write a checkpoint atomically: a temporary file in the same folder, then `os.replace`.
    `weights` are the model's latest (`model.state_dict()`); the best are in `state`."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "config": dataclasses.asdict(config),
        "data": data,
        "model": weights,
        "optimizer": optimizer.state_dict(),
        "training": dataclasses.asdict(state),
        "report": report,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as handle:
        try:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        except BaseException:
            handle.close()
            os.unlink(handle.name)
            raise
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(handle.name, 0o666 & ~umask)  # a temporary file is private; the checkpoint gets the usual mode
    os.replace(handle.name, path)
    return path


def load_checkpoint(path: Path, kind: Optional[str] = None) -> dict[str, Any]:
    """Read and check a checkpoint (a file, or a folder holding `checkpoint.pt`).

    Raises CheckpointError with a message that says what is wrong: no such file, corrupt or
    truncated, not a longshort checkpoint, a newer version, or not of `kind` ("series"/"text").
    """
    path = checkpoint_file(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on the pickle protocol of a foreign file
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = str(error).partition("WeightsUnpickler error:")[2].strip()
        reason = detail.split("\n")[0].split(". ")[0] or type(error).__name__
        if detail.startswith("Unsupported global"):  # a Python object: loading it would run its code
            raise CheckpointError(
                f"{path} is not a longshort checkpoint: it cannot be loaded safely, without running pickled code ({reason})"
            ) from None
        raise CheckpointError(f"{path} is corrupt or truncated, or not a checkpoint at all ({reason})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, IndexError) as error:
        reason = str(error).strip().split("\n")[0] or type(error).__name__
        raise CheckpointError(f"{path} is corrupt or truncated, or not a checkpoint at all ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a longshort checkpoint (those are written by `longshort train`)")
    version = payload.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{path} was written by a newer longshort (checkpoint version {version}; this one reads {VERSION})")
    missing = [key for key in ("kind", "config", "data", "model", "optimizer", "training") if key not in payload]
    if missing or payload["kind"] not in KINDS:
        raise CheckpointError(f"{path} is damaged: {'missing ' + ', '.join(missing) if missing else 'unknown kind'}")
    if kind is not None and payload["kind"] != kind:
        raise CheckpointError(f"{path} holds {KINDS[payload['kind']]}; this needs {KINDS[kind]}")
    return payload


def config_from_checkpoint(config_class: type, payload: dict[str, Any], path: Path) -> Any:
    """The config dataclass stored in a checkpoint; a CheckpointError if it does not fit `config_class`."""
    known = {field.name for field in dataclasses.fields(config_class)}
    stored = payload["config"]
    if not isinstance(stored, dict) or set(stored) - known:
        raise CheckpointError(f"{checkpoint_file(path)} has a config longshort does not know: {stored!r}")
    return config_class(**stored)


def load_weights(model: nn.Module, weights: dict[str, Tensor], path: Path) -> None:
    """`model.load_state_dict(weights)`, with a CheckpointError when the shapes or names differ."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as error:
        first = str(error).strip().splitlines()
        raise CheckpointError(
            f"{checkpoint_file(path)}: the weights do not fit the model its config describes "
            f"({first[0] if first else type(error).__name__})"
        ) from None


def resume(
    out: Optional[Path],
    kind: str,
    config: Any,
    data_fingerprint: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    fresh: bool,
    echo: Callable[[str], None],
) -> TrainingState:
    """Load model, optimizer and training state from `out/checkpoint.pt` if there is one (and not
    `fresh`), after checking it was trained on the same data with the same config (except
    RESUMABLE_CHANGES); otherwise a new TrainingState."""
    if out is None or fresh or not (Path(out) / FILENAME).is_file():
        return TrainingState()
    path = Path(out) / FILENAME
    payload = load_checkpoint(path, kind)
    stored = payload["config"]
    changed = [
        f"{name}={stored.get(name)!r} there, {value!r} now"
        for name, value in dataclasses.asdict(config).items()
        if name not in RESUMABLE_CHANGES and stored.get(name) != value
    ]
    if changed:
        raise CheckpointError(
            f"{path} was trained with other settings ({'; '.join(changed)}): "
            "add --fresh to start over, or choose another --out"
        )
    if payload["data"].get("fingerprint") != data_fingerprint:
        raise CheckpointError(
            f"{path} was trained on other data ({payload['data'].get('source')}): "
            "add --fresh to start over, or choose another --out"
        )
    load_weights(model, payload["model"], path)
    try:
        optimizer.load_state_dict(payload["optimizer"])
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path}: the optimizer state does not fit ({error})") from None
    try:
        state = TrainingState(**payload["training"])
    except TypeError as error:
        raise CheckpointError(f"{path} is damaged: its training state does not fit ({error})") from None
    epochs = config.epochs
    if state.finished(epochs):
        how = f"stopped early after {state.epoch} epochs" if state.stopped_early else f"trained for {state.epoch} epochs"
        echo(f"{path} is already {how} (best epoch {state.best_epoch}): nothing left to train; add --fresh to start over.")
    else:
        echo(f"Resuming from {path}: {state.epoch} of {epochs} epochs done.")
    return state
