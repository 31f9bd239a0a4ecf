"""Helpers for the live-job tests (events, cancel, wake-ups): a tiny-engine runner that can hold a
job at its first denoising step, an instant runner, and an SSE parser."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, replace

from retouch.serving.runner import Outcome, TaskRunner

STEP_TIMEOUT_S = 60.0


class GatedRunner(TaskRunner):
    """The real tiny engine; with `hold=True` every job waits at its first denoising step until
    `release` is set (`at_first_step` says it got there). Records each job's steps."""

    def __init__(self, store, hold: bool = True):
        super().__init__(store)
        self.hold = hold
        self.at_first_step = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()  # set after each batch of jobs returns
        self.steps: list[tuple[int, int]] = []
        self.outcomes: list[Outcome] = []

    def run_jobs(self, jobs):
        try:
            self.outcomes = super().run_jobs([replace(job, on_step=self._gate(job.on_step))
                                              for job in jobs])
            return self.outcomes
        finally:
            self.finished.set()

    def _gate(self, on_step):
        def step(n: int, total: int) -> None:
            self.steps.append((n, total))
            if n == 1 and self.hold:
                self.at_first_step.set()
                assert self.release.wait(STEP_TIMEOUT_S), "the test never released the job"
            if on_step is not None:
                on_step(n, total)

        return step


class InstantRunner(TaskRunner):
    """Finishes every job at once with one tiny PNG (dispatch tests need no model)."""

    def __init__(self, png: bytes):
        super().__init__(None)
        self.png = png

    def run_jobs(self, jobs):
        for job in jobs:
            job.progress(1.0)
        return [Outcome(outputs=[self.png]) for _ in jobs]


@dataclass
class Event:
    id: int | None
    event: str
    data: dict


def parse_events(text: str) -> tuple[list[Event], list[str]]:
    """(events, comments) of an event-stream body (every block ends with a blank line)."""
    events, comments = [], []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                comments.append(line[1:].strip())
            elif ":" in line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        if "data" in fields:
            events.append(Event(int(fields["id"]) if "id" in fields else None,
                                fields.get("event", "message"), json.loads(fields["data"])))
    return events, comments


def read_events(lines, until=lambda event: False) -> list[Event]:
    """Events from an iterator of stream lines (httpx `iter_lines`), up to the stream's end or
    the first event for which `until(event)` is true."""
    events, block = [], []
    for line in lines:
        if line:
            block.append(line)
            continue
        parsed, _ = parse_events("\n".join(block) + "\n\n")
        block = []
        for event in parsed:
            events.append(event)
            if until(event):
                return events
    return events
