"""The two errors a pipeline raises. Pipelines know nothing of HTTP or billing: serving maps
`PipelineInputError` onto the seed's `invalid_input` and `Cancelled` onto a failed, refunded job.
"""

from __future__ import annotations


class PipelineInputError(Exception):
    """An input the pipeline cannot use; `field` names it (`input.mask_image`, `options.scale`)."""

    def __init__(self, field: str, message: str):
        self.message = f"{field}: {message}" if field else message
        super().__init__(self.message)
        self.field = field
        self.reason = message  # without the field name


class Cancelled(Exception):
    """Raised inside a pipeline when its cancel flag is set."""
