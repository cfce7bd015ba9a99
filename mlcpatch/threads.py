"""How many threads TVM's CPU runtime uses for the libraries' parallel loops.

TVM's thread pool reads ``TVM_NUM_THREADS`` (else ``OMP_NUM_THREADS``) once, when the first
parallel kernel runs; without either it takes half the logical CPUs on x86 (assuming two
hyper-threads per core), which is one thread on a 2-core machine without SMT. So the runtime
sets ``TVM_NUM_THREADS`` to the physical cores this process may run on less one (at least one),
unless the user has set one of them; ``TVM_NUM_THREADS=N`` overrides it.

Why one core is left: a decode step runs ~120 parallel kernels, each ending in a barrier that
waits for its slowest thread. With every core in the pool, any other process (the Python
loop itself, a browser, a test runner) deschedules one of them at every barrier: measured on 2
busy cores, SmolLM2 q4f32_1 decoded at 4.3 tok/s with 2 threads against 22.9 with 1.
"""

from __future__ import annotations

import os
import pathlib

ENV = "TVM_NUM_THREADS"


def _core_of(cpu: int) -> tuple[str, str] | None:
    topology = pathlib.Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
    try:
        package = (topology / "physical_package_id").read_text().strip()
        core = (topology / "core_id").read_text().strip()
    except OSError:
        return None
    return package, core


def physical_cores() -> int:
    """Distinct physical cores among the CPUs this process may run on (at least 1)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = {_core_of(cpu) for cpu in cpus}
    if None in cores:  # no topology in /sys: count logical CPUs
        return max(1, len(cpus))
    return max(1, len(cores))


def configure_threads() -> int:
    """Set ``TVM_NUM_THREADS`` unless the user set it (or ``OMP_NUM_THREADS``); the count
    TVM will use. Call before the first kernel runs: later changes are not seen."""
    for name in (ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    count = max(1, physical_cores() - 1)
    os.environ[ENV] = str(count)
    return count
