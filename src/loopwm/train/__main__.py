"""`python -m loopwm.train ...`: the `loopwm train` command as a module, which is what torchrun runs:

    torchrun --nproc_per_node 2 -m loopwm.train --data data/balls --out runs/balls-ddp
"""

import sys

import tyro

from loopwm.train.loop import TrainConfig, train
from loopwm.utils import LoopWMError

if __name__ == "__main__":
    try:
        train(tyro.cli(TrainConfig))
    except LoopWMError as err:
        print(f"loopwm: error: {err}", file=sys.stderr)
        sys.exit(2)
