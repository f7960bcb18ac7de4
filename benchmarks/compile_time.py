"""How long the compiled path takes to compile, with TorchInductor's caches empty and full.

A custom LSTM cell (`rnn_speed.UserLSTMCell`, H=64) through `ls.RNN(..., implementation="compiled")`:
the first training step at B=1 (the first compile of the process) and then at B=32 (a second
step shape), each process fresh. "cold" runs with an empty TORCHINDUCTOR_CACHE_DIR, "warm" runs
again on what the cold run left there. Prints `layer.compile_seconds` and the wall time of the
first step (tracing, compiling, and running it).

    .venv/bin/python benchmarks/compile_time.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child() -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    import longshort as ls
    from rnn_speed import UserLSTMCell

    cells = []
    for batch in (1, 32):
        torch.manual_seed(0)
        x = torch.randn(batch, 100, 64)
        layer = ls.RNN(UserLSTMCell(64, 64), return_sequences=True, implementation="compiled")
        start = time.perf_counter()
        layer(x).sum().backward()
        cells.append(f"B={batch}: {layer.compile_seconds:.1f} s compiling ({time.perf_counter() - start:.1f} s first step)")
    print("; ".join(cells))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="inductor-cache-") as cache:
        environment = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        for state in ("cold", "warm"):
            result = subprocess.run([sys.executable, __file__, "--child"], env=environment, capture_output=True, text=True)
            if result.returncode != 0:
                sys.exit(result.stderr)
            print(f"{state}: {result.stdout.strip()}", flush=True)


if __name__ == "__main__":
    child() if "--child" in sys.argv else main()
