"""What a replica receives for one job (`Job`) and what it gives back (`Outcome`).

Plain data, light to import: the dispatcher and the API process use them without loading the
pipelines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class OutOfMemory(Exception):
    """The accelerator ran out of memory running a job; the replica freed its cache."""


@dataclass
class Job:
    """One job as a replica receives it."""

    request: Any
    raw_inputs: dict[str, bytes]
    seed: int
    progress: Callable[[float], None]
    is_cancelled: Callable[[], bool]
    on_step: Callable[[int, int], None] | None = None  # (step, steps) of each denoising step


@dataclass
class Outcome:
    """What became of one job: its encoded outputs, or the error that failed it."""

    outputs: list[bytes] | None = None
    error: BaseException | None = None
    batch_size: int = 1  # jobs handed to its pipeline call together (itself included)
    step_seconds: list[float] = field(default_factory=list)  # between its progress steps
    model_revisions: dict[str, str] = field(default_factory=dict)  # what the replica has loaded

    def result(self) -> list[bytes]:
        if self.error is not None:
            raise self.error
        return self.outputs
