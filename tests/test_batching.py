"""Dynamic batching: compatible jobs share one denoising batch, each keeping its own seed, prompt,
progress and cancel, and a job that fails fails alone.

Tolerance (docs/benchmarks.md): on the CPU tiny twins a batched job's pixels equal its solo run
to within 2 of 255 levels (batched matrix products round differently); most jobs are bit-equal.
"""

from __future__ import annotations

import dataclasses
import io
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from retouch.pipelines.errors import Cancelled
from retouch.serving.batching import JobBatcher, batch_groups
from retouch.serving.core.errors import InvalidInput
from retouch.serving.replica_io import Job
from retouch.serving.runner import TaskRunner
from retouch.serving.tasks import TASKS, TaskRegistry, parse_request

PIXEL_TOLERANCE = 2
PROMPTS = ["a red lamp", "a blue chair", "a cat on a sofa", "a lighthouse at dusk"]


def generator(prompt: str, quality: str = "low", aspect: str = "original"):
    return parse_request({"tool": "generator", "input": {"prompt": prompt},
                          "options": {"quality": quality, "aspect_ratio": aspect}})


def job(request, seed: int, progress=None, cancelled=lambda: False) -> Job:
    return Job(request, {}, seed, progress or (lambda f: None), cancelled)


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data))).astype(int)


@pytest.fixture(scope="module")
def runner(tiny_store):
    return TaskRunner(tiny_store)


@pytest.fixture(scope="module")
def solo(runner):
    """Each prompt's output run alone, seed 10 + i."""
    return [runner.run_job(generator(p), {}, 10 + i, lambda f: None, lambda: False)[0]
            for i, p in enumerate(PROMPTS)]


def test_a_batch_gives_each_job_its_solo_output(runner, solo):
    bars = [[] for _ in PROMPTS]
    outcomes = runner.run_jobs([job(generator(p), 10 + i, bars[i].append)
                                for i, p in enumerate(PROMPTS)])
    assert [o.batch_size for o in outcomes] == [4] * 4
    for outcome, alone, bar in zip(outcomes, solo, bars):
        assert outcome.error is None
        assert np.abs(pixels(outcome.outputs[0]) - pixels(alone)).max() <= PIXEL_TOLERANCE
        assert bar == sorted(bar) and bar[-1] == 1.0 and len(bar) >= 3  # its own progress
        assert outcome.step_seconds and all(s >= 0 for s in outcome.step_seconds)
    # Different seeds and prompts stay different images.
    assert len({o.outputs[0] for o in outcomes}) == 4


def test_only_jobs_with_one_batch_key_are_grouped(runner):
    jobs = [job(generator("a"), 1), job(generator("b", quality="medium"), 2),
            job(generator("c"), 3), job(generator("d", aspect="16:9"), 4),
            job(parse_request({"tool": "upscaler", "input": {"image": {"upload_id": "u"}}}), 5)]
    assert batch_groups(runner, jobs) == [[0, 2], [1], [3], [4]]


def test_a_bad_job_fails_alone_and_a_cancelled_one_stops_alone(runner, solo):
    jobs = [job(generator(PROMPTS[0]), 10), job(generator("   "), 11),
            job(generator(PROMPTS[2]), 12, cancelled=lambda: True),
            job(generator(PROMPTS[3]), 13)]
    first, blank, cancelled, last = runner.run_jobs(jobs)
    assert isinstance(blank.error, InvalidInput) and blank.error.field == "input.prompt"
    assert isinstance(cancelled.error, Cancelled)
    for outcome, alone in ((first, solo[0]), (last, solo[3])):
        assert outcome.error is None and outcome.batch_size == 4  # jobs handed to the call
        assert np.abs(pixels(outcome.outputs[0]) - pixels(alone)).max() <= PIXEL_TOLERANCE


def test_when_the_batch_runs_out_of_memory_each_job_is_retried_alone(tiny_store, solo):
    calls = []

    def out_of_memory(store, requests, inputs, contexts):
        calls.append(len(requests))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    registry = TaskRegistry()
    for spec in TASKS:
        registry.register(dataclasses.replace(spec, run_batch=out_of_memory)
                          if spec.tool == "generator" else spec)
    outcomes = TaskRunner(tiny_store, registry).run_jobs(
        [job(generator(p), 10 + i) for i, p in enumerate(PROMPTS[:2])])
    assert calls == [2]
    assert [o.outputs[0] for o in outcomes] == solo[:2]  # solo runs: bit-equal
    assert [o.batch_size for o in outcomes] == [1, 1]


def test_concurrent_callers_are_collected_into_batches(runner, solo):
    sizes: list[int] = []
    batcher = JobBatcher(runner, max_batch_size=4, batch_wait_timeout_s=2.0,
                         on_batch=sizes.append)
    results: dict[int, bytes] = {}

    def submit(i: int) -> None:
        results[i] = batcher.run(job(generator(PROMPTS[i]), 10 + i))[0]

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sizes == [4]
    for i, alone in enumerate(solo):
        assert np.abs(pixels(results[i]) - pixels(alone)).max() <= PIXEL_TOLERANCE


WAIT_S = 5.0  # far longer than any job here: a test that waits it out fails its time bound


def announced_batcher(runner, sizes: list[int]) -> JobBatcher:
    return JobBatcher(runner, max_batch_size=4, batch_wait_timeout_s=WAIT_S,
                      on_batch=sizes.append, wait_only_for_expected=True)


def test_a_lone_job_does_not_wait_for_company_that_is_not_announced(runner, solo):
    sizes: list[int] = []
    batcher = announced_batcher(runner, sizes)
    started = time.monotonic()
    with batcher.expecting():  # as a dispatcher worker leases and runs a job
        output = batcher.run(job(generator(PROMPTS[0]), 10))[0]
    assert time.monotonic() - started < WAIT_S / 2
    assert sizes == [1] and output == solo[0]


def test_announced_jobs_share_a_batch_and_one_that_never_comes_releases_it(runner, solo):
    sizes: list[int] = []
    batcher = announced_batcher(runner, sizes)
    announced = threading.Barrier(4)
    results: dict[int, bytes] = {}

    def dispatcher_worker(i: int) -> None:
        with batcher.expecting():
            announced.wait()  # four lease attempts at once; their inputs load at their pace
            time.sleep(0.1 * i)
            if i < 3:  # the fourth found no job (or its inputs failed): it never comes
                results[i] = batcher.run(job(generator(PROMPTS[i]), 10 + i))[0]

    started = time.monotonic()
    threads = [threading.Thread(target=dispatcher_worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert time.monotonic() - started < WAIT_S / 2  # released when the fourth gave up
    assert sizes == [3]
    for i in range(3):
        assert np.abs(pixels(results[i]) - pixels(solo[i])).max() <= PIXEL_TOLERANCE
