"""Property-based tests (hypothesis) over random shapes, lengths, masks, options and dtypes.

The properties, each over B in 1..5, T in 1..12, F and H in 1..8, float32 and float64, every
built-in cell (LSTM, its peephole and zoneout variants, LayerNormLSTM, GRU, SimpleRNN tanh and
relu) and the layer options (return_sequences, return_state, go_backwards, stateful, use_bias,
dropout and recurrent dropout, Bidirectional and its merge modes):

* every path a configuration allows (vendor, fused) gives the outputs, states and gradients
  of the reference loop (`implementation="loop"`), in training too (the same seed, the same draws);
* a masked batch equals each sequence run alone on its real steps: outputs, last output,
  final state and gradients; masked steps output zero and carry the state;
* two calls of a stateful layer equal one call on the joined sequence;
* NaN and Inf in one sequence, or in padding, change no other sequence, nor any gradient
  when they are only in padding;
* invalid inputs and options, made from valid ones, raise ValueError / TypeError with a
  message that names the problem; calls with arbitrary arguments raise nothing else.

How many examples: each property's count for the "ci" profile is in its `examples(...)`;
`HYPOTHESIS_PROFILE=thorough` runs 10 times as many (tests/conftest.py).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import longshort as ls
from longshort.rnn import map_state

# -- settings and tolerances ------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tensors this small gain nothing from threads, and on a busy machine lose much to them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def examples(ci: int) -> settings:
    """`ci` examples under the "ci" profile, scaled by the loaded profile's max_examples / 100."""
    return settings(max_examples=max(1, ci * settings.default.max_examples // 100))


# Absolute, per unit of the largest expected value; relative: 10 times that. float32's for the layer-norm cells
# is 25 times larger: normalising the cell over few units amplifies rounding up to 1 / sqrt(epsilon) = 316 times.
TOLERANCE = {torch.float32: 2e-5, torch.float64: 1e-10}
LAYER_NORM_FLOAT32 = 5e-4


def assert_same(got: Tensor, want: Tensor, config: "Config", what: str) -> None:
    """Equal up to rounding: rtol, and an atol scaled by the larger of 1 and the largest |want|."""
    tol = TOLERANCE[config.dtype]
    if config.dtype == torch.float32 and config.kind.startswith("LayerNorm"):
        tol = LAYER_NORM_FLOAT32
    scale = 1.0 if want.numel() == 0 else max(1.0, float(want.detach().abs().max()))
    torch.testing.assert_close(got, want, rtol=tol * 10, atol=tol * scale, msg=lambda m: f"{what}: {m}")


# -- the configurations ------------------------------------------------------------------------------

Make = Callable[..., ls.RNN]

# Each kind of cell: units H, input size F and the layer's options -> the layer.
KINDS: dict[str, Make] = {
    "LSTM": lambda H, F, **o: ls.LSTM(H, F, **o),
    "LSTM peephole": lambda H, F, **o: ls.LSTM(H, F, peephole=True, **o),
    "LSTM zoneout": lambda H, F, **o: ls.LSTM(H, F, zoneout=0.25, **o),
    "LayerNormLSTM": lambda H, F, **o: ls.LayerNormLSTM(H, F, **o),
    "LayerNormLSTM zoneout": lambda H, F, **o: ls.LayerNormLSTM(H, F, zoneout=0.25, **o),
    "GRU": lambda H, F, **o: ls.GRU(H, F, **o),
    "SimpleRNN tanh": lambda H, F, **o: ls.SimpleRNN(H, F, **o),
    "SimpleRNN relu": lambda H, F, **o: ls.SimpleRNN(H, F, activation="relu", **o),
    "LSTM hard_sigmoid": lambda H, F, **o: ls.LSTM(H, F, recurrent_activation="hard_sigmoid", **o),  # the loop only
}
KERNEL_KINDS = tuple(kind for kind in KINDS if kind != "LSTM hard_sigmoid")  # those with a vendor or fused path
MERGE_MODES = ("concat", "sum", "mul", "ave", None)


@dataclass(frozen=True)
class Config:
    """One layer and its input, drawn by `configs()`."""

    kind: str  # a key of KINDS
    batch: int  # B
    time: int  # T
    features: int  # F
    units: int  # H
    dtype: torch.dtype  # float32 or float64
    use_bias: bool
    dropout: float  # on the input; drops only in training
    recurrent_dropout: float  # on h_{t-1}; drops only in training
    training: bool  # train mode: dropout and zoneout draw, from the same seed on every path
    return_sequences: bool
    return_state: bool
    go_backwards: bool
    bidirectional: bool  # wrap the layer in Bidirectional
    merge_mode: Optional[str]  # Bidirectional's; unused without it
    seed: int  # weights, inputs, cotangents, dropout draws

    def layer(self, implementation: str = "auto", stateful: bool = False) -> nn.Module:
        """The layer in float64 or float32 with random weights from `seed`, in train or eval mode."""
        layer = KINDS[self.kind](
            self.units, self.features, use_bias=self.use_bias, dropout=self.dropout,
            recurrent_dropout=self.recurrent_dropout, return_sequences=self.return_sequences,
            return_state=self.return_state, go_backwards=self.go_backwards, stateful=stateful,
            implementation=implementation,
        )
        if self.bidirectional:
            layer = ls.Bidirectional(layer, merge_mode=self.merge_mode)
        layer = layer.to(self.dtype)
        generator = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            for parameter in layer.parameters():  # peephole weights and layer-norm gains too, not their zero / one start
                parameter.copy_(torch.rand(parameter.shape, generator=generator, dtype=self.dtype) * 1.2 - 0.6)
        return layer.train(self.training)

    def inputs(self, time: Optional[int] = None, offset: int = 0) -> Tensor:
        """A batch (B, time or T, F) of standard normal values."""
        generator = torch.Generator().manual_seed(self.seed + 1 + offset)
        return torch.randn(self.batch, time or self.time, self.features, generator=generator, dtype=self.dtype)

    def initial_state(self, layer: nn.Module) -> Any:
        """A random initial state of the layer's structure (a pair of them for Bidirectional)."""
        generator = torch.Generator().manual_seed(self.seed + 2)
        like = torch.zeros(1, dtype=self.dtype)

        def random(state: Tensor) -> Tensor:
            return torch.randn(state.shape, generator=generator, dtype=self.dtype)

        layers = (layer.forward_layer, layer.backward_layer) if self.bidirectional else (layer,)
        states = tuple(map_state(random, one.cell.initial_state(self.batch, like)) for one in layers)
        return states if self.bidirectional else states[0]

    def dispatch(self, layer: nn.Module, masked: bool) -> ls.dispatch.Dispatch:
        return (layer.forward_layer if self.bidirectional else layer).dispatch(masked=masked)


@st.composite
def configs(draw, kind: Optional[str] = None, training=(False, True), bidirectional=(False, True), max_time: int = 12) -> Config:
    """A configuration of `kind` (any of KINDS if None)."""
    kind = kind or draw(st.sampled_from(list(KINDS)))
    wrapped = draw(st.sampled_from(bidirectional))
    config = Config(
        kind=kind,
        batch=draw(st.integers(1, 5)),
        time=draw(st.integers(1, max_time)),
        features=draw(st.integers(1, 8)),
        units=draw(st.integers(1, 8)),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        use_bias=draw(st.booleans()),
        dropout=draw(st.sampled_from([0.0, 0.3])),
        recurrent_dropout=draw(st.sampled_from([0.0, 0.4])),
        training=draw(st.sampled_from(training)),
        return_sequences=draw(st.booleans()),
        return_state=draw(st.booleans()),
        go_backwards=draw(st.booleans()),
        bidirectional=wrapped,
        merge_mode=draw(st.sampled_from(MERGE_MODES)) if wrapped else "concat",
        seed=draw(st.integers(0, 2**31)),
    )
    event(f"kind: {kind}")
    return config


MASK_KINDS = ("none", "lengths", "right padding", "left padding", "random", "random, integer 0/1")


@st.composite
def step_masks(draw, batch: int, time: int) -> dict[str, Tensor]:
    """The mask keyword of a call: {}, {"lengths": (B,)} or {"mask": (B, T)}; rows with no real step included."""
    kind = draw(st.sampled_from(MASK_KINDS))
    event(f"mask: {kind}")
    lengths = torch.tensor(draw(st.lists(st.integers(0, time), min_size=batch, max_size=batch)))
    steps = torch.arange(time)
    if kind == "none":
        return {}
    if kind == "lengths":
        return {"lengths": lengths}
    if kind == "right padding":
        return {"mask": steps < lengths[:, None]}
    if kind == "left padding":
        return {"mask": steps >= time - lengths[:, None]}
    rows = st.lists(st.booleans(), min_size=time, max_size=time)
    mask = torch.tensor(draw(st.lists(rows, min_size=batch, max_size=batch)), dtype=torch.bool)
    return {"mask": mask.to(torch.uint8) if kind.endswith("0/1") else mask}


def real_steps(call: dict[str, Tensor], batch: int, time: int) -> Tensor:
    """The boolean (B, T) mask a call's keywords mean: True at real steps."""
    if "lengths" in call:
        return torch.arange(time) < call["lengths"][:, None]
    if "mask" in call:
        return call["mask"] != 0
    return torch.ones(batch, time, dtype=torch.bool)


LAYOUTS = ("contiguous", "time-major storage", "every other step of a longer tensor")


def laid_out(x: Tensor, layout: str) -> Tensor:
    """The same values as x (B, T, F), stored as `layout` says (views that are not contiguous)."""
    if layout == "time-major storage":
        return x.transpose(0, 1).contiguous().transpose(0, 1)
    if layout.startswith("every other step"):
        return torch.stack([x, torch.zeros_like(x)], dim=2).flatten(1, 2)[:, ::2]
    return x


# -- running a layer -----------------------------------------------------------------------------------


class Result(NamedTuple):
    outputs: list[Tensor]  # the output (two for merge_mode None), per call
    states: list[Tensor]  # the final state's tensors (return_state), per call


def split(result: Any, return_state: bool) -> Result:
    output, *states = result if return_state else (result,)
    return Result(list(output) if isinstance(output, tuple) else [output], list(states))


def leaves(state: Any) -> list[Tensor]:
    if state is None:
        return []
    return [state] if isinstance(state, Tensor) else [leaf for part in state for leaf in leaves(part)]


def cotangents(tensors: list[Tensor], seed: int) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed + 3)
    return [torch.randn(t.shape, generator=generator, dtype=t.dtype) for t in tensors]


def gradients(loss: Tensor, wrt: list[Tensor]) -> list[Tensor]:
    """d loss / d each of `wrt`, zeros for those the loss does not reach."""
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    return [torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt, strict=True)]


def run_calls(layer: nn.Module, config: Config, xs: list[Tensor], call: dict, initial_state: Any) -> tuple[list[Tensor], list[Tensor]]:
    """Call `layer` on each of xs in turn (a stateful layer carries its state), the first call from
    `initial_state`. Returns every tensor returned and the gradients of a random linear function of
    them with respect to the inputs, the initial state and the parameters."""
    xs = [x.detach().requires_grad_() for x in xs]
    initial_state = map_state(lambda s: s.detach().requires_grad_(), initial_state) if initial_state is not None else None
    returned = []
    for index, x in enumerate(xs):
        torch.manual_seed(config.seed + index)  # the same dropout and zoneout draws on every path
        result = split(layer(x, initial_state if index == 0 else None, **call), config.return_state)
        returned += result.outputs + result.states
    loss = sum((t * c).sum() for t, c in zip(returned, cotangents(returned, config.seed)))
    wrt = xs + leaves(initial_state) + list(layer.parameters())
    return [t.detach() for t in returned], gradients(loss, wrt)


# -- every path equals the loop -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KERNEL_KINDS)
@given(data=st.data(), stateful=st.booleans(), with_initial_state=st.booleans(), layout=st.sampled_from(LAYOUTS))
@examples(32)
def test_every_path_equals_the_loop(kind: str, data, stateful: bool, with_initial_state: bool, layout: str):
    """vendor and fused, where `dispatch` allows them, give the loop's outputs, states and gradients."""
    config = data.draw(configs(kind))
    stateful = stateful and not config.bidirectional  # Bidirectional refuses a stateful layer (tested below)
    call = data.draw(step_masks(config.batch, config.time)) if data.draw(st.booleans(), label="masked") else {}  # vendor needs {}
    reference = config.layer("loop", stateful)
    probe = config.layer("auto", stateful)
    refused = set(config.dispatch(probe, masked=bool(call)).refused)
    refused |= set(config.dispatch(probe.train(), masked=False).refused)  # what naming a path refuses at construction
    paths = [path for path in ("vendor", "fused") if path not in refused]
    assert "fused" in paths, f"{config.kind}: the fused kernel refused {call}: {refused}"  # it takes every option
    paths.append("auto")  # in eval mode with recurrent dropout, the only way to the vendor kernel
    xs = [laid_out(config.inputs(offset=k), layout) for k in range(2 if stateful else 1)]
    initial_state = config.initial_state(reference) if with_initial_state else None
    want_returned, want_grads = run_calls(reference, config, xs, call, initial_state)
    for path in paths:
        layer = config.layer(path, stateful)
        layer.load_state_dict(reference.state_dict())
        returned, grads = run_calls(layer, config, xs, call, initial_state)
        ran = (layer.forward_layer if config.bidirectional else layer).last_dispatch.implementation
        assert ran == path or path == "auto"
        event(f"{path} ran {ran}")
        for index, (got, want) in enumerate(zip(returned, want_returned, strict=True)):
            assert_same(got, want, config, f"{path}: returned tensor {index}")
        for index, (got, want) in enumerate(zip(grads, want_grads, strict=True)):
            assert_same(got, want, config, f"{path}: gradient {index} (inputs, initial state, parameters)")


# -- a masked batch equals each sequence alone ------------------------------------------------------------


def expected_alone(layer: nn.Module, config: Config, x: Tensor, initial_state: Any, row: int, real: Tensor, cots: list[Tensor]):
    """Row `row` run alone on its real steps: its outputs and states as the batch would place them
    (outputs zero at the masked steps), and the gradients of the same linear function."""
    n_outputs = 2 if config.bidirectional and config.merge_mode is None else 1
    state = map_state(lambda s: s[row : row + 1].detach().requires_grad_(), initial_state)
    x_alone = x[row : row + 1, real].detach().requires_grad_()  # (1, real steps, F), in time order
    placed = real.flip(0) if config.go_backwards else real  # where the outputs land in the batch's output
    if not bool(real.any()):  # nothing to run: zero output, the state passes through
        returned = [c.new_zeros(c[row].shape) for c in cots[:n_outputs]] + [s[0] for s in leaves(state)]
        grads = [torch.zeros_like(x[row])] + [c[row] for c in cots[n_outputs:]] + [None for _ in layer.parameters()]
        return returned, grads
    result = split(layer(x_alone, state), return_state=True)
    returned, row_cots = [], []
    for output, cot in zip(result.outputs, cots):
        if config.return_sequences:
            full = output.new_zeros(cot[row].shape)
            full[placed] = output[0]
            output, cot = full, cot[row : row + 1, placed]
        else:
            output, cot = output[0], cot[row : row + 1]
        returned.append(output)
        row_cots.append(cot)
    returned += [s[0] for s in result.states]
    row_cots += [c[row : row + 1] for c in cots[n_outputs:]]
    ran = result.outputs + result.states
    loss = sum((t * c).sum() for t, c in zip(ran, row_cots))
    grad_x, *rest = gradients(loss, [x_alone] + leaves(state) + list(layer.parameters()))
    full_grad_x = torch.zeros_like(x[row])
    full_grad_x[real] = grad_x[0]
    n_states = len(leaves(state))
    return returned, [full_grad_x] + [g[0] for g in rest[:n_states]] + rest[n_states:]


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data(), with_initial_state=st.booleans())
@examples(14)
def test_a_masked_batch_equals_each_sequence_alone(kind: str, data, with_initial_state: bool):
    """Outputs at real steps, last output, final state and every gradient as if each sequence ran
    alone on its real steps; zero output at masked steps; a row with none keeps its initial state."""
    config = dataclasses.replace(data.draw(configs(kind, training=(False,))), return_state=True)
    call = data.draw(step_masks(config.batch, config.time))
    layer = config.layer()
    x = config.inputs().requires_grad_()
    initial_state = config.initial_state(layer)
    given_state = map_state(lambda s: s.clone().requires_grad_(), initial_state) if with_initial_state else None
    result = split(layer(x, given_state, **call), return_state=True)
    returned = result.outputs + result.states
    cots = cotangents(returned, config.seed)
    loss = sum((t * c).sum() for t, c in zip(returned, cots))
    n_states = len(result.states)
    grads = gradients(loss, [x] + leaves(given_state) + list(layer.parameters()))
    real = real_steps(call, config.batch, config.time)
    if not with_initial_state:
        initial_state = map_state(torch.zeros_like, initial_state)
    parameter_grads = [torch.zeros_like(p) for p in layer.parameters()]
    for row in range(config.batch):
        want, want_grads = expected_alone(layer, config, x, initial_state, row, real[row], cots)
        for index, (got, expected) in enumerate(zip(returned, want, strict=True)):
            assert_same(got[row], expected, config, f"row {row}, returned tensor {index}")
        assert_same(grads[0][row], want_grads[0], config, f"row {row}: gradient of the input")
        if with_initial_state:
            for index, (got, expected) in enumerate(zip(grads[1 : 1 + n_states], want_grads[1 : 1 + n_states])):
                assert_same(got[row], expected, config, f"row {row}: gradient of initial state {index}")
        for total, part in zip(parameter_grads, want_grads[1 + n_states :]):
            if part is not None:
                total += part
    for index, (got, expected) in enumerate(zip(grads[1 + len(leaves(given_state)) :], parameter_grads, strict=True)):
        assert_same(got, expected, config, f"gradient of parameter {index}: the batch's against the sum of the rows'")


# -- stateful calls equal one call on the joined sequence ----------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@given(second_time=st.integers(1, 6), data=st.data())
@examples(10)
def test_stateful_calls_equal_one_call_on_the_joined_sequence(kind: str, second_time: int, data):
    """Two calls of a stateful layer (masks included) give the outputs and final state of one call on
    both parts joined (in reverse order with go_backwards); reset_states() starts over."""
    config = data.draw(configs(kind, training=(False,), bidirectional=(False,), max_time=6))
    config = dataclasses.replace(config, return_sequences=True, return_state=True)
    drawn = data.draw(step_masks(config.batch, config.time + second_time))
    first, second = config.inputs(), config.inputs(second_time, offset=1)
    first_call, second_call, joined_call = {}, {}, {}
    if drawn:
        first_mask, second_mask = real_steps(drawn, config.batch, config.time + second_time).split([config.time, second_time], dim=1)
        first_call, second_call = {"mask": first_mask}, {"mask": second_mask}
        joined_call = {"mask": torch.cat([second_mask, first_mask] if config.go_backwards else [first_mask, second_mask], dim=1)}
    joined_x = torch.cat([second, first] if config.go_backwards else [first, second], dim=1)  # in the order the layer reads
    stateful = config.layer(stateful=True)
    with torch.no_grad():
        output_1, *_ = stateful(first, **first_call)
        output_2, *state = stateful(second, **second_call)
        output, *want_state = config.layer()(joined_x, **joined_call)
        assert_same(torch.cat([output_1, output_2], dim=1), output, config, "outputs of both calls")
        for got, want in zip(state, want_state, strict=True):
            assert_same(got, want, config, "final state")
        stateful.reset_states()
        assert_same(stateful(first, **first_call)[0], output_1, config, "after reset_states()")


# -- NaN and Inf -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data(), value=st.sampled_from([math.nan, math.inf, -math.inf]))
@examples(12)
def test_nan_and_inf_stay_in_their_sequence(kind: str, data, value: float):
    """NaN or Inf at random steps crash nothing; the sequences that have none at a real step give the
    outputs and input gradients of a clean run, and when they sit only in padding every gradient is
    the clean run's (parameters included)."""
    config = data.draw(configs(kind, training=(False,)))
    call = data.draw(step_masks(config.batch, config.time))
    real = real_steps(call, config.batch, config.time)
    spots = st.tuples(st.integers(0, config.batch - 1), st.integers(0, config.time - 1), st.integers(0, config.features - 1))
    poisoned_at = data.draw(st.lists(spots, min_size=1, max_size=6))
    clean = config.inputs()
    poisoned = clean.clone()
    for b, t, f in poisoned_at:
        poisoned[b, t, f] = value
    hit_rows = {b for b, t, _ in poisoned_at if real[b, t]}
    event("poison only in padding" if not hit_rows else "poison at real steps")
    layer = config.layer()
    want, want_grads = run_calls(layer, config, [clean], call, None)
    got, got_grads = run_calls(layer, config, [poisoned], call, None)
    kept = [b for b in range(config.batch) if b not in hit_rows]
    for index, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.shape == w.shape
        assert_same(g[kept], w[kept], config, f"returned tensor {index}, rows without NaN / Inf at real steps")
    assert_same(got_grads[0][kept], want_grads[0][kept], config, "input gradient of the clean rows")
    if not hit_rows:
        for index, (g, w) in enumerate(zip(got_grads, want_grads, strict=True)):
            assert_same(g, w, config, f"gradient {index} with NaN / Inf only in padding")


# -- invalid inputs raise clear errors -----------------------------------------------------------------------


class Bad(NamedTuple):
    call: Callable[[], Any]  # what must raise
    error: type[Exception]  # ValueError or TypeError
    message: str  # a regular expression the message must match


def _call(config: Config, layer: nn.Module = None, x: Tensor = None, **keywords) -> Callable[[], Any]:
    layer = config.layer() if layer is None else layer
    x = config.inputs() if x is None else x
    return lambda: layer(x, **keywords)


def _other_than(value: int, low: int, high: int) -> st.SearchStrategy[int]:
    """An int in [low, high] other than `value` (a filter would give up where few values pass)."""
    return st.sampled_from([n for n in range(low, high + 1) if n != value])


def wrong_rank(data, config: Config) -> Bad:
    rank = data.draw(_other_than(3, 0, 5))
    shape = data.draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank))
    return Bad(_call(config, x=torch.randn(shape, dtype=config.dtype)), ValueError, rf"input of rank 3.*got rank {len(shape)}")


def wrong_features(data, config: Config) -> Bad:
    features = data.draw(_other_than(config.features, 1, 12))
    x = torch.randn(config.batch, config.time, features, dtype=config.dtype)
    return Bad(_call(config, x=x), ValueError, rf"built for {config.features} input features, got {features}")


def wrong_features_after_lazy_build(data, config: Config) -> Bad:
    layer = KINDS[config.kind](config.units, None).to(config.dtype)  # input_size inferred on the first call
    layer(config.inputs())
    features = data.draw(_other_than(config.features, 1, 12))
    x = torch.randn(config.batch, config.time, features, dtype=config.dtype)
    return Bad(_call(config, layer, x), ValueError, rf"built for {config.features} input features, got {features}")


def non_float_input(data, config: Config) -> Bad:
    dtype = data.draw(st.sampled_from([torch.int64, torch.int32, torch.int8, torch.uint8, torch.bool, torch.complex64]))
    x = config.inputs().to(dtype) if dtype != torch.bool else config.inputs() > 0
    return Bad(_call(config, x=x), TypeError, re.escape(f"floating-point input, got {dtype}"))


def other_float_dtype(data, config: Config) -> Bad:
    dtype = data.draw(st.sampled_from([d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64) if d != config.dtype]))
    return Bad(_call(config, x=config.inputs().to(dtype)), TypeError, re.escape(f"{config.dtype} parameters but got a {dtype} input"))


def empty_input(data, config: Config) -> Bad:
    shape = [config.batch, config.time, config.features]
    shape[data.draw(st.integers(0, 2))] = 0
    return Bad(_call(config, x=torch.zeros(shape, dtype=config.dtype)), ValueError, re.escape(f"empty input of shape {tuple(shape)}"))


def mask_of_wrong_shape(data, config: Config) -> Bad:
    shape = data.draw(st.lists(st.integers(1, 13), min_size=1, max_size=3).filter(lambda s: tuple(s) != (config.batch, config.time)))
    mask = torch.ones(shape, dtype=torch.bool)
    return Bad(_call(config, mask=mask), ValueError, re.escape(f"mask must have shape (batch, time) = ({config.batch}, {config.time})"))


def mask_of_wrong_dtype(data, config: Config) -> Bad:
    if data.draw(st.booleans()):
        mask = torch.ones(config.batch, config.time, dtype=data.draw(st.sampled_from([torch.float32, torch.float64, torch.float16])))
    else:  # integers, one of them neither 0 nor 1
        mask = torch.ones(config.batch, config.time, dtype=torch.int64)
        mask[data.draw(st.integers(0, config.batch - 1)), data.draw(st.integers(0, config.time - 1))] = data.draw(
            st.sampled_from([-5, -1, 2, 3, 255])
        )
    return Bad(_call(config, mask=mask), TypeError, "mask must be boolean")


def mask_not_a_tensor(data, config: Config) -> Bad:
    mask = torch.ones(config.batch, config.time, dtype=torch.bool)
    mask = data.draw(st.sampled_from([mask.tolist(), mask.numpy()]))
    return Bad(_call(config, mask=mask), TypeError, "mask must be a torch.Tensor")


def lengths_out_of_range(data, config: Config) -> Bad:
    good = st.integers(0, config.time)
    bad = st.one_of(st.integers(-(2**40), -1), st.integers(config.time + 1, 2**40))
    lengths = data.draw(st.lists(good, min_size=config.batch - 1, max_size=config.batch - 1))
    lengths.insert(data.draw(st.integers(0, config.batch - 1)), data.draw(bad))
    return Bad(_call(config, lengths=torch.tensor(lengths)), ValueError, re.escape(f"lengths must lie in [0, {config.time}]"))


def lengths_of_wrong_shape(data, config: Config) -> Bad:
    shape = data.draw(st.lists(st.integers(0, 6), max_size=3).filter(lambda s: tuple(s) != (config.batch,)))
    lengths = torch.ones(shape, dtype=torch.int64)
    return Bad(_call(config, lengths=lengths), ValueError, re.escape(f"lengths must have shape (batch,) = ({config.batch},)"))


def lengths_not_integers(data, config: Config) -> Bad:
    lengths = torch.ones(config.batch, dtype=data.draw(st.sampled_from([torch.float32, torch.float64, torch.bool])))
    lengths = data.draw(st.sampled_from([lengths, lengths.tolist()]))
    return Bad(_call(config, lengths=lengths), TypeError, "lengths must hold integers")


def mask_and_lengths(data, config: Config) -> Bad:
    call = _call(config, mask=torch.ones(config.batch, config.time, dtype=torch.bool), lengths=torch.ones(config.batch, dtype=torch.int64))
    return Bad(call, ValueError, "either mask= or lengths=, not both")


def _bad_state(data, config: Config, layer: nn.Module, state: Any) -> Any:
    """`state` with one tensor of a wrong shape, or with a tensor missing or too many."""
    flat = leaves(state)
    how = data.draw(st.sampled_from(["batch", "units", "rank", "missing", "extra"]))
    index = data.draw(st.integers(0, len(flat) - 1))
    if how == "missing":
        return flat[0] if len(flat) == 2 else (flat[0], flat[0])
    if how == "extra":
        return tuple(flat) + (flat[0],)
    shape = list(flat[index].shape)
    if how == "rank":
        shape = [1] + shape
    else:
        axis = 0 if how == "batch" else 1
        shape[axis] = data.draw(_other_than(shape[axis], 1, 9))
    flat[index] = torch.zeros(shape, dtype=config.dtype)
    return type(state)(*flat) if hasattr(state, "_fields") else (tuple(flat) if len(flat) > 1 else flat[0])


def initial_state_of_wrong_shape(data, config: Config) -> Bad:
    layer = config.layer()
    state = config.initial_state(layer)
    if config.bidirectional:
        direction = data.draw(st.integers(0, 1))
        state = tuple(_bad_state(data, config, layer, s) if k == direction else s for k, s in enumerate(state))
    else:
        state = _bad_state(data, config, layer, state)
    return Bad(_call(config, layer, initial_state=state), ValueError, "initial_state must")


def initial_state_of_wrong_dtype(data, config: Config) -> Bad:
    layer = config.layer()
    dtype = torch.float64 if config.dtype == torch.float32 else data.draw(st.sampled_from([torch.float32, torch.float16]))
    state = map_state(lambda s: s.to(dtype), config.initial_state(layer))
    return Bad(_call(config, layer, initial_state=state), TypeError, re.escape(f"initial_state must have the input's dtype {config.dtype}"))


def bidirectional_state_not_a_pair(data, config: Config) -> Bad:
    layer = ls.Bidirectional(KINDS[config.kind](config.units, config.features)).to(config.dtype)
    one_direction = dataclasses.replace(config, bidirectional=True).initial_state(layer)[0]
    state = data.draw(st.sampled_from([one_direction, (one_direction,), (one_direction,) * 3, leaves(one_direction)[0]]))
    return Bad(_call(config, layer, initial_state=state), ValueError, "initial_state must (be a pair|look like)")


def stateful_batch_changes(data, config: Config) -> Bad:
    layer = KINDS[config.kind](config.units, config.features, stateful=True).to(config.dtype)
    layer(config.inputs())
    batch = data.draw(_other_than(config.batch, 1, 6))
    x = torch.randn(batch, config.time, config.features, dtype=config.dtype)
    return Bad(_call(config, layer, x), ValueError, f"carries a state for batch size {config.batch}, got a batch of {batch}")


def mask_for_the_vendor_path(data, config: Config) -> Bad:
    layer = KINDS["LSTM"](config.units, config.features, implementation="vendor").to(config.dtype)
    return Bad(_call(config, layer, lengths=torch.full((config.batch,), config.time)), ValueError, "takes no mask")


def _construct(config: Config, **options) -> Callable[[], Any]:
    return lambda: KINDS[config.kind](options.pop("units", config.units), options.pop("input_size", config.features), **options)


NOT_A_NUMBER = st.one_of(st.text(max_size=3), st.none(), st.lists(st.integers(0, 1), max_size=2))


def bad_units(data, config: Config) -> Bad:
    units = data.draw(st.one_of(st.integers(-(2**40), 0), st.floats(allow_nan=True), st.booleans(), NOT_A_NUMBER))
    return Bad(_construct(config, units=units), ValueError, re.escape(f"units must be a positive int, got {units!r}"))


def bad_input_size(data, config: Config) -> Bad:
    size = data.draw(st.one_of(st.integers(-(2**40), 0), st.floats(allow_nan=True), st.booleans(), st.text(max_size=3)))
    return Bad(_construct(config, input_size=size), ValueError, "input_size must be a positive int or None")


def bad_rate(data, config: Config) -> Bad:
    names = ["dropout", "recurrent_dropout"] + (["zoneout"] if config.kind in ("LSTM", "LayerNormLSTM") else [])
    name = data.draw(st.sampled_from(names))
    outside = st.one_of(st.floats(max_value=0.0, exclude_max=True), st.floats(min_value=1.0), st.just(math.nan), st.integers(1, 10))
    rate = data.draw(st.one_of(outside, NOT_A_NUMBER))
    error = ValueError if isinstance(rate, (int, float)) else TypeError
    return Bad(_construct(config, **{name: rate}), error, rf"^{name} must (lie in|be a number in) \[0, 1\), got")


def unknown_implementation(data, config: Config) -> Bad:
    name = data.draw(st.one_of(st.text(max_size=8), st.none(), st.integers()).filter(lambda n: n not in ls.dispatch.IMPLEMENTATIONS))
    return Bad(_construct(config, implementation=name), ValueError, "implementation must be one of")


def implementation_that_cannot_run(data, config: Config) -> Bad:
    refused = config.dispatch(config.layer(), masked=False).refused
    path = data.draw(st.sampled_from(sorted(set(refused) & {"vendor", "fused"}) or ["vendor"]))
    if path not in refused:  # every path can run this configuration: take one that cannot
        config = dataclasses.replace(config, kind="LSTM hard_sigmoid")
    return Bad(_construct(config, implementation=path), ValueError, rf"implementation='{path}'\) cannot run this configuration")


def unknown_activation(data, config: Config) -> Bad:
    option = data.draw(st.sampled_from(["activation", "recurrent_activation"]))
    name = data.draw(st.one_of(st.text(max_size=8), st.integers()).filter(lambda n: n not in ls.ACTIVATIONS))
    make = ls.GRU if data.draw(st.booleans()) else ls.LSTM
    return Bad(lambda: make(config.units, **{option: name}), ValueError, re.escape(f"unknown activation {name!r}"))


def unknown_merge_mode(data, config: Config) -> Bad:
    mode = data.draw(st.one_of(st.text(max_size=8), st.integers(), st.lists(st.none(), max_size=1)).filter(lambda m: m not in MERGE_MODES))
    return Bad(lambda: ls.Bidirectional(KINDS[config.kind](config.units, None), merge_mode=mode), ValueError, "merge_mode must be one of")


def flag_that_is_not_a_bool(data, config: Config) -> Bad:
    name = data.draw(st.sampled_from(["return_sequences", "return_state", "go_backwards", "stateful", "use_bias"]))
    value = data.draw(st.one_of(st.integers(0, 1), st.sampled_from(["True", "false", "yes", None, 1.0])))
    return Bad(_construct(config, **{name: value}), ValueError, re.escape(f"{name} must be True or False, got {value!r}"))


def stateful_bidirectional(data, config: Config) -> Bad:
    return Bad(lambda: ls.Bidirectional(KINDS[config.kind](config.units, None, stateful=True)), ValueError, "does not take a stateful layer")


def bad_epsilon(data, config: Config) -> Bad:
    epsilon = data.draw(st.one_of(st.floats(max_value=0.0), st.just(math.nan), st.just(math.inf), NOT_A_NUMBER))
    return Bad(lambda: ls.LayerNormLSTM(config.units, epsilon=epsilon), ValueError, re.escape(f"epsilon must be a positive finite number, got {epsilon!r}"))


MUTATIONS: dict[str, Callable[[Any, Config], Bad]] = {
    "wrong rank": wrong_rank,
    "wrong feature size": wrong_features,
    "wrong feature size after a lazy build": wrong_features_after_lazy_build,
    "non-float input": non_float_input,
    "input of another float dtype than the weights": other_float_dtype,
    "empty input": empty_input,
    "mask of a wrong shape": mask_of_wrong_shape,
    "mask of a wrong dtype": mask_of_wrong_dtype,
    "mask not a tensor": mask_not_a_tensor,
    "lengths out of range": lengths_out_of_range,
    "lengths of a wrong shape": lengths_of_wrong_shape,
    "lengths not integers": lengths_not_integers,
    "mask and lengths": mask_and_lengths,
    "initial state of a wrong shape": initial_state_of_wrong_shape,
    "initial state of a wrong dtype": initial_state_of_wrong_dtype,
    "Bidirectional initial state not a pair": bidirectional_state_not_a_pair,
    "stateful layer given another batch size": stateful_batch_changes,
    "a mask for the vendor path": mask_for_the_vendor_path,
    "units": bad_units,
    "input_size": bad_input_size,
    "dropout, recurrent_dropout, zoneout": bad_rate,
    "unknown implementation": unknown_implementation,
    "an implementation that cannot run": implementation_that_cannot_run,
    "unknown activation": unknown_activation,
    "unknown merge_mode": unknown_merge_mode,
    "a flag that is not a bool": flag_that_is_not_a_bool,
    "stateful Bidirectional": stateful_bidirectional,
    "LayerNormLSTM epsilon": bad_epsilon,
}


@pytest.mark.parametrize("mutation", MUTATIONS)
@examples(10)
@given(config=configs(training=(False,)), data=st.data())
def test_invalid_input_raises_a_clear_error(mutation: str, config: Config, data):
    """A valid configuration made invalid in one way raises ValueError / TypeError with a message that names it."""
    bad = MUTATIONS[mutation](data, config)
    with pytest.raises(bad.error, match=bad.message):
        bad.call()


# -- any call either works or raises a clear error ----------------------------------------------------------

ARGUMENT_WORDS = {"x": ("input", "features"), "initial_state": ("initial_state",), "mask": ("mask",), "lengths": ("lengths",)}
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64]


@st.composite
def arbitrary(draw, valid: Any) -> Any:
    """A tensor of any shape (empty ones too) and dtype, a list, an array, a number, a string, or `valid` twice."""
    shape = draw(st.lists(st.integers(0, 6), max_size=4))
    tensor = (torch.randn(shape) * 4).to(draw(st.sampled_from(DTYPES)))
    return draw(st.sampled_from([tensor, tensor.tolist(), tensor.numpy() if tensor.dtype != torch.bfloat16 else tensor,
                                 draw(st.integers(-3, 20)), draw(st.text(max_size=2)), [valid, valid]]))


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
@examples(20)
def test_any_call_returns_or_raises_a_clear_error(kind: str, data):
    """A call with arbitrary x, initial_state, mask and lengths returns outputs of the batch's size or
    raises ValueError / TypeError that names an argument it was given wrong (never IndexError,
    RuntimeError, a recursion or a crash)."""
    config = data.draw(configs(kind, training=(False,)))
    layer = config.layer()
    valid = {
        "x": config.inputs(),
        "initial_state": config.initial_state(layer),
        "mask": torch.ones(config.batch, config.time, dtype=torch.bool),
        "lengths": torch.full((config.batch,), config.time),
    }
    arguments, changed = {}, set()
    for name, value in valid.items():
        how = data.draw(st.sampled_from(["valid", "arbitrary"] if name == "x" else ["absent", "valid", "arbitrary"]), label=name)
        if how != "absent":
            arguments[name] = data.draw(arbitrary(value)) if how == "arbitrary" else value
        if arguments.get(name, value) is not value:
            changed.add(name)
    if "mask" in arguments and "lengths" in arguments:
        changed.add("mask")
    event(f"arguments changed: {', '.join(sorted(changed)) or 'none'}")
    x = arguments.pop("x")
    try:
        result = layer(x, **arguments)
    except (ValueError, TypeError) as error:
        named = ARGUMENT_WORDS if "x" in changed else changed  # a changed x may make any other argument wrong
        words = [word for name in named for word in ARGUMENT_WORDS[name]]
        assert changed, f"a valid call raised {error!r}"
        assert any(word in str(error) for word in words), f"{error!r} names none of {words}"
    else:
        for tensor in leaves(result):
            assert tensor.shape[0] == x.shape[0]
