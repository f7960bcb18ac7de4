"""Keep freed memory for the next training step: glibc's malloc, told not to give it back.

A training step allocates and frees the same large buffers every step: the gates and states
it saves, their gradients, the optimizer's temporaries. With its default settings glibc's
malloc hands blocks above a threshold (at most 32 MiB) straight back to the OS when they are
freed, and trims the top of its heap once more than twice that is free. The next step then
gets fresh pages, and the kernel zeroes each 4 KiB page on its first write: a page fault per
page, over and over. Measured on the benchmark machine (README, "Freed memory, kept for the
next step"):

* `longshort train --text --epochs=1`: 14.1 s and 1.1 million page faults by default, 11.3 s
  and 91 thousand with `hold_freed_memory()`, at 453 MB of peak memory instead of 407;
* a training step of `torch.nn.LSTM` (oneDNN frees its workspace every step) at B=32,
  T=1000, H=128: 255 ms by default, 164 ms with it.

`hold_freed_memory()` raises both thresholds (`mallopt` M_MMAP_THRESHOLD and M_TRIM_THRESHOLD)
to `limit` bytes, so freed blocks stay in the heap and are reused. It changes the whole
process, for the rest of its life: the process keeps up to its peak memory, up to `limit` of
it unused, instead of returning it between steps. That is what a training process wants, so
`longshort`'s command line calls it (`LONGSHORT_HOLD_MEMORY=0` stops it); a library cannot
know that, so importing longshort does not. Where malloc is not glibc's (macOS, musl), it
does nothing and returns False. jemalloc or tcmalloc, preloaded, do the same job their own way.
"""

from __future__ import annotations

import ctypes
import logging
import platform

logger = logging.getLogger("longshort")

M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers, from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
INT_MAX = 2**31 - 1  # mallopt takes an int


def hold_freed_memory(limit: int = 2**30) -> bool:
    """Have glibc's malloc keep up to `limit` bytes of freed memory for reuse, and serve blocks
    below `limit` from its heap; True where it did, False where malloc is not glibc's."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= INT_MAX:
        raise ValueError(f"limit must be a whole number of bytes in 1..{INT_MAX}, got {limit!r}")
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    # The mmap threshold first: setting either one fixes both, and a trim threshold alone would
    # leave the mmap threshold at its 128 KiB start, worse than the default.
    held = bool(mallopt(M_MMAP_THRESHOLD, limit)) and bool(mallopt(M_TRIM_THRESHOLD, limit))
    if held:
        logger.info("malloc keeps up to %d MiB of freed memory for reuse", limit >> 20)
    return held
