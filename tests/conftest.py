"""Hypothesis profiles for the property-based tests (tests/test_properties.py).

* "ci" (the default): derandomized, so every run, CI's included, tries the same examples;
  no example database, no deadline (a first call pays for torch's lazy set-up).
* "thorough": 10 times the examples, fresh random ones every run, failures kept in the
  local example database (.hypothesis/) and replayed first next time. Choose it with
  `HYPOTHESIS_PROFILE=thorough pytest tests/test_properties.py` (or `--hypothesis-profile=thorough`).

Each property sets its own number of examples for "ci"; `examples()` in test_properties.py
scales it by the loaded profile's `max_examples / 100`.
"""

from __future__ import annotations

import os

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
