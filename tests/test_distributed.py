"""Data-parallel training (longshort.distributed): two real processes on this machine, gloo on CPU."""

import math
import os
import socket
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

from longshort.checkpoints import load_checkpoint, remove_stale_temporaries
from longshort.cli import main
import longshort.distributed as distributed
from longshort.distributed import Replicas, weights_digest

TINY = ["--units=4", "--lookback=6", "--batch_size=5", "--epochs=3", "--no-progress"]  # 36 windows: 7 batches of 5, then 1

# One process of a two-process run through the Python API: trains, then saves what it ended with.
WORKER = """
import sys
from pathlib import Path
import torch
import longshort as ls
config = ls.SeriesConfig(units=4, lookback=6, batch_size=5, epochs=3)
forecaster = ls.train_forecaster(config, Path(sys.argv[1]), Path(sys.argv[2]), progress=False, echo=lambda _: None)
torch.save({"weights": forecaster.model.state_dict(), "losses": forecaster.state.train_losses}, sys.argv[3])
"""


# The same, but in rank 1 alone the 5th batch's loss is NaN: both processes must skip step 5 (or both stop).
NAN_IN_RANK_1 = """
import os
import torch.nn.functional
calls, real_mse_loss = [], torch.nn.functional.mse_loss
def mse_loss(*args, **kwargs):
    calls.append(1)
    loss = real_mse_loss(*args, **kwargs)
    return loss * float("nan") if os.environ["RANK"] == "1" and len(calls) == 5 else loss
torch.nn.functional.mse_loss = mse_loss
""" + WORKER.replace("epochs=3)", "epochs=3, skip_nonfinite=SKIP)") + """
torch.save({**torch.load(sys.argv[3]), "skipped": forecaster.state.skipped_steps}, sys.argv[3])
"""


@pytest.fixture
def series(tmp_path):
    path = tmp_path / "series.csv"
    path.write_text("year,v\n" + "".join(f"{2000 + t},{math.sin(t / 3) + 0.1 * math.cos(t):.4f}\n" for t in range(60)))
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_ranks(arguments_of_rank, world_size=2):
    """Start `world_size` Python processes with torchrun's environment, as torchrun would."""
    port, processes = free_port(), []
    for rank in range(world_size):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        processes.append(subprocess.Popen([sys.executable, *arguments_of_rank(rank)], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    outputs = [process.communicate(timeout=120) for process in processes]
    return [(process.returncode, *output) for process, output in zip(processes, outputs)]


def test_two_processes_keep_identical_weights_and_equal_single_process_training(tmp_path, series):
    results = start_ranks(lambda rank: ["-c", WORKER, str(series), str(tmp_path / "out"), str(tmp_path / f"rank{rank}.pt")])
    for code, _, err in results:
        assert code == 0, err
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    for name, tensor in ranks[0]["weights"].items():
        assert torch.equal(tensor, ranks[1]["weights"][name]), name  # bit for bit
    assert ranks[0]["losses"] == ranks[1]["losses"]
    stored = load_checkpoint(tmp_path / "out")  # rank 0 wrote it, after 3 epochs of 8 steps
    assert stored["training"]["epoch"] == 3 and stored["training"]["steps"] == 24

    main(["train", str(series), "--out", str(tmp_path / "single"), *TINY])
    single = load_checkpoint(tmp_path / "single")
    for name, tensor in stored["model"].items():  # the same global batches: the same steps, up to float sums
        torch.testing.assert_close(tensor, single["model"][name], rtol=1e-4, atol=1e-5)
    assert stored["training"]["train_losses"] == pytest.approx(single["training"]["train_losses"], rel=1e-4)
    assert stored["report"]["rmse"]["LSTM"] == pytest.approx(single["report"]["rmse"]["LSTM"], rel=1e-3)


def test_a_nan_in_one_process_is_skipped_or_stops_in_every_process(tmp_path, series):
    script = NAN_IN_RANK_1.replace("SKIP", "True")
    results = start_ranks(lambda rank: ["-c", script, str(series), str(tmp_path / "out"), str(tmp_path / f"rank{rank}.pt")])
    for code, _, err in results:
        assert code == 0, err
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == [5]
    for name, tensor in ranks[0]["weights"].items():
        assert torch.equal(tensor, ranks[1]["weights"][name]), name

    script = NAN_IN_RANK_1.replace("SKIP", "False")
    results = start_ranks(lambda rank: ["-c", script, str(series), str(tmp_path / "stop"), str(tmp_path / f"stop{rank}.pt")])
    for code, _, err in results:  # both raise NonFiniteError at step 5; neither waits for the other
        assert code == 1 and "NonFiniteError: the loss is nan at step 5 (epoch 1 of 3, batch 5 of 8)" in err, err


def test_torchrun_launches_longshort_train(tmp_path, series):
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc-per-node=2", "-m", "longshort",
               "train", str(series), "--out", str(tmp_path / "run"), *TINY, "--epochs=2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("Checkpoint:") == 1  # only rank 0 prints its report
    assert load_checkpoint(tmp_path / "run")["training"]["epoch"] == 2

    again = subprocess.run(command[:-1] + ["--epochs=3"], capture_output=True, text=True, timeout=180,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr
    assert "Resuming from" in again.stdout and "2 of 3 epochs done" in again.stdout
    assert load_checkpoint(tmp_path / "run")["training"]["epoch"] == 3


def test_processes_reading_other_data_stop_with_a_clear_error(tmp_path, series):
    other = tmp_path / "other.csv"
    lines = series.read_text().splitlines()
    other.write_text("\n".join(lines[:11] + ["2010,0.5"] + lines[12:]) + "\n")  # one value changed
    files = [series, other]
    results = start_ranks(lambda rank: ["-m", "longshort", "train", str(files[rank]), "--out", str(tmp_path / f"out{rank}"), *TINY])
    for code, _, err in results:  # both stop: neither waits forever for the other
        assert code == 2 and "processes [1] read other training data than process 0" in err, err


def test_a_resume_refused_in_rank_0_stops_every_process(tmp_path, series):
    main(["train", str(series), "--out", str(tmp_path / "run"), *TINY, "--epochs=1"])
    results = start_ranks(lambda rank: ["-m", "longshort", "train", str(series), "--out", str(tmp_path / "run"), *TINY,
                                        "--units=5"])
    for code, _, err in results:
        assert code == 2 and "was trained with other settings (units=4 there, 5 now)" in err, err


def test_shards_weight_their_mean_loss_to_the_whole_batch_mean():
    inputs, targets = torch.arange(7.0)[:, None], torch.arange(7.0)
    shards = [Replicas(rank, 3).shard(inputs, targets) for rank in range(3)]
    assert [shard[0].flatten().tolist() for shard in shards] == [[0, 3, 6], [1, 4], [2, 5]]
    whole = targets.pow(2).mean()
    per_rank = [shard_targets.pow(2).mean() * weight for _, shard_targets, weight in shards]
    assert sum(per_rank) / 3 == pytest.approx(float(whole))  # DDP's average of the weighted losses
    lone_inputs, _, weight = Replicas(1, 2).shard(inputs[:1], targets[:1])
    assert weight == 0.0 and len(lone_inputs) == 1  # a rank left without rows contributes nothing
    assert Replicas().shard(inputs, targets)[2] == 1.0


def test_weights_digest_sees_one_changed_bit():
    model = torch.nn.Linear(3, 2)
    before = weights_digest(model)
    with torch.no_grad():
        model.weight[0, 0] = torch.nextafter(model.weight[0, 0], torch.tensor(math.inf))
    assert weights_digest(model) != before


def test_stale_temporaries_of_a_killed_save_are_removed(tmp_path, series, capsys):
    main(["train", str(series), "--out", str(tmp_path), *TINY, "--epochs=1"])
    stale = tmp_path / ".checkpoint.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    capsys.readouterr()
    main(["train", str(series), "--out", str(tmp_path), *TINY, "--epochs=2"])
    assert f"Removed {stale}" in capsys.readouterr().out and not stale.exists()
    assert remove_stale_temporaries(tmp_path / "checkpoint.pt") == []


def test_a_failed_run_lets_go_of_its_frames_before_leaving_the_group(monkeypatch):
    """What the failed run's frames hold (its DistributedDataParallel wrapper, which holds the group) is
    freed before the group is destroyed: destroyed the other way round, gloo's threads can abort the
    process at exit (seen once as exit -6 instead of 1 in the NaN test above)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *args, **kwargs: None)
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 0)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    held, alive_when_destroyed = [], []
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: alive_when_destroyed.append(held[0]() is not None))

    class Wrapper:  # stands for the DistributedDataParallel wrapper
        pass

    def train():
        wrapper = Wrapper()
        held.append(weakref.ref(wrapper))
        raise ValueError("the loss is nan")

    with pytest.raises(ValueError, match="the loss is nan"):
        with distributed.process_group():
            train()
    assert alive_when_destroyed == [False]
