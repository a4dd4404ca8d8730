"""What sessions hand the synthesis scheduler: a ``Job`` (one text chunk, its callbacks and its
metrics), and ``Busy`` when there is no room for it. Kept apart from the scheduler so sessions
and the OpenAI handler depend on this small boundary only.
"""
import itertools
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


class Busy(Exception):
    """Every place is taken and the waiting queue is full."""


@dataclass(eq=False)
class Job:
    """One text chunk of one session. Callbacks run on the caller's event loop."""
    text: str
    on_chunk: Callable[["Job", np.ndarray], None]
    on_finish: Callable[["Job", str], None]  # reason: "done" | "cancelled" | "error: ..."
    speed: float = 1.0  # tempo; other than 1 a sentence's audio comes when it is complete
    id: int = field(default_factory=itertools.count(1).__next__)
    cancelled: bool = False
    unacked: int = 0
    # For /metrics: time to first audio counts from submission, x real time from start to finish.
    submitted: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    finished: float = 0.0
    samples: int = 0
