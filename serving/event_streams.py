"""Live job progress as Server-Sent Events (`text/event-stream`), shared by every surface.

`job_event_stream(services, job_id, last_event_id, terminal_event, terminal_body)`
answers one stream for one job (the route has already authorized it):

    retry: 2000

    id: 10000000
    event: status
    data: {"status": "pending", "progress": 0.0, "step": null, "steps": null}

    id: 10350000
    event: progress
    data: {"status": "processing", "progress": 0.35, "step": 2, "steps": 3}

    ...
    id: 30000001
    event: generation
    data: {... the surface's terminal object, as its GET returns it ...}

`status` on every change of status, `progress` on every progress step while it runs (each
denoising step when the job runs in this process; each heartbeat, ≈ 0.5 s, when it runs in
another), then the terminal object, and the stream ends. `: keep-alive` comments go out after
`events_heartbeat_seconds` without an event, so proxies keep the connection.

Event ids are computed from the job's state, not counted per connection, so they are the same
on every connection and every API process and only grow: `phase × 10^7 + progress × 10^6`,
where the phase orders the job's history (`pending` 2·attempts, `processing` 2·attempts − 1,
finished 2·attempts + 1; the terminal object is its status event's id + 1). A client that
reconnects with `Last-Event-ID` gets only what is newer; one that already has the terminal
object gets `204 No Content`, which tells `EventSource` to stop reconnecting.

Wake-ups come from the app's `JobSignals` (commits in this process, NOTIFY from others, live
progress from this process's dispatcher); the row is re-read at least every
`events_poll_seconds` as a safety net.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from .core.tables import Generation

MEDIA_TYPE = "text/event-stream"
RETRY_MS = 2000
PHASE = 10_000_000
PROGRESS_SCALE = 1_000_000
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(frozen=True)
class JobState:
    status: str
    progress: float
    step: int | None
    steps: int | None
    attempts: int

    @property
    def terminal(self) -> bool:
        return self.status in ("completed", "failed")

    @property
    def phase(self) -> int:
        if self.status == "pending":
            return 2 * self.attempts
        if self.status == "processing":
            return 2 * self.attempts - 1
        return 2 * self.attempts + 1

    @property
    def event_id(self) -> int:
        """The id of this state's `status`/`progress` event (the terminal object's is + 1)."""
        if self.terminal:
            return self.phase * PHASE
        return self.phase * PHASE + min(PHASE - 1, round(self.progress * PROGRESS_SCALE))

    def data(self) -> dict[str, Any]:
        progress = 1.0 if self.status == "completed" else round(self.progress, 6)
        return {"status": self.status, "progress": progress, "step": self.step,
                "steps": self.steps}


def state_of(job: Generation) -> JobState:
    return JobState(job.status, float(job.progress or 0.0), job.step, job.steps,
                    int(job.attempts or 0))


def read_state(session_factory, job_id: str | None) -> JobState | None:
    """The job's state from its row; a picture without a job (an upload) is simply completed."""
    if job_id is None:
        return JobState("completed", 1.0, None, None, 0)
    with session_factory() as session:
        job = session.get(Generation, job_id)
        return state_of(job) if job is not None else None


def with_live_progress(state: JobState, live) -> JobState:
    """The row's state, moved on by this process's live progress of the same attempt."""
    if live is None or state.status != "processing" or live.attempt != state.attempts \
            or live.progress < state.progress:
        return state
    return JobState(state.status, live.progress, live.step if live.step is not None
                    else state.step, live.steps if live.step is not None else state.steps,
                    state.attempts)


def format_event(event: str, data: Any, event_id: int) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def parse_last_event_id(value: str | None) -> int:
    """`Last-Event-ID` as an event id; -1 (nothing seen) when absent or not ours."""
    try:
        return int(value) if value is not None else -1
    except ValueError:
        return -1


def job_event_stream(services, job_id: str | None, last_event_id: str | None,
                     terminal_event: str,
                     terminal_body: Callable[[], dict[str, Any]]) -> Response:
    """The event-stream response for one authorized job (see the module docstring).

    `terminal_body()` (run in a worker thread) builds the terminal object, e.g. the surface's
    GET response for the job. Called from a sync route: reads the row once to answer 204 to a
    client that has already seen the end. The stream stops when the client disconnects
    (Starlette cancels it)."""
    last = parse_last_event_id(last_event_id)
    state = read_state(services.session_factory, job_id)
    if state is not None and state.terminal and last >= state.event_id + 1:
        return Response(status_code=204, headers=STREAM_HEADERS)
    stream = _events(services, job_id, last, terminal_event, terminal_body)
    return StreamingResponse(stream, media_type=MEDIA_TYPE, headers=STREAM_HEADERS)


async def _events(services, job_id: str | None, last: int,
                  terminal_event: str, terminal_body: Callable[[], dict[str, Any]]
                  ) -> AsyncIterator[str]:
    settings, signals = services.settings, services.job_signals
    loop = asyncio.get_running_loop()

    terminal: dict[str, Any] = {}  # the terminal object, built in the read that saw the end

    def read_sync() -> JobState | None:
        state = read_state(services.session_factory, job_id)
        if state is not None and state.terminal:
            terminal["body"] = terminal_body()  # in the same worker-thread hop
        return state

    async def read() -> JobState | None:
        return await run_in_threadpool(read_sync)

    with signals.watch(job_id or "", loop) as watch:
        yield f"retry: {RETRY_MS}\n\n"
        row: JobState | None = None
        last_read = last_sent = time.monotonic()
        while True:
            if watch.take_row_changed() or row is None \
                    or time.monotonic() - last_read >= settings.events_poll_seconds:
                row, last_read = await read(), time.monotonic()
            if row is None:
                return  # the job is gone
            reports = watch.take_live()
            if reports and not row.terminal and (row.status != "processing"
                                                 or reports[-1].attempt != row.attempts):
                row, last_read = await read(), time.monotonic()  # the row is behind its run
                if row is None:
                    return
            latest = signals.live_progress(job_id) if job_id else None
            for state in [with_live_progress(row, live) for live in (*reports, latest)]:
                if state.event_id > last:
                    event = "status" if last < 0 or state.phase != last // PHASE else "progress"
                    yield format_event(event, state.data(), state.event_id)
                    last, last_sent = state.event_id, time.monotonic()
            if row.terminal:
                if row.event_id + 1 > last:
                    yield format_event(terminal_event, terminal["body"], row.event_id + 1)
                return
            wait = min(settings.events_poll_seconds - (time.monotonic() - last_read),
                       settings.events_heartbeat_seconds - (time.monotonic() - last_sent))
            if not await watch.wait_async(wait) \
                    and time.monotonic() - last_sent >= settings.events_heartbeat_seconds:
                yield ": keep-alive\n\n"
                last_sent = time.monotonic()
