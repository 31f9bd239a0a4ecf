"""Dashboard form fields → the typed values core expects, with errors that name the field.

Blank number fields mean "no limit"; the create-key form turns into `keys.create_key` keyword
arguments, the playground form into a Wixma generation body for `parse_request`.
"""

from __future__ import annotations

from datetime import date, datetime, time, timezone
from typing import Any

from retouch.serving.core.errors import InvalidInput
from retouch.serving.tasks import TASKS
from retouch.serving.core.db import utcnow
from retouch.serving.core.keys import WIXMA_SCOPES

MAX_KEY_NAME = 200
MAX_CREDITS = 10**12

def playground_tools() -> tuple[str, ...]:
    """Every Wixma tool of the task registry (the playground covers them all)."""
    return TASKS.tools("wixma")


def optional_int(raw: str | None, field: str, *, minimum: int = 0) -> int | None:
    """A whole number from a form field, or None when left blank."""
    raw = (raw or "").strip()
    if not raw:
        return None
    if not raw.isdigit() or len(raw) > 13:
        raise InvalidInput(field, "must be a whole number")
    value = int(raw)
    if value < minimum or value > MAX_CREDITS:
        raise InvalidInput(field, f"must be between {minimum} and {MAX_CREDITS}")
    return value


def expiry(raw: str | None) -> datetime | None:
    """`YYYY-MM-DD` → the start of that day in UTC (the key stops working then); blank: never."""
    raw = (raw or "").strip()
    if not raw:
        return None
    try:
        moment = datetime.combine(date.fromisoformat(raw), time(0), tzinfo=timezone.utc)
    except ValueError:
        raise InvalidInput("expires_at", "must be a date (YYYY-MM-DD)") from None
    if moment <= utcnow():
        raise InvalidInput("expires_at", "must be a future date")
    return moment


def key_options(form: dict[str, Any], scopes: list[str], tools: list[str]) -> dict[str, Any]:
    """Keyword arguments for `keys.create_key` from the create-key form."""
    name = (form.get("name") or "").strip()
    if len(name) > MAX_KEY_NAME:
        raise InvalidInput("name", f"must be at most {MAX_KEY_NAME} characters")
    if not scopes:
        raise InvalidInput("scopes", "choose at least one scope")
    if not tools:
        raise InvalidInput("tools", "choose at least one tool")
    all_tools = TASKS.tools("wixma")
    for field, values, allowed in (("scopes", scopes, WIXMA_SCOPES), ("tools", tools, all_tools)):
        for value in values:
            if value not in allowed:
                raise InvalidInput(field, f"{value!r} is not one of {', '.join(allowed)}")
    return {
        "name": name or None,
        "scopes": list(dict.fromkeys(scopes)),
        # Every tool ticked means "all tools", so the key also gets tools added later.
        "tools": None if set(tools) >= set(all_tools) else list(dict.fromkeys(tools)),
        "monthly_budget": optional_int(form.get("monthly_budget"), "monthly_budget"),
        "total_budget": optional_int(form.get("total_budget"), "total_budget"),
        "per_request_limit": optional_int(form.get("per_request_limit"), "per_request_limit"),
        "rate_limit_per_minute": optional_int(form.get("rate_limit_per_minute"),
                                              "rate_limit_per_minute", minimum=1),
        "expires_at": expiry(form.get("expires_at")),
    }


def key_form(key) -> dict[str, Any]:
    """The edit form's values for an existing key (the inverse of `key_options`)."""
    def number(value: int | None) -> str:
        return "" if value is None else str(value)

    return {"name": key.name or "", "scopes": list(key.scopes or []),
            "tools": (list(key.allowed_tools) if key.allowed_tools is not None
                      else list(TASKS.tools("wixma"))),
            "monthly_budget": number(key.monthly_budget), "total_budget": number(key.total_budget),
            "per_request_limit": number(key.per_request_limit),
            "rate_limit_per_minute": number(key.rate_limit_per_minute),
            "expires_at": key.expires_at.date().isoformat() if key.expires_at else ""}


def _text(form: dict[str, Any], name: str) -> str:
    return (form.get(name) or "").strip()


def playground_body(form: dict[str, Any], images: dict[str, Any]) -> dict[str, Any]:
    """A generation body from the playground form. `images` maps an input field (`main_image`,
    `mask_image`, `image`) to its reference (`{"upload_id": ...}` or `{"generation_id": ...}`),
    and `images` / `secondary_images` to lists of them; the request parser checks every value
    and names the bad field."""
    tool = _text(form, "tool")
    tools = playground_tools()
    if tool not in tools:
        raise InvalidInput("tool", f"must be one of {', '.join(tools)}")
    options: dict[str, Any] = {}
    if _text(form, "seed"):
        options["seed"] = optional_int(form.get("seed"), "options.seed")
    quality = {"quality": _text(form, "quality") or "low"}
    aspect = {"aspect_ratio": _text(form, "aspect_ratio") or "original"}
    if tool == "generator":
        options.update(**quality, **aspect)
        return {"tool": tool, "input": {"prompt": _text(form, "prompt")}, "options": options}
    if tool == "editor":
        if not images.get("images"):
            raise InvalidInput("input.images", "upload at least one image or choose a "
                                               "generation (later images are references)")
        options.update(**quality, **aspect)
        return {"tool": tool, "input": {"images": images["images"],
                                        "prompt": _text(form, "prompt")}, "options": options}
    if tool in ("upscaler", "ai_filter"):
        if "image" not in images:
            raise InvalidInput("input.image", "upload an image or choose a generation")
        if tool == "upscaler":
            options["scale"] = _text(form, "scale") or "2"
            return {"tool": tool, "input": {"image": images["image"]}, "options": options}
        options.update(**quality)
        return {"tool": tool, "input": {"image": images["image"], "filter": _text(form, "filter")},
                "options": options}
    if "main_image" not in images:
        raise InvalidInput("input.main_image", "upload an image or choose a generation")
    inputs: dict[str, Any] = {"main_image": images["main_image"]}
    if "mask_image" in images:
        inputs["mask_image"] = images["mask_image"]
    if images.get("secondary_images"):
        inputs["secondary_images"] = images["secondary_images"]
    for name in ("text_prompt", "angle", "time", "season", "weather"):
        if _text(form, name):
            inputs[name] = _text(form, name)
    options.update(mode=_text(form, "mode"), **quality, **aspect)
    return {"tool": tool, "input": inputs, "options": options}
