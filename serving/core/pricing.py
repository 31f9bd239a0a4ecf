"""Credit prices: one table, used when a job is created and copied into the README.

| tool / mode                                          | low | medium | high |
|------------------------------------------------------|----:|-------:|-----:|
| generator, editor, ai_filter                         |  40 |    110 |  200 |
| photographer (every mode except carousel)            |  40 |    110 |  200 |
| photographer `carousel` (10 × image price + 10)      | 410 |   1110 | 2010 |

| upscaler `options.scale` |  2 |  4 | "4k" |
|--------------------------|---:|---:|-----:|
| credits                  | 40 | 80 |  120 |

The medium generator costs 110 as in the seed's response example; the carousel follows the seed:
10 × the selected quality's image price + 10 planner credits. Failed jobs are refunded in full.
Which table a task uses is its `TaskSpec.price` (`serving.tasks`).
"""

from __future__ import annotations

QUALITY_PRICES: dict[str, int] = {"low": 40, "medium": 110, "high": 200}
UPSCALE_PRICES: dict[int | str, int] = {2: 40, 4: 80, "4k": 120}
CAROUSEL_PLANNER_CREDITS = 10
# AIXpose videos (`POST /v1/videos`), credits per second: 240p 2, 360p 3, 720p 5, 1080p 8.
VIDEO_CREDITS_PER_SECOND: dict[str, int] = {"240p": 2, "360p": 3, "720p": 5, "1080p": 8}


def video_price(duration_seconds: int, resolution: str) -> int:
    """An AIXpose reel: credits per second of video, by resolution."""
    return duration_seconds * VIDEO_CREDITS_PER_SECOND[resolution]


def enhancement_price(action_ids: list[str], has_prompt: bool, variants: int) -> int:
    """An AIXpose enhancement: each variant costs the sum of its actions' catalog credits (a
    custom prompt alone costs `actions.CUSTOM_PROMPT_CREDITS`)."""
    from retouch.pipelines.actions import action_credits

    return variants * action_credits(action_ids, has_prompt)
