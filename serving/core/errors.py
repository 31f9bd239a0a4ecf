"""The one error hierarchy: the seed's 13 error codes, each with its HTTP status.

Serving raises these; pipelines raise `PipelineInputError`, which `invalid_input_from` (or the
`pipeline_input_errors()` context at a boundary) turns into `InvalidInput` naming the same field.
One mapper (`serving.errors`) turns any `RetouchError` into the seed's error JSON.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from retouch.pipelines.errors import PipelineInputError


class RetouchError(Exception):
    code = "service_unavailable"
    http_status = 503

    def __init__(self, message: str, *, details: dict[str, Any] | None = None,
                 field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = dict(details or {})
        if field is not None:
            self.details.setdefault("field", field)
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details or None}


class Unauthorized(RetouchError):
    code, http_status = "unauthorized", 401


class Forbidden(RetouchError):
    code, http_status = "forbidden", 403


class SubscriptionRequired(RetouchError):
    code, http_status = "subscription_required", 402


class InvalidInput(RetouchError):
    """A request field is invalid; the message names the field (e.g. `input.angle`)."""

    code, http_status = "invalid_input", 400

    def __init__(self, field: str, message: str, *, details: dict[str, Any] | None = None,
                 http_status: int | None = None):
        super().__init__(f"{field}: {message}" if field else message, details=details,
                         field=field)
        if http_status is not None:
            self.http_status = http_status


class NotFound(InvalidInput):
    """A referenced resource does not exist for this account (seed code `invalid_input`, 404)."""

    def __init__(self, field: str, message: str):
        super().__init__(field, message, http_status=404)


class JobNotCancellable(InvalidInput):
    """A cancel of a job that has already finished (seed code `invalid_input`, HTTP 409
    Conflict); `details.status` is the job's final status."""

    def __init__(self, field: str, message: str, *, status: str):
        super().__init__(field, message, details={"status": status}, http_status=409)


class InsufficientCredits(RetouchError):
    code, http_status = "insufficient_credits", 402


class QueueLimitExceeded(RetouchError):
    code, http_status = "queue_limit_exceeded", 429


class MonthlyBudgetExceeded(RetouchError):
    code, http_status = "monthly_budget_exceeded", 402


class TotalBudgetExceeded(RetouchError):
    code, http_status = "total_budget_exceeded", 402


class PerRequestLimitExceeded(RetouchError):
    code, http_status = "per_request_limit_exceeded", 402


class ToolNotAllowed(RetouchError):
    code, http_status = "tool_not_allowed", 403


class RateLimitExceeded(RetouchError):
    code, http_status = "rate_limit_exceeded", 429


class IdempotencyConflict(RetouchError):
    code, http_status = "idempotency_conflict", 409


class ServiceUnavailable(RetouchError):
    code, http_status = "service_unavailable", 503


ALL_ERRORS: tuple[type[RetouchError], ...] = (
    Unauthorized, Forbidden, SubscriptionRequired, InvalidInput, InsufficientCredits,
    QueueLimitExceeded, MonthlyBudgetExceeded, TotalBudgetExceeded, PerRequestLimitExceeded,
    ToolNotAllowed, RateLimitExceeded, IdempotencyConflict, ServiceUnavailable,
)
ERROR_STATUS: dict[str, int] = {cls.code: cls.http_status for cls in ALL_ERRORS}


def invalid_input_from(error: PipelineInputError) -> InvalidInput:
    """The seed's `invalid_input` for a pipeline's complaint about one field."""
    return InvalidInput(error.field, error.reason)


@contextmanager
def pipeline_input_errors():
    """Where serving calls into pipelines: their input errors leave as `InvalidInput`."""
    try:
        yield
    except PipelineInputError as exc:
        raise invalid_input_from(exc) from None


def field_path(loc, *, skip: tuple[str, ...] = ()) -> str:
    """A pydantic error location as the seed names fields: ('input', 'images', 0) →
    `input.images[0]`. A leading part in `skip` (a union tag, `body`/`query`) is dropped."""
    parts = list(loc)
    if len(parts) > 1 and parts[0] in skip:
        parts = parts[1:]
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def invalid_input_from_validation(errors: list[dict[str, Any]], *,
                                  skip: tuple[str, ...] = ()) -> InvalidInput:
    """The first of pydantic's `errors()` as `InvalidInput` naming its field."""
    if not errors:
        return InvalidInput("body", "is invalid")
    first = errors[0]
    message = str(first.get("msg", "is invalid")).removeprefix("Value error, ")
    return InvalidInput(field_path(first.get("loc", ()), skip=skip), message)
