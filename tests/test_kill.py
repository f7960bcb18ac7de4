"""Runs killed for real (SIGKILL, SIGTERM) mid-training: the checkpoint is never half-written, a
restart loses only the epoch in progress, and the end result is bit for bit the uninterrupted one."""

import math
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from longshort.checkpoints import load_checkpoint

OPTIONS = ["--units=8", "--lookback=6", "--batch_size=4", "--patience=0", "--no-progress"]  # about 25 ms an epoch


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    path = tmp_path_factory.mktemp("kill") / "series.csv"
    path.write_text("year,v\n" + "".join(f"{1800 + t},{math.sin(t / 4) + 0.2 * math.sin(t / 1.7):.4f}\n" for t in range(120)))
    return path


@pytest.fixture(scope="module")
def whole_60(series, tmp_path_factory):
    """The uninterrupted run of 60 epochs, which both tests compare with (one process fewer each)."""
    out = tmp_path_factory.mktemp("kill") / "whole"
    uninterrupted(series, out, 60)
    return out


def command(series, out, epochs):
    return [sys.executable, "-m", "longshort", "train", str(series), "--out", str(out), *OPTIONS, f"--epochs={epochs}"]


def epoch_in(out):
    """The epoch the checkpoint in `out` holds (0: none yet); loading it fails if it were half-written."""
    if not (out / "checkpoint.pt").exists():
        return 0
    return load_checkpoint(out)["training"]["epoch"]


def start_and_wait_for_progress(series, out, epochs):
    """Start the run and return once it has written a checkpoint of its own (training is under way)."""
    before = epoch_in(out)
    run = subprocess.Popen(command(series, out, epochs), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while epoch_in(out) <= before and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return run, before


def kill_and_resume(series, out, epochs, kills, seed):
    """Kill the run `kills` times, each at a random moment of its training (seeded: 0 to 0.3 s after
    its first checkpoint, so in an epoch or in a checkpoint's write), restarting it each time; then
    let it finish. Returns (epoch before the start, epoch after the kill, a temporary file was left)
    per kill, and the last run's stdout."""
    chance, seen = random.Random(seed), []
    for _ in range(kills):
        run, before = start_and_wait_for_progress(series, out, epochs)
        time.sleep(chance.uniform(0.0, 0.3))
        run.kill()
        run.communicate(timeout=60)
        after = epoch_in(out)  # raises CheckpointError if the kill left half a checkpoint
        assert before < after <= epochs, (before, after)
        seen.append((before, after, any(out.glob(".checkpoint.pt.*.tmp"))))
        if after == epochs:
            break
    last = subprocess.run(command(series, out, epochs), capture_output=True, text=True, timeout=120)
    assert last.returncode == 0, last.stderr
    return seen, last.stdout


def uninterrupted(series, out, epochs):
    """The run nobody kills: the same command, in a process of its own as the killed ones are."""
    whole = subprocess.run(command(series, out, epochs), capture_output=True, text=True, timeout=120)
    assert whole.returncode == 0, whole.stderr


def assert_same_run(out, reference):
    killed, whole = load_checkpoint(out), load_checkpoint(reference)
    for name, tensor in whole["model"].items():
        assert torch.equal(killed["model"][name], tensor), name
    assert killed["training"]["train_losses"] == whole["training"]["train_losses"]
    assert killed["training"]["validation_losses"] == whole["training"]["validation_losses"]
    assert killed["report"]["rmse"]["LSTM"] == whole["report"]["rmse"]["LSTM"]
    assert killed["report"]["rmse"] == pytest.approx(whole["report"]["rmse"], rel=1e-9)  # the least-squares baseline: to 1e-12
    assert [path.name for path in out.iterdir() if path.name.endswith(".tmp")] == []


def check_kills(tmp_path, series, epochs, kills, seed, whole=None):
    """Kill and resume; compare with `whole`, the uninterrupted run of `epochs` (made here if None)."""
    if whole is None:
        whole = tmp_path / "whole"
        uninterrupted(series, whole, epochs)
    seen, stdout = kill_and_resume(series, tmp_path / "killed", epochs, kills, seed)
    resumed = [line for line in stdout.splitlines() if line.startswith("Resuming from")]
    last_kill = seen[-1][1]  # the epoch the last kill left: the last run goes on from there, losing nothing before it
    expected = [f"Resuming from {tmp_path / 'killed' / 'checkpoint.pt'}: {last_kill} of {epochs} epochs done."]
    assert resumed == (expected if last_kill < epochs else [])
    assert_same_run(tmp_path / "killed", whole)
    return seen


def test_sigkill_mid_training_loses_only_the_epoch_in_progress(tmp_path, series, whole_60):
    seen = check_kills(tmp_path, series, epochs=60, kills=3, seed=1, whole=whole_60)
    assert len(seen) == 3 and seen[-1][1] < 60


def test_sigterm_ends_with_a_message_and_the_run_resumes(tmp_path, series, whole_60):
    out = tmp_path / "terminated"
    run, _ = start_and_wait_for_progress(series, out, 60)
    run.send_signal(signal.SIGTERM)  # as torchrun stops the others when one process fails, or a scheduler ends a job
    _, err = run.communicate(timeout=60)
    assert run.returncode == 143, err
    assert "longshort train: terminated (SIGTERM)" in err and "run the same command again to resume" in err
    assert 1 <= epoch_in(out) < 60
    last = subprocess.run(command(series, out, 60), capture_output=True, text=True, timeout=120)
    assert last.returncode == 0 and f"Resuming from {out / 'checkpoint.pt'}" in last.stdout, last.stderr
    assert_same_run(out, whole_60)


@pytest.mark.slow
def test_forty_sigkills(tmp_path, series):
    """Not in CI (about 2 minutes): `make check-claims`. The figure for the README."""
    seen = check_kills(tmp_path, series, epochs=600, kills=40, seed=2026)
    assert len(seen) == 40
    print(f"\n{len(seen)} SIGKILLs survived, {sum(left for *_, left in seen)} of them during a checkpoint's write; "
          f"epochs after each: {[after for _, after, _ in seen]}")
