"""The guard of `train_step` and of the epoch loop of `longshort train`: a NaN or infinite loss or
gradient never reaches the weights; it stops training with a message that says what and where,
or (with skip_nonfinite) the step is skipped and counted."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

import longshort as ls
import longshort.checkpoints as checkpoints
from longshort.checkpoints import EpochLoop, TrainingState, load_checkpoint, train_epochs
from longshort.cli import config_from_overrides, main
from longshort.charmodel import CharModel
from longshort.forecasting import Forecaster


def tiny_model() -> ls.Sequential:
    torch.manual_seed(0)
    return ls.Sequential(ls.LSTM(4, 2), ls.Dense(1, 4))


def batch(nan: bool = False):
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(3, 5, 2, generator=generator), torch.randn(3, 1, generator=generator)
    if nan:
        x[1, 2, 0] = math.nan
    return x, y


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def assert_unchanged(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


# ------------------------------------------------------------------ train_step


def test_a_nan_in_the_data_stops_with_the_step_and_leaves_the_weights_alone():
    model, history = tiny_model(), ls.History()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = batch()
    ls.train_step(model, lambda: F.mse_loss(model(x), y), optimizer, ls.Clip(max_norm=1.0), history)
    before, adam_state = weights(model), {k: v["exp_avg"].clone() for k, v in optimizer.state.items()}
    bad_x, _ = batch(nan=True)
    with pytest.raises(ls.NonFiniteError, match=r"^the loss is nan at step 2: the weights were not updated; lower the learning rate") as caught:
        ls.train_step(model, lambda: F.mse_loss(model(bad_x), y), optimizer, ls.Clip(max_norm=1.0), history)
    assert caught.value.step == 2 and caught.value.problem == "the loss is nan"
    assert_unchanged(model, before)
    assert all(torch.equal(optimizer.state[k]["exp_avg"], v) for k, v in adam_state.items())  # no optimizer step either
    assert math.isnan(history.losses[-1]) and len(history.losses) == 2  # recorded, for the diagnostics
    ls.train_step(model, lambda: F.mse_loss(model(x), y), optimizer, None, history)  # and training can go on
    assert not torch.equal(model.state_dict()["0.cell.weight_hh"], before["0.cell.weight_hh"])


def test_a_non_finite_gradient_with_a_finite_loss_names_the_parameter_even_with_value_clipping():
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = batch()
    head_bias = model[1].bias  # zero: sqrt is 0 there, with an infinite slope
    before = weights(model)
    with pytest.raises(ls.NonFiniteError, match=r"^the gradient is not finite in 1\.bias \(inf\) \(loss [0-9.]+\): the weights") as caught:
        # Value clipping would turn inf into a finite number: the check comes before it.
        ls.train_step(model, lambda: F.mse_loss(model(x), y) + head_bias.sqrt().sum(), optimizer, ls.Clip(max_value=1.0))
    assert caught.value.step is None  # no history counts the steps
    assert_unchanged(model, before)


def test_a_huge_learning_rate_stops_at_the_step_whose_loss_explodes():
    model, history = tiny_model(), ls.History()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e30)
    x, y = batch()
    with pytest.raises(ls.NonFiniteError, match=r"at step (\d+)") as caught:
        for _ in range(5):
            ls.train_step(model, lambda: F.mse_loss(model(x), y), optimizer, None, history)
    assert caught.value.step == len(history.losses) >= 2
    assert all(torch.isfinite(tensor).all() for tensor in model.state_dict().values())


def test_skip_drops_the_step_counts_it_and_trains_on():
    model, history = tiny_model(), ls.History()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    (x, y), (bad_x, _) = batch(), batch(nan=True)
    for inputs in (x, bad_x, x, bad_x, x):
        before = weights(model)
        loss = ls.train_step(model, lambda: F.mse_loss(model(inputs), y), optimizer, ls.Clip(max_norm=1.0), history, skip_nonfinite=True)
        if inputs is bad_x:
            assert math.isnan(loss) and all(p.grad is None for p in model.parameters())  # its gradients were dropped
            assert_unchanged(model, before)
    assert history.skipped == [2, 4] and len(history.losses) == 5
    assert all(torch.isfinite(tensor).all() for tensor in model.state_dict().values())
    assert math.isfinite(history.losses[-1]) and history.losses[-1] < history.losses[0]


# ------------------------------------------------------------------ the epoch loop


def epoch_loop(model, validation=lambda: 1.0, skip_nonfinite=False, nan_batches=()):
    """Two batches an epoch; the batches numbered in `nan_batches` (1-based, over the run) hold a NaN."""
    counter = iter(range(1, 1000))

    def epoch_batches(generator):
        return [batch(nan=next(counter) in nan_batches) for _ in range(2)]

    return EpochLoop(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), epoch_batches=epoch_batches,
        batch_loss=lambda trained, x, y: F.mse_loss(trained(x), y), validation_loss=validation, clip=ls.Clip(max_norm=1.0),
        seed=0, unit="seq", skip_nonfinite=skip_nonfinite,
    )


def run_epochs(loop, epochs=3, saved=None):
    return train_epochs(loop, TrainingState(), epochs, 0, lambda state: saved.append(state.epoch) if saved is not None else None, False, "")


def test_the_epoch_loop_stops_with_epoch_and_batch_and_saves_nothing_after():
    model, saved = tiny_model(), []
    with pytest.raises(ls.NonFiniteError, match=re.escape("the loss is nan at step 4 (epoch 2 of 3, batch 2 of 2): the weights were not updated; lower learning_rate")):
        run_epochs(epoch_loop(model, nan_batches={4}), saved=saved)
    assert saved == [1]  # the checkpoint keeps epoch 1


def test_the_epoch_loop_skips_counts_and_averages_the_kept_steps():
    model = tiny_model()
    state = run_epochs(epoch_loop(model, skip_nonfinite=True, nan_batches={2, 5}))
    assert state.epoch == 3 and state.steps == 6 and state.skipped_steps == [2, 5]
    assert all(math.isfinite(loss) for loss in state.train_losses)


def test_the_epoch_loop_gives_up_after_an_epochs_worth_of_skipped_steps_in_a_row():
    with pytest.raises(ls.NonFiniteError, match=r"the last 2 steps \(an epoch's worth\) .* skipped, up to step 5 \(epoch 3 of 3, batch 1 of 2\): giving up"):
        run_epochs(epoch_loop(tiny_model(), skip_nonfinite=True, nan_batches={1, 4, 5}))


def test_a_non_finite_validation_loss_stops_or_is_never_the_best():
    values = iter([2.0, math.nan, math.inf])
    with pytest.raises(ls.NonFiniteError, match=r"^the validation loss is nan after epoch 2: the epoch is not kept"):
        run_epochs(epoch_loop(tiny_model(), validation=lambda: next(values)))
    values = iter([math.nan, 2.0, math.inf])
    state = run_epochs(epoch_loop(tiny_model(), validation=lambda: next(values), skip_nonfinite=True))
    assert state.best_epoch == 2 and state.best_validation == 2.0 and state.stale_epochs == 1


# ------------------------------------------------------------------ longshort train


def train(capsys, out, *options, kind="series"):
    """`longshort train` with a tiny model on a small sine series or text, written into `out`: (exit code, stdout, stderr)."""
    out.mkdir(exist_ok=True)
    if kind == "series":
        data, tiny = out / "series.csv", ["--lookback=6"]
        data.write_text("year,v\n" + "".join(f"{2000 + t},{math.sin(t / 3):.4f}\n" for t in range(60)))
    else:  # 504 characters to train on: 2 batches of sequences of 10 an epoch
        data, tiny = out / "book.txt", ["--text", "--seq_len=10", "--embedding=4"]
        data.write_text("a small text to learn from. " * 20)
    code = main(["train", str(data), "--out", str(out), "--units=4", "--no-progress", *tiny, *options])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.out, captured.err


def test_cli_a_huge_learning_rate_exits_non_zero_with_the_message(tmp_path, capsys):
    code, _, err = train(capsys, tmp_path, "--learning_rate=1e30", "--epochs=2")
    assert code == 3
    assert re.fullmatch(r"longshort train: the loss is (nan|inf) at step \d+ \(epoch 1 of 2, batch \d of 2\): the weights were not updated; "
                        r"lower learning_rate or clip_norm .* --skip_nonfinite=true .*\.\n", err), err


@pytest.mark.parametrize("kind", ["series", "text"])
def test_cli_stops_keeps_the_last_good_epoch_then_resumes_skipping(tmp_path, capsys, monkeypatch, kind):
    real_step = checkpoints.train_step
    steps = []

    def nan_at_step_5(model, loss_fn, *rest):
        steps.append(1)
        return real_step(model, (lambda: loss_fn() * math.nan) if len(steps) == 5 else loss_fn, *rest)

    monkeypatch.setattr(checkpoints, "train_step", nan_at_step_5)
    code, _, err = train(capsys, tmp_path, "--epochs=4", kind=kind)
    assert code == 3 and err.startswith("longshort train: the loss is nan at step 5 (epoch 3 of 4, batch 1 of 2)")
    assert err.rstrip().endswith(f"{tmp_path / 'checkpoint.pt'} keeps the last finished epoch.")
    payload = load_checkpoint(tmp_path)
    assert payload["training"]["epoch"] == 2
    assert all(torch.isfinite(tensor).all() for tensor in payload["model"].values())
    if kind == "series":  # it loads and forecasts
        assert all(math.isfinite(value) for value in Forecaster.load(tmp_path).forecast(3).values)
    else:  # it loads and writes
        assert len(CharModel.load(tmp_path).generate("a", 20, 0.8, 0)) == 20

    steps.clear()  # the resumed run meets the NaN at its first step, step 5 of the run
    steps.extend([1] * 4)
    code, printed, _ = train(capsys, tmp_path, "--epochs=4", "--skip_nonfinite=true", kind=kind)
    assert code == 0 and "Resuming from" in printed
    assert "Skipped 1 of 8 steps (a non-finite loss or gradient): 5." in printed
    payload = load_checkpoint(tmp_path)
    assert payload["training"]["epoch"] == 4 and payload["training"]["skipped_steps"] == [5]
    assert payload["config"]["skip_nonfinite"] is True


def test_skip_nonfinite_is_a_field_of_both_configs():
    assert config_from_overrides(ls.SeriesConfig, ["--skip_nonfinite=true"]).skip_nonfinite is True
    assert config_from_overrides(ls.TextConfig, ["--skip_nonfinite=false"]).skip_nonfinite is False
    assert "skip_nonfinite" in checkpoints.RESUMABLE_CHANGES
    with pytest.raises(ValueError, match="--skip_nonfinite takes true or false, got 'sometimes'"):
        config_from_overrides(ls.TextConfig, ["--skip_nonfinite=sometimes"])
