"""Text worlds: the paper's ScienceWorld benchmark, offline (`loopwm text ...`; the `text` extra).

tasks: the 30 simulator tasks and the paper's 14 task types; collect: transitions recorded from the
real simulator (gold paths and exploratory branches), in worker processes, resumable; corpus:
samples (context, K actions, the observation after the last) and the byte-level BPE tokenizer;
metrics: EM, token F1, BLEU-4, entity F1; model: the looped core over text; train and evaluate:
`loopwm text train` and `loopwm text eval`; baselines: the answers that need no training (`loopwm text
baselines DATA` scores them alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Union

import tyro

from loopwm.text.collect import TextCollectConfig
from loopwm.text.evaluate import TextBaselinesConfig, TextEvalConfig
from loopwm.text.train import TextTrainConfig


@dataclass
class TextCommand:
    """Text worlds (ScienceWorld, TextWorldExpress): text collect, text train, text eval, text baselines."""

    # a dataclass around the union so `loopwm --help` shows this docstring, not typing.Union's
    command: tyro.conf.OmitSubcommandPrefixes[Union[
        Annotated[TextCollectConfig, tyro.conf.subcommand("collect")],
        Annotated[TextTrainConfig, tyro.conf.subcommand("train")],
        Annotated[TextEvalConfig, tyro.conf.subcommand("eval")],
        Annotated[TextBaselinesConfig, tyro.conf.subcommand("baselines")],
    ]]
    """What to do: collect, train, eval, or baselines."""
