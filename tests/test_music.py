"""Background music for reels: Riffusion's spectrogram images ↔ audio (`pipelines.spectrogram`)
and music composed from a text prompt with the tiny Riffusion twin (`pipelines.music`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from retouch.pipelines import spectrogram
from retouch.pipelines.spectrogram import RIFFUSION

RATE = RIFFUSION.sample_rate
QUICK = dataclasses.replace(RIFFUSION, griffin_lim_iters=8)


def tone(hz: float, seconds: float = 5.11) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def dominant_hz(samples: np.ndarray, rate: int = RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[spectrum.argmax()])


def mel_bin_hz(hz: float) -> float:
    """The width of one mel bin around `hz` (HTK scale, 512 bins up to 10 kHz)."""
    mel_step = 2595 * np.log10(1 + RIFFUSION.max_frequency / 700) / (RIFFUSION.num_frequencies + 1)
    mel = 2595 * np.log10(1 + hz / 700)
    return 700 * (10 ** ((mel + mel_step) / 2595) - 1) - hz


def test_the_filterbank_matches_torchaudios_triangles():
    fb = spectrogram.mel_filterbank()
    assert fb.shape == (RIFFUSION.n_fft // 2 + 1, 512)
    assert (RIFFUSION.n_fft, RIFFUSION.win_length, RIFFUSION.hop_length) == (17640, 4410, 441)
    # Each filter peaks (close to 1) at its centre and is zero above 10 kHz (f_max).
    freqs = torch.linspace(0, RATE // 2, fb.shape[0])
    assert float(fb.max()) <= 1.0 and float(fb.amax(dim=0).min()) > 0.5
    assert float(fb[freqs > RIFFUSION.max_frequency].abs().max()) == 0.0
    centres = freqs[fb.argmax(dim=0)]
    assert bool((centres[1:] >= centres[:-1]).all())  # low bins first


@pytest.mark.parametrize("hz", [440.0, 1000.0])
def test_a_tone_survives_the_round_trip_through_an_image(hz):
    image = spectrogram.image_from_audio(tone(hz), QUICK)
    assert image.size == (512, 512) and image.mode == "RGB"
    pixels = np.asarray(image)[:, :, 0]
    loudest_row = int(np.argmin(pixels[:, 256]))  # inverted: the tone is the darkest row
    centre_hz = float(torch.linspace(0, RATE // 2, RIFFUSION.n_fft // 2 + 1)[
        spectrogram.mel_filterbank()[:, 511 - loudest_row].argmax()])
    assert abs(centre_hz - hz) <= mel_bin_hz(hz)  # low frequencies at the bottom
    audio = spectrogram.audio_from_image(image, QUICK)
    assert audio.shape == (RIFFUSION.samples_for(512),) and np.isfinite(audio).all()
    assert abs(float(np.abs(audio).max()) - 1.0) < 1e-5  # peak-normalised
    assert abs(dominant_hz(audio) - hz) <= mel_bin_hz(hz)


def test_griffin_lim_iterations_bring_the_magnitudes_closer():
    image = spectrogram.image_from_audio(tone(440.0, 1.0) + tone(1500.0, 1.0), QUICK)
    target = spectrogram.linear_amplitudes(spectrogram.mel_from_image(image))

    def error(iters: int) -> float:
        params = dataclasses.replace(RIFFUSION, griffin_lim_iters=iters)
        rebuilt = spectrogram.mel_amplitudes(spectrogram.griffin_lim(target, params), params)
        wanted = spectrogram.mel_filterbank().T @ target
        return float(torch.linalg.norm(rebuilt - wanted) / torch.linalg.norm(wanted))

    assert error(8) < 0.7 * error(0)
    first = spectrogram.griffin_lim(target, QUICK, seed=3)
    assert torch.equal(first, spectrogram.griffin_lim(target, QUICK, seed=3))


def test_a_white_image_is_silence_and_images_must_be_512_tall():
    silent = spectrogram.audio_from_image(Image.new("RGB", (64, 512), "white"), QUICK)
    assert silent.shape == (RIFFUSION.samples_for(64),) and not silent.any()
    loud = spectrogram.audio_from_image(Image.new("RGB", (64, 512), "black"), QUICK)
    assert float(np.abs(loud).max()) > 0.5  # black is the loudest value (the image is inverted)
    with pytest.raises(ValueError, match="512 rows"):
        spectrogram.mel_from_image(Image.new("RGB", (64, 256), "white"))


# --- composing music with the tiny Riffusion twin ------------------------------------------------

def compose(store, duration_s: float, seed: int = 1, **options) -> np.ndarray:
    from retouch.pipelines.common import RunContext
    from retouch.pipelines.music import compose_music

    return compose_music(store, "soft piano", duration_s, seed, RunContext(seed=seed), **options)


@pytest.mark.parametrize("duration_s, tiles", [(2, 1), (6, 2), (12, 3)])
def test_music_fills_the_duration_from_enough_tiles(tiny_store, monkeypatch, duration_s, tiles):
    from retouch.pipelines import music

    assert music.tile_count(duration_s) == tiles
    from retouch.models.store import MusicModel

    model, calls = tiny_store.music(), []

    class SeedSpy:
        device = model.pipe.device

        def __call__(self, *args, **kwargs):
            calls.append(kwargs["generator"].initial_seed())
            return model.pipe(*args, **kwargs)

    monkeypatch.setattr(tiny_store, "music", lambda: MusicModel(SeedSpy(), model.griffin_lim_iters))
    samples = compose(tiny_store, duration_s, seed=5)
    assert samples.shape == (2, duration_s * RATE) and samples.dtype == np.float32
    assert np.isfinite(samples).all() and float(np.abs(samples).max()) <= music.MUSIC_PEAK + 1e-6
    assert float(np.sqrt(np.mean(samples ** 2))) > 0.01 and np.array_equal(samples[0], samples[1])
    assert calls == list(range(5, 5 + tiles))  # the seed family: seed, seed + 1, ...


def test_the_same_seed_composes_the_same_music(tiny_store):
    first = compose(tiny_store, 2, seed=1)
    assert np.array_equal(first, compose(tiny_store, 2, seed=1))
    assert not np.array_equal(first, compose(tiny_store, 2, seed=2))
    webm = compose(tiny_store, 2, seed=1, rate=48_000)  # resampled to the container's rate
    assert webm.shape == (2, 96_000) and float(np.abs(webm).max()) <= 1.0


def test_progress_covers_the_span_and_cancel_stops_composing(tiny_store):
    from retouch.pipelines.common import RunContext
    from retouch.pipelines.errors import Cancelled
    from retouch.pipelines.music import compose_music

    seen = []
    compose_music(tiny_store, "drums", 6, 0, RunContext(seed=0, progress=seen.append),
                  span=(0.0, 0.4))
    assert seen == sorted(seen) and len(seen) > 4 and abs(seen[-1] - 0.4) < 1e-9
    with pytest.raises(Cancelled):
        compose_music(tiny_store, "drums", 6, 0, RunContext(seed=0, is_cancelled=lambda: True))


def test_tiles_join_with_an_equal_power_crossfade():
    from retouch.pipelines.music import join_with_crossfade

    a, b = np.ones(100, np.float32), -np.ones(100, np.float32)
    joined = join_with_crossfade([a, b], 20)
    assert joined.shape == (180,) and joined[0] == 1 and joined[-1] == -1
    t = (np.arange(20) + 0.5) / 20  # in the overlap: 1 · cos(t) + (-1) · sin(t)
    assert np.allclose(joined[80:100], np.cos(t * np.pi / 2) - np.sin(t * np.pi / 2), atol=1e-6)
