"""Checkpoints: safe to load, atomic, checked on load; training resumes from them."""

import math
import os
import pickle
from pathlib import Path

import pytest
import torch

import longshort as ls
import longshort.checkpoints as checkpoints
from longshort.checkpoints import CheckpointError, load_checkpoint
from longshort.cli import main
from longshort.forecasting import Forecaster, SeriesConfig, train_forecaster

TINY = ["--units=4", "--lookback=6", "--no-progress"]


@pytest.fixture
def series(tmp_path):
    path = tmp_path / "series.csv"
    path.write_text("year,v\n" + "".join(f"{2000 + t},{math.sin(t / 3):.4f}\n" for t in range(60)))
    return path


def train(capsys, data, out, *extra):
    """`longshort train DATA --out OUT` with TINY and `extra` options; (exit code, stdout, stderr)."""
    options = [*TINY, *map(str, extra)]
    if "--text" in options:
        options.remove("--lookback=6")  # a time-series option
    code = main(["train", str(data), "--out", str(out), *options])
    captured = capsys.readouterr()
    assert code in (0, 130), captured.err
    return code, captured.out, captured.err


def test_training_runs_the_kernels_in_their_fixed_order(tmp_path, capsys, series, monkeypatch):
    """A run that resumes must run the kernels the uninterrupted one ran, to equal it bit for bit:
    the trainers train with "auto"'s measuring off (`dispatch.fixed_order`), and turn it back on."""
    seen = []
    train_epochs = checkpoints.train_epochs

    def recording(*args):
        seen.append(ls.dispatch.measure)
        return train_epochs(*args)

    monkeypatch.setattr(checkpoints, "train_epochs", recording)
    assert ls.dispatch.measure
    train(capsys, series, tmp_path, "--epochs", 1)
    assert seen == [False] and ls.dispatch.measure


def test_checkpoint_is_plain_data_that_weights_only_loads(tmp_path, capsys, series):
    threads = torch.get_num_threads()
    train(capsys, series, tmp_path, "--epochs", 2)
    assert torch.get_num_threads() == threads  # training ran on config.threads (1), then gave them back
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert payload["format"] == "longshort-checkpoint" and payload["version"] == 1 and payload["kind"] == "series"
    assert payload["config"]["lookback"] == 6 and payload["config"]["threads"] == 1 and payload["data"]["columns"] == ["v"]
    assert len(payload["data"]["mean"]) == 1 and payload["data"]["values"].shape == (60, 1)
    assert payload["training"]["epoch"] == 2 and len(payload["training"]["validation_losses"]) == 2
    assert set(payload["model"]) == {"0.cell.weight_ih", "0.cell.weight_hh", "0.cell.bias", "1.weight", "1.bias"}
    assert payload["report"]["rmse"]["LSTM"] > 0
    assert [path.name for path in tmp_path.iterdir() if path.name.endswith(".tmp")] == []


@pytest.fixture
def book(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("a small text to learn from. " * 20)  # 504 characters to train on: 49 sequences of 10
    return path


def train_args(kind, series, book):
    """Tiny runs of either kind with two batches per epoch."""
    if kind == "series":
        return [series]
    return [book, "--text", "--seq_len=10", "--units=4", "--embedding=4", "--no-progress"]


@pytest.mark.parametrize("kind", ["series", "text"])
def test_an_interrupted_run_resumes_and_ends_as_an_uninterrupted_one(tmp_path, capsys, series, book, monkeypatch, kind):
    args = train_args(kind, series, book)
    train(capsys, *args[:1], tmp_path / "whole", *args[1:], "--epochs", 4)
    real_step = checkpoints.train_step
    steps = []

    def step_then_interrupt(*step_args):
        steps.append(1)
        if len(steps) == 5:  # the first step of the third epoch: Ctrl-C
            raise KeyboardInterrupt
        return real_step(*step_args)

    monkeypatch.setattr(checkpoints, "train_step", step_then_interrupt)
    code, _, err = train(capsys, *args[:1], tmp_path / "parts", *args[1:], "--epochs", 4)
    assert code == 130 and "interrupted" in err and "run the same command again to resume" in err
    assert load_checkpoint(tmp_path / "parts")["training"]["epoch"] == 2  # only the epoch in progress is lost
    monkeypatch.setattr(checkpoints, "train_step", real_step)

    _, printed, _ = train(capsys, *args[:1], tmp_path / "parts", *args[1:], "--epochs", 4)
    assert "Resuming from" in printed and "2 of 4 epochs done" in printed
    whole, parts = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "parts")
    assert parts["training"]["epoch"] == 4
    assert parts["training"]["train_losses"] == whole["training"]["train_losses"]
    assert parts["training"]["validation_losses"] == whole["training"]["validation_losses"]
    for name, tensor in whole["model"].items():
        assert torch.equal(tensor, parts["model"][name]), name
        assert torch.equal(whole["training"]["best_weights"][name], parts["training"]["best_weights"][name]), name

    _, printed, _ = train(capsys, *args[:1], tmp_path / "parts", *args[1:], "--epochs", 6)  # more epochs: resumes
    assert "4 of 6 epochs done" in printed and load_checkpoint(tmp_path / "parts")["training"]["epoch"] == 6
    _, printed, _ = train(capsys, *args[:1], tmp_path / "parts", *args[1:], "--epochs", 6)
    assert "already trained for 6 epochs" in printed


def test_fresh_starts_over_and_other_settings_are_refused(tmp_path, capsys, series):
    train(capsys, series, tmp_path, "--epochs", 2)
    assert main(["train", str(series), "--out", str(tmp_path), "--units=5", "--lookback=6", "--no-progress"]) == 2
    assert "trained with other settings (units=4 there, 5 now)" in capsys.readouterr().err
    other = series.with_name("other.csv")
    other.write_text(series.read_text().replace("0.", "1."))
    assert main(["train", str(other), "--out", str(tmp_path), *TINY, "--epochs=2"]) == 2
    assert "trained on other data" in capsys.readouterr().err
    _, printed, _ = train(capsys, series, tmp_path, "--epochs", 1, "--fresh")
    assert "Resuming" not in printed and load_checkpoint(tmp_path)["training"]["epoch"] == 1


def test_a_failed_write_leaves_the_old_checkpoint(tmp_path, capsys, series, monkeypatch):
    train(capsys, series, tmp_path, "--epochs", 1)
    before = (tmp_path / "checkpoint.pt").read_bytes()

    def broken_save(payload, handle):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        train_forecaster(SeriesConfig(units=4, lookback=6, epochs=1), series, tmp_path, progress=False, fresh=True, echo=print)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == [".lock", "checkpoint.pt", "learning_curves.png", "series.csv", "test_forecast.png"]


def test_truncated_checkpoint(tmp_path, capsys, series):
    train(capsys, series, tmp_path, "--epochs", 1)
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="is corrupt or truncated"):
        Forecaster.load(path)
    assert main(["forecast", str(path)]) == 2
    err = capsys.readouterr().err
    assert "is corrupt or truncated" in err and "Traceback" not in err


class Payload:
    """Unpickling this would create a file: weights_only loading must refuse before that."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoints_that_are_not_longshorts(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": "longshort-checkpoint", "model": Payload(marker)}, unsafe)
    foreign = tmp_path / "foreign.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), foreign)
    plain_pickle = tmp_path / "plain.pt"
    plain_pickle.write_bytes(pickle.dumps([1, 2, 3]))
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    cases = {
        unsafe: "cannot be loaded safely, without running pickled code",
        foreign: "is not a longshort checkpoint",
        plain_pickle: "corrupt or truncated, or not a checkpoint",
        text: "corrupt or truncated, or not a checkpoint",
    }
    for path, message in cases.items():
        for command in (["forecast", str(path)], ["generate", str(path)], ["gates", str(path), "x"]):
            assert main(command) == 2
            err = capsys.readouterr().err
            assert message in err and "Traceback" not in err, (path, err)
    assert not marker.exists()


def test_newer_version_and_mismatched_weights(tmp_path, capsys, series):
    train(capsys, series, tmp_path, "--epochs", 1)
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    newer = dict(payload, version=99)
    torch.save(newer, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match="written by a newer longshort"):
        load_checkpoint(tmp_path / "newer.pt")
    edited = dict(payload, config=dict(payload["config"], units=7))
    torch.save(edited, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="the weights do not fit the model its config describes"):
        Forecaster.load(tmp_path / "edited.pt")


def test_two_runs_cannot_share_an_output_folder(tmp_path, capsys, series):
    with checkpoints.exclusive_use(tmp_path / "run"):  # as a run in progress holds it
        code = main(["train", str(series), "--out", str(tmp_path / "run"), *TINY, "--epochs=1"])
        err = capsys.readouterr().err
        assert code == 2 and f"{tmp_path / 'run'} is in use by another run of longshort train (process {os.getpid()} on " in err
        assert "wait for it to end, or choose another --out" in err and not (tmp_path / "run" / "checkpoint.pt").exists()
    assert main(["train", str(series), "--out", str(tmp_path / "run"), *TINY, "--epochs=1"]) == 0  # released at its end
