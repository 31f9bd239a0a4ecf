"""carousel: the planner's JSON plan (schema, retry, fallback) and per-shot pipeline dispatch."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from retouch.pipelines import carousel as carousel_module
from retouch.pipelines.carousel import (FALLBACK_PLAN, Shot, ShotPlan, frame_source,
                                        json_prefix_state, salvage_shots, validate_plan)
from retouch.pipelines.common import RunContext
from retouch.pipelines.images import encode_image
from retouch.pipelines.vocabulary import ANGLES, SEASONS, TIMES, WEATHERS
from retouch.serving.tasks import parse_request


def _photo(width=96, height=80):
    v, u = np.mgrid[0:height, 0:width]
    rgb = np.stack([u * 255 // width, v * 255 // height, (u + v) % 60 * 4], -1)
    rgb[height // 4: height // 2, width // 3: 2 * width // 3] = (230, 200, 60)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def _shots(n=10):
    """A plan a capable planner could write: every pipeline and framing, vocabulary values."""
    kinds = [{"angle": "low angle, front-left"}, {"time": "Neon Night", "weather": "Rainy"},
             {"framing": "close-up"}, {"angle": "bird's eye view, front"},
             {"season": "Winter"}, {"framing": "detail"}, {"angle": "eye level, right side"},
             {"time": "Dawn"}, {"framing": "wide"}, {"angle": "worm's eye view, rear"}]
    return [{"prompt": f"frame number {i + 1} of the story, walking", **kinds[i % 10]}
            for i in range(n)]


def _answer(shots) -> str:
    return json.dumps({"shots": shots})


def test_plan_schema_accepts_the_vocabulary_and_rejects_anything_else():
    plan = ShotPlan.model_validate({"shots": _shots()})
    assert [s.pipeline for s in plan.shots[:3]] == ["angle", "atmosphere", "reframe"]
    assert all(s.angle in ANGLES for s in plan.shots)
    assert ShotPlan(shots=list(FALLBACK_PLAN))  # the fallback is itself a valid plan
    assert {s.pipeline for s in FALLBACK_PLAN} == {"angle", "atmosphere", "reframe"}
    assert all(s.time in (None, *TIMES) and s.season in (None, *SEASONS)
               and s.weather in (None, *WEATHERS) for s in FALLBACK_PLAN)
    bad = [
        _shots(9),  # not 10
        _shots()[:9] + [dict(_shots()[9], angle="eye level, left")],  # not a cube angle
        _shots()[:9] + [dict(_shots()[9], time="Midnight")],
        _shots()[:9] + [dict(_shots()[9], weather="rainy")],  # the seed's exact spelling only
        _shots()[:9] + [dict(_shots()[9], prompt="~~ ..")],  # not a sentence
        _shots()[:9] + [dict(_shots()[9], lens="85mm")],  # unknown field
        _shots()[:9] + [_shots()[0]],  # duplicate prompt
    ]
    for shots in bad:
        with pytest.raises(ValueError):
            validate_plan(_answer(shots))
    for text in ("1. wide shot of the beach\n2. close-up", '{"shots": [', "", "[1, 2]"):
        with pytest.raises(ValueError):
            validate_plan(text)


def test_json_prefix_scanner_stops_noise_early():
    assert json_prefix_state('{"shots": [{"prompt": "a b') == "open"
    assert json_prefix_state(_answer(_shots()) + " trailing words") == "complete"
    for noise in ('{"shots": [[', '{"shots": [{"prompt": {', 'Sure! {"shots"', '{"shots": x',
                  '{"shots": ["a\nb"', '{"shots": [}'):
        assert json_prefix_state(noise) == "invalid", noise


class _Planner:
    """Stands in for `run_planner`: answers in turn, recording each prompt."""

    def __init__(self, *answers):
        self.answers, self.prompts = list(answers), []

    def __call__(self, store, messages, ctx=None):
        self.prompts.append(messages[-1]["content"])
        return self.answers.pop(0)


def test_valid_plan_is_used_as_written(tiny_store, monkeypatch):
    planner = _Planner(_answer(_shots()))
    monkeypatch.setattr(carousel_module, "run_planner", planner)
    plan = carousel_module.plan_carousel(tiny_store, _photo(), "street fashion")
    assert len(planner.prompts) == 1 and plan.sources == ("planner",) * 10
    assert [s.prompt for s in plan.shots] == [s["prompt"] for s in _shots()]
    assert "street fashion" in planner.prompts[0] and "dominant colours" in planner.prompts[0]


def test_invalid_output_is_retried_with_the_reason(tiny_store, monkeypatch):
    wrong = _shots()[:9] + [dict(_shots()[9], angle="sideways")]
    planner = _Planner(_answer(wrong), _answer(_shots()))
    monkeypatch.setattr(carousel_module, "run_planner", planner)
    plan = carousel_module.plan_carousel(tiny_store, _photo(), "")
    assert len(planner.prompts) == 2 and "rejected" in planner.prompts[1]
    assert "shots.9.angle" in planner.prompts[1]
    assert plan.sources == ("planner",) * 10 and plan.attempts[0] and plan.attempts[1] == ""


def test_still_invalid_falls_back_keeping_the_valid_shots(tiny_store, monkeypatch):
    partial = _shots(3) + [{"prompt": "a shot from nowhere", "angle": "upside down"}]
    planner = _Planner("Here is your plan: 1. wide", _answer(partial))
    monkeypatch.setattr(carousel_module, "run_planner", planner)
    plan = carousel_module.plan_carousel(tiny_store, _photo(), "")
    assert len(planner.prompts) == carousel_module.PLANNER_ATTEMPTS == 2
    assert plan.sources == ("planner",) * 3 + ("fallback",) * 7
    assert [s.prompt for s in plan.shots[:3]] == [s["prompt"] for s in _shots(3)]
    assert list(plan.shots[3:]) == list(FALLBACK_PLAN[:7])
    assert len(salvage_shots("no json at all")) == 0


def test_tiny_planner_runs_the_same_path_and_ends_on_the_fallback(tiny_store):
    plan = carousel_module.plan_carousel(tiny_store, _photo(), "")
    assert len(plan.attempts) == 2 and all(plan.attempts)  # two real answers, both rejected
    assert plan.shots == FALLBACK_PLAN and plan.sources == ("fallback",) * 10


def test_framing_crops_around_the_subject():
    source = _photo(120, 80)
    assert frame_source(source, "wide", None) is source
    close = frame_source(source, "close-up", (0.6, 0.2, 0.9, 0.9))
    assert close.size == (round(120 / 2.2), round(80 / 2.2))
    full = np.asarray(source)
    # The crop is a window of the photo, placed on the subject's side.
    found = [(x, y) for y in range(80 - close.height + 1) for x in range(120 - close.width + 1)
             if np.array_equal(full[y:y + close.height, x:x + close.width], np.asarray(close))]
    assert found and found[0][0] > 40


def _request(text_prompt=""):
    return parse_request({"tool": "photographer", "input": {
        "main_image": "https://example.com/a.png", "text_prompt": text_prompt},
        "options": {"mode": "carousel", "quality": "low"}})


def test_each_frame_runs_the_pipeline_its_shot_needs(tiny_store, monkeypatch):
    monkeypatch.setattr(carousel_module, "run_planner", _Planner(_answer(_shots())))
    used = []
    for name, real in list(carousel_module.FRAME_PIPELINES.items()):
        def spy(store, job, progress, ctx, _name=name, _real=real):
            used.append((_name, job.shot, job.seed_offset, job.source.size))
            return _real(store, job, progress, ctx)
        monkeypatch.setitem(carousel_module.FRAME_PIPELINES, name, spy)
    seen = []
    frames = carousel_module.carousel(tiny_store, _request("street fashion"),
                                      {"input.main_image": _photo()},
                                      RunContext(seed=3, progress=seen.append))
    plan = [Shot.model_validate(s) for s in _shots()]
    assert [u[0] for u in used] == [s.pipeline for s in plan]
    assert [u[1] for u in used] == plan and [u[2] for u in used] == list(range(10))
    assert {u[0] for u in used} == {"angle", "atmosphere", "reframe"}
    # Close-up and detail frames start from a crop of the photo.
    assert used[2][3][0] < 96 and used[5][3][0] < used[2][3][0] and used[0][3] == (96, 80)
    assert [f.info["pipeline"] for f in frames] == [s.pipeline for s in plan]
    assert all(f.size == (96, 80) and f.mode == "RGB" for f in frames)
    assert len({encode_image(f, "png") for f in frames}) == 10
    assert seen == sorted(seen) and seen[-1] == 1.0
