"""Pre-fetch a profile's checkpoints so `ModelStore` can load them with `local_files_only=True`.

Hub repositories go to the standard Hugging Face cache (`HF_HOME`), downloading only the files
the loaders read (the `fp16` variant where the spec names one, no ONNX/Flax/TF copies).
Real-ESRGAN `.pth` release files go to `<cache_dir>/realesrgan/`. Tiny twins, random twins and
specs that point at local paths need nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from retouch.models.registry import ModelSpec, Profile

OTHER_FRAMEWORK_FILES = ("*.onnx", "onnx/*", "*.h5", "*.msgpack", "*.tflite", "*.ckpt",
                         "openvino/*", "*.pb")


@dataclass(frozen=True)
class FetchItem:
    """One download: a hub repo (with file patterns) or a URL (with its target file)."""

    source: str
    spec_names: tuple[str, ...]
    revision: str | None = None
    allow_patterns: tuple[str, ...] | None = None
    ignore_patterns: tuple[str, ...] | None = None
    target: Path | None = None  # set for URL downloads

    @property
    def is_url(self) -> bool:
        return self.target is not None


def url_cache_path(cache_dir: Path | str, url: str) -> Path:
    """Where a downloaded release file (a Real-ESRGAN `.pth`) lives in the model cache."""
    return Path(cache_dir) / "realesrgan" / url.rsplit("/", 1)[-1]


def is_url(source: str) -> bool:
    return source.startswith(("https://", "http://", "file://"))


def _hub_patterns(spec: ModelSpec) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """(allow_patterns, ignore_patterns) for the files `spec`'s loader reads."""
    variant = spec.options.get("variant")
    weights = f"*.{variant}.safetensors" if variant else "*.safetensors"
    prefix = f"{spec.subfolder}/" if spec.subfolder else ""
    if spec.family in ("diffusion", "music") and spec.options.get("components"):
        # Only these folders are read from this repository (e.g. the inpaint UNet + scheduler).
        patterns = ["model_index.json"]
        for component in spec.options["components"]:
            patterns += ([f"{component}/*"] if component in ("scheduler", "tokenizer") else
                         [f"{component}/*.json", f"{component}/*{weights[1:]}"])
        return tuple(patterns), None
    if spec.family == "diffusion":
        weight_files = (f"*/diffusion_pytorch_model.{variant}.safetensors",
                        f"*/model.{variant}.safetensors") if variant else (
            "*/diffusion_pytorch_model.safetensors", "*/model.safetensors")
        return ("model_index.json", "scheduler/*", "tokenizer/*", "tokenizer_2/*",
                "*/config.json", *weight_files), None
    if spec.family == "controlnet":
        return (f"{prefix}config.json", f"{prefix}diffusion_pytorch_model.{variant}.safetensors"
                if variant else f"{prefix}diffusion_pytorch_model.safetensors"), None
    if spec.weight_name:
        return (f"{prefix}{spec.weight_name}",), None
    if spec.subfolder:
        return (f"{prefix}*.json", f"{prefix}{weights}"), None
    return None, OTHER_FRAMEWORK_FILES


def fetch_plan(profile: Profile, cache_dir: Path | str) -> list[FetchItem]:
    """What `fetch_models` would download for `profile`; repos shared by specs are merged."""
    items: dict[tuple[str, str | None], FetchItem] = {}
    for spec in profile.specs.values():
        if spec.is_tiny or spec.is_random or Path(spec.source).expanduser().exists():
            continue
        if is_url(spec.source):
            items[(spec.source, None)] = FetchItem(
                spec.source, (spec.name,), target=url_cache_path(cache_dir, spec.source))
            continue
        allow, ignore = _hub_patterns(spec)
        key = (spec.source, spec.revision)
        previous = items.get(key)
        if previous is None:
            items[key] = FetchItem(spec.source, (spec.name,), spec.revision, allow, ignore)
        elif previous.allow_patterns is not None and allow is not None:
            items[key] = FetchItem(spec.source, previous.spec_names + (spec.name,),
                                   spec.revision, previous.allow_patterns + allow, None)
        else:  # one of them wants the whole repo
            items[key] = FetchItem(spec.source, previous.spec_names + (spec.name,),
                                   spec.revision, None, OTHER_FRAMEWORK_FILES)
    return list(items.values())


def fetch_models(profile: Profile, cache_dir: Path | str,
                 on_item: Callable[[FetchItem], None] | None = None) -> list[Path]:
    """Download everything `fetch_plan` lists (skipping files already present); the local paths."""
    fetched: list[Path] = []
    for item in fetch_plan(profile, cache_dir):
        if on_item:
            on_item(item)
        if item.is_url:
            fetched.append(_download_url(item.source, item.target))
            continue
        from huggingface_hub import snapshot_download

        fetched.append(Path(snapshot_download(
            item.source, revision=item.revision,
            allow_patterns=list(item.allow_patterns) if item.allow_patterns else None,
            ignore_patterns=list(item.ignore_patterns) if item.ignore_patterns else None)))
    return fetched


def _download_url(url: str, target: Path) -> Path:
    if target.is_file():
        return target
    import torch.hub

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    torch.hub.download_url_to_file(url, str(partial), progress=True)
    partial.rename(target)
    return target
