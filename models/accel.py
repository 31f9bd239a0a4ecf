"""Speed settings for diffusion pipelines on CUDA: SDPA, channels_last, fused QKV, VAE precision
and tiling, optional `torch.compile`.

`apply_cuda_defaults(pipe, settings)` runs once per built pipeline (the model store calls it) and
does nothing unless the pipeline's UNet is on a CUDA device, so CPU runs (the tiny twins, the
tests) keep diffusers' defaults bit for bit. `apply_defaults` does the same work on any device
(tests exercise it on CPU).

- Attention runs through PyTorch's scaled-dot-product attention (`AttnProcessor2_0`), with the
  query/key/value projections fused into one matmul (`fuse_qkv_projections`) when `fuse_qkv`.
- UNet, VAE and ControlNet weights are `channels_last` (cuDNN's fast convolution layout).
- VAE precision follows the pipeline's dtype: in bfloat16 (float32's exponent range, no
  overflow) the VAE stays bfloat16 and diffusers' per-call float32 upcast is switched off; in
  float16 the upcast stays (the SDXL VAE overflows in float16 and would decode NaNs).
- The VAE decodes (and encodes) in tiles when an image has at least `vae_tiling_pixels` pixels
  (4k and up by default): `prepare_vae_for_size` switches tiling per call.
- `compile` compiles the UNet and the VAE decoder in place (`nn.Module.compile`, so pipelines
  that share them share the compiled code); `warm_up` runs one short generation so the first
  job does not pay for compilation.

Settings come from the environment (`AccelSettings.from_env`): `RETOUCH_CUDA_ENABLED` (0 turns
all of this off), `RETOUCH_CUDA_CHANNELS_LAST`,
`RETOUCH_CUDA_FUSE_QKV`, `RETOUCH_CUDA_COMPILE`, `RETOUCH_CUDA_COMPILE_MODE`,
`RETOUCH_CUDA_VAE_TILING_PIXELS`, `RETOUCH_CUDA_UPSCALER_DTYPE`, `RETOUCH_CUDA_UPSCALER_TILE`,
`RETOUCH_CUDA_UPSCALER_BATCH`.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Mapping

import torch

UHD_4K_PIXELS = 3840 * 2160


@dataclass(frozen=True)
class AccelSettings:
    enabled: bool = True  # False: diffusers defaults on CUDA too; the upscaler as on CPU
    channels_last: bool = True
    fuse_qkv: bool = True
    compile: bool = False
    compile_mode: str = "max-autotune-no-cudagraphs"
    compile_backend: str = "inductor"
    vae_tiling_pixels: int = UHD_4K_PIXELS
    tf32: bool = True  # float32 matmuls/convolutions (an upcast VAE) on tensor cores
    cudnn_benchmark: bool = True
    # Real-ESRGAN on CUDA: its compute dtype, input tile side and tiles per forward pass.
    upscaler_dtype: str = "float16"
    upscaler_tile: int = 512
    upscaler_batch: int = 4

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "AccelSettings":
        """Defaults overridden by `RETOUCH_CUDA_<FIELD>` variables (booleans: 1/0, true/false)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            raw = environ.get(f"RETOUCH_CUDA_{item.name.upper()}")
            if raw is None:
                continue
            if item.type == "bool":
                if raw.strip().lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(f"RETOUCH_CUDA_{item.name.upper()}: expected 1/0, got {raw!r}")
                values[item.name] = raw.strip().lower() in ("1", "true", "yes")
            elif item.type == "int":
                values[item.name] = int(raw)
            else:
                values[item.name] = raw.strip()
        return cls(**values)


def module_device(module: Any) -> torch.device:
    """A module's device from its first parameter (diffusers' `.device` walks every module)."""
    return next(module.parameters()).device


def is_cuda_pipeline(pipe: Any) -> bool:
    unet = getattr(pipe, "unet", None)
    return unet is not None and module_device(unet).type == "cuda"


def apply_cuda_defaults(pipe: Any, settings: AccelSettings | None = None) -> Any:
    """`apply_defaults` for a pipeline on CUDA; a CPU pipeline (or `enabled=False`) is returned
    untouched."""
    settings = settings or AccelSettings()
    if settings.enabled and is_cuda_pipeline(pipe):
        apply_defaults(pipe, settings)
    return pipe


def apply_defaults(pipe: Any, settings: AccelSettings) -> Any:
    """The speed settings on `pipe`'s modules (shared modules are changed once)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    if settings.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if settings.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    unet, vae = pipe.unet, pipe.vae
    controlnet = getattr(pipe, "controlnet", None)
    for model in (unet, vae, controlnet):
        if model is None or _done(model, "attention"):
            continue
        if hasattr(model, "set_attn_processor"):
            model.set_attn_processor(AttnProcessor2_0())
        if settings.fuse_qkv and hasattr(model, "fuse_qkv_projections"):
            model.fuse_qkv_projections()
        if settings.channels_last:
            model.to(memory_format=torch.channels_last)
    if vae.dtype == torch.bfloat16:
        vae.register_to_config(force_upcast=False)
    with _LOCK:
        _VAE_TILING[vae] = settings.vae_tiling_pixels
    if settings.compile:
        compile_kwargs = {"mode": settings.compile_mode, "backend": settings.compile_backend}
        if settings.compile_backend != "inductor":
            compile_kwargs.pop("mode")
        for model in (unet, vae.decoder):
            if not _done(model, "compile"):
                model.compile(**compile_kwargs)
    return pipe


_LOCK = threading.Lock()
_VAE_TILING: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()
_DONE: "weakref.WeakKeyDictionary[Any, set]" = weakref.WeakKeyDictionary()


def _done(module: Any, step: str) -> bool:
    """True if `step` already ran on `module`; marks it as run otherwise."""
    with _LOCK:
        steps = _DONE.setdefault(module, set())
        if step in steps:
            return True
        steps.add(step)
        return False


def prepare_vae_for_size(pipe: Any, width: int, height: int) -> None:
    """Tile the VAE of a pipeline set up by `apply_defaults` iff width × height reaches its
    `vae_tiling_pixels`; other pipelines are left alone."""
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return
    with _LOCK:
        threshold = _VAE_TILING.get(vae)
    if threshold is None:
        return
    if width * height >= threshold:
        vae.enable_tiling()
    else:
        vae.disable_tiling()


@torch.inference_mode()
def warm_up(pipe: Any, width: int, height: int, steps: int = 2) -> None:
    """One short text→image run at the working size (compiles the UNet and the VAE decoder)."""
    prepare_vae_for_size(pipe, width, height)
    pipe(prompt="warm-up", negative_prompt="", width=width, height=height,
         num_inference_steps=steps, output_type="pil")


def upscaler_dtype(device: torch.device | str, settings: AccelSettings | None = None
                   ) -> torch.dtype:
    """Real-ESRGAN's compute dtype: float32 off CUDA, the settings' half type on CUDA."""
    settings = settings or AccelSettings()
    if torch.device(device).type != "cuda" or not settings.enabled:
        return torch.float32
    return getattr(torch, settings.upscaler_dtype)
