"""Hypothesis profiles for the property-based tests (tests/test_properties.py).

* "ci" (the default): derandomized, so every run, CI's included, tries the same examples;
  no example database, no deadline (a first call pays for torch's lazy set-up).
* "thorough": 10 times the examples, fresh random ones every run, failures kept in the
  local example database (.hypothesis/) and replayed first next time. Choose it with
  `HYPOTHESIS_PROFILE=thorough pytest tests/test_properties.py` (or `--hypothesis-profile=thorough`).

Each property sets its own number of examples for "ci"; `examples()` in test_properties.py
scales it by the loaded profile's `max_examples / 100`.

`make test` runs the suite in two worker processes (pytest-xdist, `-n 2`). In each, OpenMP's
threads wait at a barrier asleep (`OMP_WAIT_POLICY=passive`), not spinning: a spinning thread
would take the core the other worker is using (a gradcheck at a batch of 8 went from 0.7 s to
8 s). The setting is read when torch and the C loops load OpenMP, so it is made here, before
any test module imports torch; the subprocesses the tests start inherit it.
"""

from __future__ import annotations

import os

if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=100,  # the scale of 1: each property's own count as written
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=1000,  # 10 times each property's count
    derandomize=False,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
