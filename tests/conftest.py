"""Test-wide settings.

One torch thread: the models under test are tiny, and on a loaded 2-core machine two OpenMP
threads waiting on each other made steps up to ~90x slower. The variable is inherited by the CLI
subprocesses the smoke tests start.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
