"""The embedded Reber grammar (Cleeremans, Servan-Schreiber & McClelland 1989), as in
Experiment 1 of Hochreiter & Schmidhuber (1997).

A Reber string walks the graph below from B to E; where a node has two exits, each is
taken with probability 1/2:

    0 -B-> 1;  1 -T-> 2, 1 -P-> 3;  2 -S-> 2, 2 -X-> 4;  3 -T-> 3, 3 -V-> 5;
    4 -X-> 3, 4 -S-> 6;  5 -P-> 4, 5 -V-> 6;  6 -E-> end

An embedded Reber string is `B T <Reber string> T E` or `B P <Reber string> P E`: the
second symbol must come back as the second to last, across the whole inner string. A
network that predicts the next symbol has to remember it; everything else is local.

Both the generator and the checks walk one automaton, so they cannot disagree.
"""

from __future__ import annotations

import random
from typing import NamedTuple, Optional

import torch
from torch import Tensor

SYMBOLS = "BTPSXVE"  # the 7 symbols, in the order of the one-hot units
REBER_GRAPH: dict[int, dict[str, int]] = {  # node -> {symbol: next node}; node 7 is the end
    0: {"B": 1},
    1: {"T": 2, "P": 3},
    2: {"S": 2, "X": 4},
    3: {"T": 3, "V": 5},
    4: {"X": 3, "S": 6},
    5: {"P": 4, "V": 6},
    6: {"E": 7},
}
REBER_END = 7


class State(NamedTuple):
    """Where a walk through the embedded grammar stands."""

    phase: str  # "start", "outer" (after the first B), "inner", "close" (after the outer T/P), "end"
    outer: str  # the second symbol, T or P, once it is known
    node: int  # the node of the inner Reber graph (phase "inner")


START = State("start", "", 0)


def successors(state: State, embedded: bool = True) -> dict[str, State]:
    """The symbols that may come next from `state`, each with the state it leads to."""
    if not embedded:  # a plain Reber string: the inner graph alone
        if state.node == REBER_END:
            return {}
        return {symbol: State("inner", "", node) for symbol, node in REBER_GRAPH[state.node].items()}
    if state.phase == "start":
        return {"B": State("outer", "", 0)}
    if state.phase == "outer":
        return {symbol: State("inner", symbol, 0) for symbol in "TP"}
    if state.phase == "inner":
        if state.node == REBER_END:
            return {state.outer: State("close", state.outer, 0)}
        return {symbol: State("inner", state.outer, node) for symbol, node in REBER_GRAPH[state.node].items()}
    if state.phase == "close":
        return {"E": State("end", state.outer, 0)}
    return {}


def _walk(string: str, embedded: bool) -> Optional[list[frozenset[str]]]:
    """The legal next symbols after each prefix of `string`, or None if `string` leaves the grammar."""
    state = START if embedded else State("inner", "", 0)
    legal = []
    for symbol in string:
        options = successors(state, embedded)
        if symbol not in options:
            return None
        state = options[symbol]
        legal.append(frozenset(successors(state, embedded)))
    return legal


def is_reber(string: str) -> bool:
    """True if `string` is a complete (plain) Reber string, e.g. BTSSXXTVVE."""
    legal = _walk(string, embedded=False)
    return bool(legal) and not legal[-1]


def is_embedded_reber(string: str) -> bool:
    """True if `string` is a complete embedded Reber string, e.g. BTBPVVETE (second symbol = second to last)."""
    legal = _walk(string, embedded=True)
    return bool(legal) and not legal[-1]


def legal_next_symbols(string: str) -> list[frozenset[str]]:
    """For each symbol of an embedded Reber string but the last: the set of symbols that may follow it."""
    legal = _walk(string, embedded=True)
    if legal is None or legal[-1]:
        raise ValueError(f"{string!r} is not an embedded Reber string")
    return legal[:-1]


def embedded_reber_string(rng: random.Random) -> str:
    """One random embedded Reber string: at each fork both ways are equally likely."""
    state, symbols = START, []
    while options := successors(state):
        symbol = rng.choice(sorted(options))
        symbols.append(symbol)
        state = options[symbol]
    return "".join(symbols)


def embedded_reber_sets(train_size: int, test_size: int, seed: int) -> tuple[list[str], list[str]]:
    """A training set of random strings and a test set of strings that are not in it (the paper's split)."""
    rng = random.Random(seed)
    train = [embedded_reber_string(rng) for _ in range(train_size)]
    seen, test = set(train), []
    while len(test) < test_size:
        string = embedded_reber_string(rng)
        if string not in seen:
            test.append(string)
    return train, test


class ReberBatch(NamedTuple):
    """Strings as next-symbol prediction, right-padded to the longest string."""

    inputs: Tensor  # (B, T, 7) one-hot of every symbol but the last
    targets: Tensor  # (B, T) index of the symbol that follows (0 at padding)
    legal: Tensor  # (B, T, 7) True for the symbols that may follow (all False at padding)
    real: Tensor  # (B, T) True at real steps, False at padding


def encode(strings: list[str]) -> ReberBatch:
    """One-hot inputs, next-symbol targets and the legal next-symbol sets of embedded Reber strings."""
    steps = max(len(string) for string in strings) - 1
    index = {symbol: position for position, symbol in enumerate(SYMBOLS)}
    symbols = torch.zeros(len(strings), steps + 1, dtype=torch.long)  # (B, T + 1)
    real = torch.zeros(len(strings), steps, dtype=torch.bool)
    legal = torch.zeros(len(strings), steps, len(SYMBOLS), dtype=torch.bool)
    for row, string in enumerate(strings):
        symbols[row, : len(string)] = torch.tensor([index[symbol] for symbol in string])
        real[row, : len(string) - 1] = True
        for step, allowed in enumerate(legal_next_symbols(string)):
            legal[row, step, [index[symbol] for symbol in allowed]] = True
    inputs = torch.nn.functional.one_hot(symbols[:, :-1], len(SYMBOLS)).float() * real[..., None]  # (B, T, 7)
    return ReberBatch(inputs, symbols[:, 1:] * real, legal, real)


def correct_steps(scores: Tensor, legal: Tensor) -> Tensor:
    """(B, T) True where the legal next symbols are exactly the most active outputs.

    The paper's criterion: with k legal next symbols, the k highest of the 7 outputs must be
    those k (every legal output above every illegal one). `scores` (B, T, 7), `legal` (B, T, 7).
    """
    lowest_legal = scores.masked_fill(~legal, float("inf")).amin(dim=-1)  # (B, T)
    highest_illegal = scores.masked_fill(legal, float("-inf")).amax(dim=-1)  # (B, T)
    return lowest_legal > highest_illegal
