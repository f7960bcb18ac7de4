"""`longshort experiment`: each experiment's tiny configuration through the CLI, what it writes, and bad input.

The tiny runs check structure (the table, the JSON's per-model and per-T rows, finite numbers
where there must be some, real PNGs), not results: they train for a few steps. The results
are checked by the slow tests at the end, which run the full configurations and assert the
README's claims (`make check-claims`, about 5 minutes each, not in CI).
"""

import json
import math

import pytest
import torch

from longshort.cli import main
from longshort.experiments import EXPERIMENTS, run_experiment
from longshort.experiments.gates import trace_gates
from longshort.layers import LSTM

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny_flags(name):
    return [f"--{field}={value}" for field, value in EXPERIMENTS[name].tiny.items()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Every experiment's tiny configuration, run once through `main`: name -> (results.json as a dict, folder)."""
    runs = {}
    for name in EXPERIMENTS:
        out = tmp_path_factory.mktemp(name)
        assert main(["experiment", name, *tiny_flags(name), "--out", str(out), "--no-progress"]) == 0
        runs[name] = json.loads((out / "results.json").read_text()), out
    return runs


def is_number(value):
    """A finite number; the JSON writes nan and inf as the strings "nan" and "inf"."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- what every experiment writes --------------------------------------------------------------


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_tiny_run_writes_results_json_and_real_pngs(tiny, name):
    results, out = tiny[name]
    assert results["experiment"] == name
    assert results["config"] == {**results["config"], **EXPERIMENTS[name].tiny}  # the overrides reached the config
    assert results["rows"] and all(len(row) == len(results["columns"]) for row in results["rows"])
    assert results["notes"] and all(isinstance(note, str) and note for note in results["notes"])
    assert is_number(results["seconds"]) and results["machine"]["torch"]
    assert results["figures"]
    for figure in results["figures"]:
        data = (out / figure).read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 10_000  # a real PNG with something drawn on it


def test_cli_prints_the_table_and_where_it_wrote(tmp_path, capsys):
    assert main(["experiment", "gates", *tiny_flags("gates"), "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Gates of LSTM(4) trained on the adding problem, T=20")
    assert f"Results: {tmp_path / 'results.json'}" in out and f"Plot: {tmp_path / 'gates.png'}" in out


# -- per experiment: the structure of the numbers ----------------------------------------------


def test_exploding_structure(tiny):
    results, _ = tiny["exploding"]
    settings = results["summary"]["settings"]
    assert len(settings) == len(results["rows"]) == 12  # 6 models, each unclipped and clipped
    assert {(s["nonlinearity"], s["init"]) for s in settings.values()} == {
        ("relu", "identity"), ("relu", "scaled"), ("tanh", "identity"), ("tanh", "scaled")
    }
    seeds = results["config"]["seeds"]
    for label, setting in settings.items():
        assert len(setting["grad_norm_growth"]) == len(setting["test_mse"]) == len(setting["diverged_at"]) == seeds
        assert 0 <= setting["diverged_seeds"] <= setting["exploded_seeds"] <= seeds
        for run in results["data"][label]:
            assert 1 <= len(run["grad_norms"]) == len(run["losses"]) <= results["config"]["steps"]
            profiles = run["time_step_grad_norms"]
            assert set(profiles) == {"0", "1", str(results["config"]["profile_steps"])}
            assert all(len(profile) == results["config"]["length"] for profile in profiles.values())
    assert set(results["summary"]["unclipped_relu_exploded_every_seed"]) == {"identity", "scaled"}
    assert results["summary"]["clipped_runs"] == 6 * seeds


def test_memory_structure(tiny):
    results, _ = tiny["memory"]
    config = results["config"]
    lengths = [int(text) for text in config["lengths"].split(",")]
    assert len(results["rows"]) == 2 * 3 * len(lengths)  # task x model x T
    for task, seeds in (("adding", config["seeds"]), ("copy", config["copy_seeds"])):
        models = results["summary"][task]
        assert set(models) == {"SimpleRNN", "GRU", "LSTM"}
        for model in models.values():
            assert [int(T) for T in model["test_loss"]] == lengths
            for T in model["test_loss"]:
                assert len(model["test_loss"][T]) == len(model["accuracy"][T]) == seeds
                assert all(is_number(value) and value >= 0 for value in model["test_loss"][T])
                assert all(0 <= value <= 1 for value in model["accuracy"][T])
                assert model["verdict"][T] in ("solved", "partly", "baseline")
            assert model["parameters"] > 0
    assert results["summary"]["adding"]["LSTM"]["baseline"][str(lengths[0])] == pytest.approx(1 / 6)


def test_memory_in_two_worker_processes_equals_one_process(tiny, tmp_path):
    results, _ = tiny["memory"]
    assert results["config"]["workers"] == 2  # the default: the tiny run above trained in two processes
    assert main(["experiment", "memory", *tiny_flags("memory"), "--workers=1", "--out", str(tmp_path), "--no-progress"]) == 0
    alone = json.loads((tmp_path / "results.json").read_text())
    assert alone["rows"] == results["rows"] and alone["summary"] == results["summary"]


def test_forget_bias_structure(tiny):
    results, _ = tiny["forget-bias"]
    config, summary = results["config"], results["summary"]
    lags = [str(int(text)) for text in config["lags"].split(",")]
    assert len(results["rows"]) == 3 * len(lags)
    for init in ("zero", "one", "chrono"):
        assert list(summary["seeds_solved"][init]) == lags
        assert all(0 <= summary["seeds_solved"][init][lag] <= config["seeds"] for lag in lags)
        assert all(is_number(summary["mean_final_mse"][init][lag]) for lag in lags)
        curves = results["data"]["test_mse"][init]
        assert all(len(curve) == config["steps"] // config["eval_every"] for lag in lags for curve in curves[lag])


def test_hochreiter1997_structure(tiny):
    results, _ = tiny["hochreiter1997"]
    config, summary = results["config"], results["summary"]
    assert [row[0] for row in results["rows"]][:1] == ["embedded Reber (Exp. 1)"] and len(results["rows"]) == 3
    assert summary["reber"]["trials"] == config["reber_seeds"] == len(results["data"]["reber"])
    assert summary["adding_chrono"]["trials"] == config["adding_seeds"]
    assert summary["adding_forget_bias_one"]["trials"] == config["adding_bias_one_seeds"]
    for trial in results["data"]["reber"]:
        assert len(trial["error_rates"]) >= 1 and all(0 <= rate <= 1 for rate in trial["error_rates"])


def test_gates_structure(tiny):
    results, _ = tiny["gates"]
    config, summary = results["config"], results["summary"]
    assert is_number(summary["test_mse"])
    trace = results["data"]["example_trace"]
    assert set(trace) == {"i", "f", "g", "o", "c", "h"}
    for name, values in trace.items():
        assert len(values) == config["length"] and all(len(step) == config["units"] for step in values)
        if name in "ifo":
            assert all(0 <= value <= 1 for step in values for value in step)
    assert [row[0] for row in results["rows"]] == ["input gate i", "forget gate f", "candidate g", "output gate o"]


def test_trace_gates_replays_a_batch():
    """The gates experiment's replay: its h is the layer's output at every step, its last c the final cell state."""
    torch.manual_seed(0)
    lstm = LSTM(5, input_size=3, return_sequences=True, return_state=True)
    x = torch.randn(4, 7, 3)
    trace = trace_gates(lstm, x)
    with torch.no_grad():
        outputs, _, c = lstm(x)  # (4, 7, 5), (4, 5)
    assert all(value.shape == (4, 7, 5) for value in trace.values())
    assert torch.allclose(trace["h"], outputs, atol=1e-6) and torch.allclose(trace["c"][:, -1], c, atol=1e-6)
    with pytest.raises(ValueError, match="one sequence"):
        trace_gates(lstm, torch.randn(3))


# -- bad input: one line on stderr, exit code 2 ------------------------------------------------


def test_list(capsys):
    assert main(["experiment", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["exploding", "memory", "forget-bias", "hochreiter1997", "gates"]


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "longshort experiment: name an experiment: exploding, memory, forget-bias"),
        (["nope"], "longshort experiment: no experiment 'nope'; there are: exploding, memory"),
        (["gates", "--unit=3"], "longshort experiment: unknown option --unit; GatesConfig has: --length, --units"),
        (["gates", "--units=three"], "longshort experiment: --units takes an integer, got 'three'"),
        (["gates", "--learning_rate=fast"], "longshort experiment: --learning_rate takes a number, got 'fast'"),
        (["gates", "--forget_init=two"], "longshort experiment: --forget_init takes one of zero, one, chrono, got 'two'"),
        (["gates", "--units=0"], "longshort experiment: units must be >= 1, got 0"),
        (["gates", "units=4"], "longshort experiment: expected --field=value, got 'units=4'"),
        (["memory", "--lengths=50,x"], "longshort experiment: lengths must be comma-separated integers"),
        (["exploding", "--small_learning_rate=0.01"], "longshort experiment: learning_rate, small_learning_rate and"),
        (["forget-bias", "--steps=10"], "longshort experiment: eval_every (50) must not exceed steps (10)"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, argv, message):
    assert main(["experiment", *argv, "--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(message) and captured.err.count("\n") == 1
    assert not (tmp_path / "results.json").exists()


# -- the full runs and the README's claims (make check-claims; minutes each, not in CI) ---------


def full_run(name, tmp_path):
    experiment = EXPERIMENTS[name]
    report, path = run_experiment(experiment, experiment.config_class(), tmp_path, progress=False)
    return report.summary


@pytest.mark.slow
def test_exploding_claims(tmp_path):
    """Unclipped ReLU from the identity init explodes in every seed; no clipped run diverges in training.

    What the data support and no more: from the 1.5 x orthogonal init, unclipped ReLU exploded in
    2 of 3 seeds (the third's gradient norm grew 49x, under the 100x mark), and one clipped run of
    that init started beyond the divergence threshold (its very first loss, before any update).
    """
    summary = full_run("exploding", tmp_path)
    settings = summary["settings"]
    seeds = len(settings["relu, identity init, lr 0.01, unclipped"]["diverged_at"])
    assert seeds >= 3
    assert summary["unclipped_relu_exploded_every_seed"]["identity"]
    assert settings["relu, scaled init, lr 0.01, unclipped"]["exploded_seeds"] >= 2
    assert summary["clipped_runs_diverged_in_training"] == 0
    for label, setting in settings.items():
        if setting["clipped"]:
            assert all(step in (None, 0) for step in setting["diverged_at"]), label
    assert settings["tanh, identity init, lr 0.1, unclipped"]["diverged_seeds"] == seeds  # tanh diverges too ...
    assert settings["tanh, identity init, lr 0.1, clipped"]["diverged_seeds"] == 0  # ... and clipping prevents it


@pytest.mark.slow
def test_memory_claims(tmp_path):
    """LSTM and GRU solve the adding problem at T=100 in every seed (test MSE < 0.01); the simple RNN stays at the baseline.

    Within the default step budget LSTM does not solve T=200 (GRU does): not asserted either way.
    """
    summary = full_run("memory", tmp_path)
    adding = summary["adding"]
    for model in ("LSTM", "GRU"):
        assert len(adding[model]["test_loss"][100]) >= 2
        assert all(mse < 0.01 for mse in adding[model]["test_loss"][100]), model
    assert all(verdict == "baseline" for verdict in adding["SimpleRNN"]["verdict"].values())
    assert all(mse > 0.5 * (1 / 6) for values in adding["SimpleRNN"]["test_loss"].values() for mse in values)
    assert adding["SimpleRNN"]["first_baseline_length"] == 50


@pytest.mark.slow
def test_forget_bias_claims(tmp_path):
    """Forget bias 1 and chrono solve every lag in every seed; bias 1 is at least as fast as bias 0, chrono the fastest.

    The data of the default run (lags 25, 50, 100): bias 0 misses T=100 in 1 of 3 seeds.
    """
    summary = full_run("forget-bias", tmp_path)
    lags = list(summary["seeds_solved"]["one"])
    medians = summary["median_steps_to_threshold"]
    for init in ("one", "chrono"):
        assert all(summary["seeds_solved"][init][lag] == summary["seeds"] >= 3 for lag in lags), init
    assert summary["largest_lag_solved_by_all_seeds"]["one"] == max(lags)
    for lag in lags:
        zero = medians["zero"][lag] if medians["zero"][lag] is not None else math.inf
        assert medians["chrono"][lag] <= medians["one"][lag] <= zero, lag


@pytest.mark.slow
def test_hochreiter1997_claims(tmp_path):
    """The paper's criteria: the adding problem (T=100) is learned in every trial, the embedded Reber grammar in >= 90%.

    The paper reports 97-100% of Reber trials; the default run solves 19 of 20 (95%), so the
    test asks for 90%, what the data support. Forget bias 1 solved 0 of 3 adding trials (not asserted).
    """
    summary = full_run("hochreiter1997", tmp_path)
    assert summary["adding_chrono"]["solved"] == summary["adding_chrono"]["trials"] >= 10
    assert summary["reber"]["solved"] >= 0.9 * summary["reber"]["trials"] and summary["reber"]["trials"] >= 20


@pytest.mark.slow
def test_gates_claims(tmp_path):
    """The traced LSTM has learned the task, and its input gate opens at the marked steps."""
    summary = full_run("gates", tmp_path)
    assert summary["test_mse"] < 0.01
    assert summary["input_gate_marked"] > 2 * summary["input_gate_other"]


def test_memory_progress_bar_counts_every_step_from_the_workers(tmp_path, monkeypatch):
    """Reports from the worker processes can cross the queue after their job is done: the bar still ends full."""
    import longshort.experiments.memory as memory

    bars = []

    class RecordingBar(memory.tqdm):
        def close(self):
            if not self.disable:  # tqdm's own close runs once; __del__ (garbage collection) calls it again
                bars.append((self.n, self.total))
            super().close()

    monkeypatch.setattr(memory, "tqdm", RecordingBar)
    assert main(["experiment", "memory", *tiny_flags("memory"), "--workers=2", "--out", str(tmp_path)]) == 0
    (counted, total), = bars
    assert counted == total > 0
