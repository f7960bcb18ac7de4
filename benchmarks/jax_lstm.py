"""The same LSTM in JAX with `lax.scan`, timed as rnn_speed.py times the torch ones.

Run by rnn_speed.py in its own process (JAX and torch each want the cores to themselves):

    python benchmarks/jax_lstm.py '[[B, T, H], ...]' REPEATS

prints {"Point(batch=B, time=T, hidden=H)": {"forward": s, "training": s}, ...} as JSON.
jax is a benchmark-only extra (`make bench-deps`), never a dependency of longshort.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp


def lstm(params, x):
    """x (T, B, F) -> all h (T, B, H); gate order i, f, g, o as in longshort and torch."""
    weight_ih, weight_hh, bias = params
    p = x @ weight_ih.T + bias  # (T, B, 4H): the input side of every step in one matmul

    def step(state, p_t):
        h_prev, c_prev = state
        i, f, g, o = jnp.split(p_t + h_prev @ weight_hh.T, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c_prev + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    hidden = weight_hh.shape[1]
    zeros = jnp.zeros((x.shape[1], hidden), x.dtype)
    _, hs = jax.lax.scan(step, (zeros, zeros), p)
    return hs


def median_seconds(function, repeats: int) -> float:
    jax.block_until_ready(function())  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(function())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    grid, repeats = json.loads(sys.argv[1]), int(sys.argv[2])
    results = {}
    for batch, steps, hidden in grid:
        keys = jax.random.split(jax.random.PRNGKey(0), 4)
        scale = hidden**-0.5
        params = (
            jax.random.uniform(keys[0], (4 * hidden, hidden), minval=-scale, maxval=scale),
            jax.random.uniform(keys[1], (4 * hidden, hidden), minval=-scale, maxval=scale),
            jnp.zeros(4 * hidden),
        )
        x = jax.random.normal(keys[2], (steps, batch, hidden))
        forward = jax.jit(lstm)
        training = jax.jit(jax.grad(lambda params, x: lstm(params, x).sum(), argnums=(0, 1)))
        results[f"Point(batch={batch}, time={steps}, hidden={hidden})"] = {
            "forward": median_seconds(lambda: forward(params, x), repeats),
            "training": median_seconds(lambda: training(params, x), repeats),
        }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
