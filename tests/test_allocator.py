"""pcsym.training.allocator: with glibc's defaults, a step's big temporaries are mapped afresh every step (page
faults, kernel time); after keep_freed_memory() the freed pages are reused. Counted, not timed."""

import subprocess
import sys

import pytest

STEPS = """
import resource, sys
import numpy as np
if sys.argv[1] == "tuned":
    from pcsym.training.allocator import keep_freed_memory
    assert keep_freed_memory() and keep_freed_memory()  # idempotent
def step():  # temporaries of 1-24 MB alive together, then freed, like a training step's
    live = [np.ones(n) for n in (1 << 17, 3 << 19, 1 << 21, 5 << 18, 1 << 20, 3 << 20)]
    del live
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_repeated_temporaries_stop_faulting_pages_in():
    faults = {mode: int(subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True,
                                       check=True, timeout=60).stdout) for mode in ("default", "tuned")}
    assert faults["default"] > 20 * 1000, faults  # ~40,000 here: thousands of fresh pages per step
    assert faults["tuned"] < faults["default"] / 20, faults
