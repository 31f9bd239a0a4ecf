"""The batch runner: manifest lines → files + results.jsonl, bad lines failing alone, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from retouch.scripts.batch import derive_seed, output_names, run_batch

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def runner(tiny_store):
    from retouch.serving.runner import TaskRunner

    return TaskRunner(tiny_store)


def _write_inputs(folder: Path) -> None:
    Image.new("RGB", (64, 48), (200, 40, 40)).save(folder / "photo.png")
    mask = Image.new("L", (64, 48), 0)
    mask.paste(255, (16, 12, 40, 30))
    mask.convert("RGB").save(folder / "mask.png")


def _manifest(folder: Path) -> Path:
    lines = [
        json.dumps({"tool": "generator", "input": {"prompt": "a red sneaker"},
                    "options": {"quality": "low", "output_format": "png"}}),
        json.dumps({"tool": "upscaler", "input": {"image": "photo.png"},
                    "options": {"scale": 2, "output_format": "webp", "seed": 7}}),
        "{not json",
        json.dumps({"tool": "photographer",
                    "input": {"main_image": {"path": "photo.png"}, "angle": "eye level, sideways"},
                    "options": {"mode": "angle_change", "quality": "low"}}),
        json.dumps({"tool": "photographer",
                    "input": {"main_image": {"path": "photo.png"},
                              "mask_image": {"path": "mask.png"}},
                    "options": {"mode": "erase_edit", "quality": "low",
                                "output_format": "jpeg"}}),
        json.dumps({"tool": "editor", "input": {"images": ["missing.png"], "prompt": "x"}}),
        "",
        json.dumps({"tool": "editor", "input": {"images": [{"upload_id": "abc"}]}}),
        json.dumps({"tool": "ai_filter", "input": {"image": "photo.png", "filter": "noir-bw"},
                    "options": {"quality": "low"}}),
    ]
    manifest = folder / "jobs.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_manifest_runs_good_lines_and_records_bad_ones(tmp_path, runner):
    _write_inputs(tmp_path)
    manifest = _manifest(tmp_path)
    out = tmp_path / "out"

    results = run_batch(manifest, out, runner, show_progress=False)

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r.to_json() for r in results] == rows
    by_line = {row["line"]: row for row in rows}
    assert sorted(by_line) == [1, 2, 3, 4, 5, 6, 8, 9]  # the blank line 7 is skipped

    ok = {n: by_line[n] for n in (1, 2, 5, 9)}
    for n, row in ok.items():
        assert row["status"] == "ok", row
        assert isinstance(row["seed"], int) and row["seconds"] >= 0
    assert ok[1]["outputs"] == ["line-0001.png"]
    assert ok[2]["outputs"] == ["line-0002.webp"] and ok[2]["seed"] == 7
    assert ok[5]["outputs"] == ["line-0005.jpg"]
    assert ok[9]["outputs"] == ["line-0009.png"]

    with Image.open(out / "line-0002.webp") as upscaled:
        assert upscaled.format == "WEBP" and upscaled.size == (128, 96)
    with Image.open(out / "line-0005.jpg") as erased:
        assert erased.format == "JPEG"
    with Image.open(out / "line-0001.png") as generated:
        assert generated.format == "PNG" and min(generated.size) >= 16

    assert by_line[3]["status"] == "error" and by_line[3]["error"]["code"] == "invalid_input"
    assert by_line[3]["error"]["message"].startswith("body:")
    assert by_line[4]["error"]["code"] == "invalid_input"
    assert "input.angle" in by_line[4]["error"]["message"]
    assert by_line[6]["error"]["code"] == "invalid_input"
    assert "input.images[0]" in by_line[6]["error"]["message"]
    assert "missing.png" in by_line[6]["error"]["message"]
    assert "input.images[0]" in by_line[8]["error"]["message"]
    assert "upload_id" in by_line[8]["error"]["message"]
    for n in (3, 4, 6, 8):
        assert by_line[n]["outputs"] == []
    written = sorted(p.name for p in out.iterdir())
    assert written == ["line-0001.png", "line-0002.webp", "line-0005.jpg", "line-0009.png",
                       "results.jsonl"]


def test_same_manifest_gives_identical_outputs(tmp_path, runner):
    _write_inputs(tmp_path)
    lines = [json.dumps({"tool": "generator", "input": {"prompt": "a lamp"},
                         "options": {"quality": "low"}}),
             json.dumps({"tool": "generator", "input": {"prompt": "a chair"},
                         "options": {"quality": "low"}})]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines))

    first = run_batch(manifest, tmp_path / "a", runner, show_progress=False)
    second = run_batch(manifest, tmp_path / "b", runner, show_progress=False)

    assert [r.seed for r in first] == [r.seed for r in second] == [derive_seed(x) for x in lines]
    assert first[0].seed != first[1].seed
    for name in ("line-0001.png", "line-0002.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "line-0001.png").read_bytes() != \
        (tmp_path / "a" / "line-0002.png").read_bytes()


def test_output_names():
    assert output_names(3, 1, "jpeg") == ["line-0003.jpg"]
    carousel = output_names(3, 10, "png")
    assert carousel[0] == "line-0003-01.png" and carousel[-1] == "line-0003-10.png"
    assert len(carousel) == 10


def test_image_refs_in_a_manifest(tmp_path):
    from retouch.serving.core.errors import InvalidInput
    from retouch.serving.requests import ImageRef
    from retouch.scripts.batch import read_image_ref

    (tmp_path / "a.png").write_bytes(b"png bytes")
    fetched = []

    def fetch(url, field):
        fetched.append((url, field))
        return b"remote bytes"

    path_ref = ImageRef(kind="path", value="a.png")
    assert read_image_ref(path_ref, "input.image", tmp_path, fetch) == b"png bytes"
    url_ref = ImageRef(kind="url", value="https://cdn.example.com/x.png")
    assert read_image_ref(url_ref, "input.images[1]", tmp_path, fetch) == b"remote bytes"
    assert fetched == [("https://cdn.example.com/x.png", "input.images[1]")]
    with pytest.raises(InvalidInput, match="input.image: only HTTPS"):
        read_image_ref(ImageRef(kind="url", value="http://cdn.example.com/x.png"),
                       "input.image", tmp_path, fetch)
    with pytest.raises(InvalidInput, match="generation_id references only work"):
        read_image_ref(ImageRef(kind="generation_id", value="g1"), "input.main_image",
                       tmp_path, fetch)
