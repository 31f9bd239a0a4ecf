"""`TaskRunner(store)`: runs any registered task on one replica's models.

`run(request, inputs, ctx)` takes decoded inputs (PIL images keyed by `request.image_fields()`)
and returns the pipeline's outputs; `run_job(request, raw_inputs, seed, progress, is_cancelled)`
is "run one job": the stored input bytes are decoded once here, the outputs encoded in the
request's output format. The Ray deployments, the in-process executor, the batch runner and the
benchmarks share it. A pipeline's `PipelineInputError` leaves as `InvalidInput` naming the same
field; `Cancelled` passes through. On CPU the same seed and inputs give the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from retouch.pipelines.common import RunContext

from .core.errors import InvalidInput, pipeline_input_errors
from .tasks import TASKS, TaskRegistry


class TaskRunner:
    def __init__(self, store, registry: TaskRegistry = TASKS):
        self.store = store
        self.registry = registry

    def run(self, request, inputs: dict[str, Any], ctx: RunContext) -> list:
        spec = self.registry.for_request(request)
        for field in request.image_fields():
            if inputs.get(field) is None:
                raise InvalidInput(field, "image is missing")
        ctx.check_cancelled()
        with pipeline_input_errors():
            outputs = spec.run_pipeline(self.store, request, inputs, ctx)
        expected = spec.output_count(request)
        if len(outputs) != expected:
            raise RuntimeError(f"{spec.name} produced {len(outputs)} outputs, expected {expected}")
        ctx.report(1.0)
        return outputs

    def run_job(self, request, raw_inputs: dict[str, bytes], seed: int,
                progress: Callable[[float], None],
                is_cancelled: Callable[[], bool]) -> list[bytes]:
        spec = self.registry.for_request(request)
        with pipeline_input_errors():
            inputs = spec.decode_inputs(request, raw_inputs)
        ctx = RunContext(seed=seed, progress=progress, is_cancelled=is_cancelled)
        outputs = self.run(request, inputs, ctx)
        return spec.encode_outputs(request, outputs)
