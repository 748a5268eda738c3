"""Text worlds: the paper's ScienceWorld benchmark, offline (`loopwm text ...`; the `text` extra).

tasks: the 30 simulator tasks and the paper's 14 task types; collect: transitions recorded from the
real simulator (gold paths and exploratory branches), in worker processes, resumable.
"""
