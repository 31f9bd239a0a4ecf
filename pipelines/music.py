"""Background music for reels: Riffusion draws mel-spectrogram images from a text prompt and
`pipelines.spectrogram` turns each into 5.11 s of audio.

`compose_music(store, prompt, duration_s, seed, ctx, rate=...)` generates as many 512×512 tiles
as the duration needs (tile i from seed + i), converts each to a waveform (Griffin-Lim seeded
the same way), levels each to `MUSIC_PEAK`, joins them with an equal-power crossfade of
`CROSSFADE_S`, fades in over `FADE_IN_S` and cuts to exactly `duration_s`. The result is stereo
(the mono music on both channels) at `rate`, the shape `pipelines.reel` mixes; the reel fades
it out over its last second like any music track. Progress covers `span` of `ctx`'s bar, each
tile a `DIFFUSION_SHARE` of denoising and the rest for the conversion.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from .common import RunContext
from .spectrogram import RIFFUSION, audio_from_image
from .voiceover import resample

TILE_COLUMNS = 512  # one tile: 512 hops of 10 ms
CROSSFADE_S = 0.5
FADE_IN_S = 0.05  # no click where the music starts
MUSIC_PEAK = 0.7  # about -3 dBFS, headroom for the voice-over mixed on top
GUIDANCE_SCALE = 7.0  # Riffusion's default
STEPS_QUALITY = "medium"  # the store's denoising steps for this quality
DIFFUSION_SHARE = 0.6


def tile_samples() -> int:
    """Samples of one tile's audio at Riffusion's 44.1 kHz."""
    return RIFFUSION.samples_for(TILE_COLUMNS)


def tile_count(duration_s: float) -> int:
    """Tiles whose crossfaded audio covers `duration_s`."""
    needed = math.ceil(duration_s * RIFFUSION.sample_rate)
    length, overlap = tile_samples(), int(CROSSFADE_S * RIFFUSION.sample_rate)
    return 1 + max(0, math.ceil((needed - length) / (length - overlap)))


def join_with_crossfade(tiles: list[np.ndarray], overlap: int) -> np.ndarray:
    """Mono tiles joined end to end, neighbours overlapping by `overlap` samples with
    equal-power (sine/cosine) gains, so uncorrelated tiles keep their loudness."""
    out = tiles[0].astype(np.float32)
    t = (np.arange(overlap, dtype=np.float32) + 0.5) / max(1, overlap)
    fade_in, fade_out = np.sin(t * np.pi / 2), np.cos(t * np.pi / 2)
    for tile in tiles[1:]:
        head = out[:-overlap] if overlap else out
        mixed = out[len(out) - overlap:] * fade_out + tile[:overlap] * fade_in
        out = np.concatenate([head, mixed, tile[overlap:]]).astype(np.float32)
    return out


def compose_music(store, prompt: str, duration_s: float, seed: int, ctx: RunContext, *,
                  rate: int = RIFFUSION.sample_rate,
                  span: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Stereo float32 music `(2, round(duration_s * rate))` for `prompt`, peaks at most
    `MUSIC_PEAK`; the same prompt, duration and seed give the same samples."""
    model = store.music()
    params = dataclasses.replace(RIFFUSION, griffin_lim_iters=model.griffin_lim_iters)
    steps = store.quality_steps[STEPS_QUALITY]
    count = tile_count(duration_s)
    stage = ctx.stage(*span)
    tiles = []
    for i in range(count):
        ctx.check_cancelled()
        tile_stage = stage.stage(i / count, (i + 1) / count)
        image = model.pipe(
            prompt, num_inference_steps=steps, guidance_scale=GUIDANCE_SCALE,
            height=params.num_frequencies, width=TILE_COLUMNS,
            generator=torch.Generator().manual_seed(seed + i),
            callback_on_step_end=tile_stage.stage(0, DIFFUSION_SHARE).step_callback(steps),
        ).images[0]
        ctx.check_cancelled()
        tiles.append(MUSIC_PEAK * audio_from_image(image, params, seed=seed + i,
                                                   device=model.pipe.device))
        tile_stage.report(1.0)
    music = join_with_crossfade(tiles, int(CROSSFADE_S * params.sample_rate))
    if rate != params.sample_rate:
        music = resample(music, params.sample_rate, rate)
    needed = round(duration_s * rate)
    music = np.pad(music[:needed], (0, max(0, needed - music.size)))
    fade = min(needed, int(FADE_IN_S * rate))
    music[:fade] *= np.linspace(0.0, 1.0, fade, dtype=np.float32)
    music = np.clip(music, -1.0, 1.0)  # resampling may overshoot a hair
    return np.stack([music, music]).astype(np.float32)
