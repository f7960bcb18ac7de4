"""longshort.memory: glibc's malloc keeps freed memory, so a repeated large allocation stops page-faulting."""

import platform
import subprocess
import sys

import pytest

import longshort as ls
from longshort import cli, memory

GLIBC = platform.libc_ver()[0] == "glibc"

# Allocates, fills and frees a 64 MiB tensor (above glibc's largest dynamic mmap threshold, 32 MiB)
# eight times, then prints the page faults of the last three rounds.
FAULTS = """
import resource, sys, torch
import longshort as ls
if sys.argv[1] == "held":
    assert ls.memory.hold_freed_memory()
for round in range(8):
    if round == 5:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(16 * 2**20).fill_(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="only glibc's malloc is tuned")
def test_held_memory_is_reused_instead_of_faulted_in_again():
    pages = 3 * 64 * 2**20 // 4096  # three rounds of 64 MiB in 4 KiB pages
    default, held = _faults("default"), _faults("held")
    assert default > pages // 2  # each round gets fresh pages from the OS
    assert held < pages // 20  # each round reuses the last one's


def test_it_does_nothing_where_malloc_is_not_glibcs(monkeypatch):
    monkeypatch.setattr(memory.platform, "libc_ver", lambda: ("", ""))
    assert memory.hold_freed_memory() is False


@pytest.mark.parametrize("limit", [0, -1, 2**31, 1.5, True, "1G"])
def test_a_bad_limit_is_refused(limit):
    with pytest.raises(ValueError, match="limit must be a whole number of bytes"):
        memory.hold_freed_memory(limit)


@pytest.mark.parametrize("setting, calls", [(None, 1), ("0", 0)])
def test_the_command_line_holds_memory_unless_told_not_to(monkeypatch, capsys, setting, calls):
    made = []
    monkeypatch.setattr(cli, "hold_freed_memory", lambda: made.append(True))
    if setting is None:
        monkeypatch.delenv("LONGSHORT_HOLD_MEMORY", raising=False)
    else:
        monkeypatch.setenv("LONGSHORT_HOLD_MEMORY", setting)
    assert cli.main(["experiment", "--list"]) == 0
    assert len(made) == calls
    assert ls.memory is memory
