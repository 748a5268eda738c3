"""Test-wide settings.

One torch thread: the models under test are tiny, and on a loaded 2-core machine two OpenMP
threads waiting on each other made steps up to ~90x slower. The variable is inherited by the CLI
subprocesses the smoke tests start.

So each test uses one core, and the suite runs them in parallel instead (pytest-xdist, `-n auto` in
pyproject.toml): one worker per core this process may use, at most MAX_WORKERS, because every
worker holds its own torch (about 0.4 GB) and many tests start subprocesses of their own.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

MAX_WORKERS = 8


def pytest_xdist_auto_num_workers(config):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, MAX_WORKERS))
