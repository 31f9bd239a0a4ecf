"""Batch runner: a JSONL manifest of generation bodies → image files, without the HTTP API.

Each manifest line is a `POST /api/v1/generations` body (`tool`, `input`, `options`). Image
references may be local paths (relative to the manifest's folder), `{"path": ...}`, or HTTPS
URLs; upload and generation ids only exist behind the API and are rejected here. Every line runs
through the same `TaskRunner` the server uses; a bad line fails alone and is recorded in
`results.jsonl` next to the outputs.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from retouch.serving.core.errors import InvalidInput, RetouchError
from retouch.serving.requests import ImageRef
from retouch.serving.tasks import parse_request
from retouch.pipelines.vocabulary import MAX_IMAGE_BYTES

OUTPUT_EXTENSIONS = {"png": "png", "webp": "webp", "jpeg": "jpg"}


@dataclass
class LineResult:
    """One manifest line's outcome, as written to `results.jsonl`."""

    line: int
    status: str  # "ok" | "error"
    outputs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    seed: int | None = None
    error: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        row = {"line": self.line, "status": self.status, "outputs": self.outputs,
               "seconds": round(self.seconds, 3), "seed": self.seed}
        if self.error is not None:
            row["error"] = self.error
        return row


def derive_seed(line_text: str) -> int:
    """A seed fixed by the line's content, so re-running a manifest reproduces its images."""
    try:
        canonical = json.dumps(json.loads(line_text), sort_keys=True, separators=(",", ":"))
    except ValueError:
        canonical = line_text.strip()
    return int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:4], "big")


def output_names(line_no: int, count: int, output_format: str) -> list[str]:
    """`line-0001.png` for one output, `line-0003-01.png` .. `-10.png` for a carousel."""
    ext = OUTPUT_EXTENSIONS[output_format]
    if count == 1:
        return [f"line-{line_no:04d}.{ext}"]
    return [f"line-{line_no:04d}-{i:02d}.{ext}" for i in range(1, count + 1)]


def read_image_ref(ref: ImageRef, field_name: str, base_dir: Path, fetch_url) -> bytes:
    """The raw bytes behind one batch image reference (a local path or an HTTPS URL)."""
    if ref.kind == "path":
        path = Path(ref.value).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise InvalidInput(field_name, f"file not found: {ref.value}")
        if path.stat().st_size > MAX_IMAGE_BYTES:
            raise InvalidInput(field_name,
                               f"image is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
        return path.read_bytes()
    if ref.kind == "url":
        if not ref.value.startswith("https://"):
            raise InvalidInput(field_name, "only HTTPS URLs are accepted")
        return fetch_url(ref.value, field_name)
    raise InvalidInput(field_name, f"{ref.kind} references only work through the HTTP API; "
                                   "use a local file path or an HTTPS URL in a batch manifest")


def fetch_https_image(url: str, field_name: str) -> bytes:
    """Download an HTTPS image with the server's fetcher (public hosts, 50 MB cap, validated)."""
    from retouch.serving.core.fetch import ImageFetcher

    return ImageFetcher().fetch(url, field_name).image.data


def resolve_images(request, base_dir: Path, fetch_url=fetch_https_image) -> dict:
    """Every image field of a request decoded to a PIL image, keyed like `image_fields()`."""
    from retouch.pipelines.images import decode_image
    from retouch.serving.core.errors import pipeline_input_errors

    with pipeline_input_errors():
        return {name: decode_image(read_image_ref(ref, name, base_dir, fetch_url), name)
                for name, ref in request.image_fields().items()}


def run_line(runner, line_no: int, text: str, base_dir: Path, out_dir: Path,
             on_progress: Callable[[float], None], fetch_url=fetch_https_image) -> LineResult:
    """Parse, resolve, run and write one manifest line; any failure is recorded, not raised."""
    from retouch.pipelines.common import RunContext
    from retouch.pipelines.images import encode_image

    started = time.perf_counter()
    result = LineResult(line=line_no, status="error")
    try:
        try:
            body = json.loads(text)
        except ValueError as exc:
            raise InvalidInput("body", f"line is not valid JSON: {exc.msg}") from None
        request = parse_request(body, allow_paths=True)
        seed = request.options.seed
        result.seed = seed if seed is not None else derive_seed(text)
        images = resolve_images(request, base_dir, fetch_url)
        ctx = RunContext(seed=result.seed, progress=on_progress, is_cancelled=lambda: False)
        outputs = runner.run(request, images, ctx)
        names = output_names(line_no, len(outputs), request.options.output_format)
        for name, image in zip(names, outputs):
            (out_dir / name).write_bytes(encode_image(image, request.options.output_format))
        result.status, result.outputs = "ok", names
    except RetouchError as exc:
        result.error = {"code": exc.code, "message": exc.message}
    except Exception as exc:  # a broken line never stops the batch
        result.error = {"code": "service_unavailable", "message": f"{type(exc).__name__}: {exc}"}
    result.seconds = time.perf_counter() - started
    return result


def manifest_lines(manifest: Path) -> list[tuple[int, str]]:
    """(1-based line number, text) for every non-blank line."""
    lines = manifest.read_text(encoding="utf-8").splitlines()
    return [(i, text) for i, text in enumerate(lines, start=1) if text.strip()]


def run_batch(manifest: Path, out_dir: Path, runner, *, show_progress: bool = True,
              fetch_url=fetch_https_image) -> list[LineResult]:
    """Run every line of `manifest` through `runner`; write outputs and `results.jsonl`."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn)

    manifest = Path(manifest)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = manifest_lines(manifest)
    results: list[LineResult] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, disable=not show_progress) as bar, \
            open(out_dir / "results.jsonl", "w", encoding="utf-8") as results_file:
        overall = bar.add_task("lines", total=len(lines))
        steps = bar.add_task("job", total=100)
        for line_no, text in lines:
            bar.update(steps, description=f"line {line_no}", completed=0)
            result = run_line(runner, line_no, text, manifest.parent, out_dir,
                              lambda f: bar.update(steps, completed=round(100 * f)), fetch_url)
            bar.update(steps, completed=100)
            results.append(result)
            results_file.write(json.dumps(result.to_json()) + "\n")
            results_file.flush()
            bar.advance(overall)
    return results


def batch_command(manifest: Path, out: Path, profile: str = "tiny", device: str = "cpu",
                  model_cache: Path | None = None) -> int:
    """`retouch batch`: build the runner, run the manifest, return the exit code."""
    import os

    from rich.console import Console

    from retouch.models.store import ModelStore, default_cache_dir
    from retouch.serving.runner import TaskRunner

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    console = Console(stderr=True)
    cache_dir = Path(model_cache) if model_cache else default_cache_dir()
    if profile == "tiny":
        from retouch.models.tiny import build_tiny_models

        with console.status("building tiny models"):
            build_tiny_models(cache_dir)
    runner = TaskRunner(ModelStore(profile=profile, device=device, cache_dir=cache_dir))
    results = run_batch(Path(manifest), Path(out), runner)
    failed = [r for r in results if r.status != "ok"]
    console.print(f"{len(results) - len(failed)} ok, {len(failed)} failed → "
                  f"{Path(out) / 'results.jsonl'}")
    for r in failed:
        console.print(f"  line {r.line}: {r.error['code']}: {r.error['message']}")
    return 1 if failed else 0
