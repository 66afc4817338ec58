"""CPU teachers keep their activations' memory between forwards (featurize/hostmem.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Each forward frees blocks a little larger than any before (as teachers of different shapes
# do): glibc's adaptive policy mmaps each one afresh and returns it to the kernel, so every
# cycle faults all its pages back in. Fixed thresholds serve them from the kept heap.
CYCLES = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from radio.featurize.hostmem import keep_heap_for_cpu_teachers
    assert keep_heap_for_cpu_teachers()
def forward(i):
    a = np.ones((8 << 20) + i * (64 << 10), np.uint8)  # touches every page
    del a
forward(0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(1, 21):
    forward(i)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CYCLES, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_fixed_malloc_thresholds_stop_refaulting_freed_activations():
    adaptive, kept = _faults("adaptive"), _faults("keep")
    # Measured here: 13,680 minor faults with glibc's default (numpy asks for huge pages, so
    # fewer than 4 KiB pages), 320 with the fixed thresholds.
    assert adaptive > 20 * 100  # the default faults every forward's memory back in
    assert kept * 10 < adaptive
