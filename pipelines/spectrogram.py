"""Riffusion's spectrogram images ↔ audio, in plain torch (no torchaudio).

A re-implementation of the reference converters (riffusion/riffusion: `spectrogram_params.py`,
`spectrogram_converter.py`, `util/image_util.py`) with their default parameters, which are the
ones `riffusion-model-v1` was trained on: mono, 44.1 kHz, a 10 ms hop (one image column), a
100 ms Hann window zero-padded to a 400 ms FFT, 512 mel bins (one image row, low frequencies at
the bottom) from 0 to 10 kHz on the HTK mel scale without filter normalisation, and pixel values
`255 - 255 * (amplitude / max) ** 0.25` — the image is inverted: white is silence, black is the
loudest bin. A 512-column image is 5.12 s of audio.

Forward (`image_from_audio`): |STFT| (centred, reflect padding) → mel filterbank → image.
Inverse (`audio_from_image`): image → mel amplitudes → linear amplitudes by non-negative least
squares through the filterbank's pseudo-inverse (torchaudio's `InverseMelScale` solves the same
system with `torch.linalg.lstsq` and clamps at zero) → Griffin-Lim with momentum (torchaudio's
`griffinlim`, seeded here so a spectrogram always gives the same waveform).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

IMAGE_MAX_VALUE = 30e6  # the reference's scale for image amplitudes ("doesn't matter": the
#                         waveform is normalised afterwards)


@dataclass(frozen=True)
class SpectrogramParams:
    """The reference's `SpectrogramParams` defaults (riffusion-model-v1)."""

    sample_rate: int = 44_100
    step_size_ms: int = 10
    window_duration_ms: int = 100
    padded_duration_ms: int = 400
    num_frequencies: int = 512
    min_frequency: float = 0.0
    max_frequency: float = 10_000.0
    griffin_lim_iters: int = 32
    griffin_lim_momentum: float = 0.99
    power_for_image: float = 0.25

    @property
    def n_fft(self) -> int:
        return int(self.padded_duration_ms / 1000.0 * self.sample_rate)

    @property
    def win_length(self) -> int:
        return int(self.window_duration_ms / 1000.0 * self.sample_rate)

    @property
    def hop_length(self) -> int:
        return int(self.step_size_ms / 1000.0 * self.sample_rate)

    def samples_for(self, columns: int) -> int:
        """Samples of audio an image `columns` wide turns into (the centred inverse STFT)."""
        return self.hop_length * (columns - 1)


RIFFUSION = SpectrogramParams()


# --- mel filterbank ------------------------------------------------------------------------------

def _hz_to_mel_htk(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def _mel_to_hz_htk(mels: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)


def mel_filterbank(params: SpectrogramParams = RIFFUSION) -> torch.Tensor:
    """`(n_fft // 2 + 1, num_frequencies)` triangular filters, as
    `torchaudio.functional.melscale_fbanks(..., norm=None, mel_scale="htk")` computes them."""
    n_freqs = params.n_fft // 2 + 1
    all_freqs = torch.linspace(0, params.sample_rate // 2, n_freqs)
    m_pts = torch.linspace(_hz_to_mel_htk(params.min_frequency),
                           _hz_to_mel_htk(params.max_frequency), params.num_frequencies + 2)
    f_pts = _mel_to_hz_htk(m_pts)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)  # (n_freqs, n_mels + 2)
    down_slopes = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
    up_slopes = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.min(down_slopes, up_slopes), min=0.0)


@functools.lru_cache(maxsize=4)
def _inverse_filterbank(params: SpectrogramParams, device: str) -> torch.Tensor:
    """`(n_freqs, n_mels)` minimum-norm least-squares inverse of the filterbank (float64 SVD,
    computed once per device)."""
    fb = mel_filterbank(params).to(torch.float64)
    return torch.linalg.pinv(fb.T).to(device=device, dtype=torch.float32)


# --- audio → image -------------------------------------------------------------------------------

def _transforms(params: SpectrogramParams, device: torch.device | str):
    """`(stft, istft)` with the reference's settings (Hann window, centred, reflect padding):
    the forward and inverse paths share them, so a round trip is exact up to phase."""
    window = torch.hann_window(params.win_length, device=device)
    shape = {"n_fft": params.n_fft, "hop_length": params.hop_length,
             "win_length": params.win_length, "window": window}
    stft = functools.partial(torch.stft, **shape, center=True, pad_mode="reflect",
                             normalized=False, onesided=True, return_complex=True)
    return stft, functools.partial(torch.istft, **shape)


def mel_amplitudes(waveform: torch.Tensor, params: SpectrogramParams = RIFFUSION) -> torch.Tensor:
    """Mono `(samples,)` float waveform → `(num_frequencies, frames)` mel amplitudes."""
    stft, _ = _transforms(params, waveform.device)
    return mel_filterbank(params).to(waveform.device).T @ stft(waveform.float()).abs()


def image_from_mel(mel: torch.Tensor, params: SpectrogramParams = RIFFUSION) -> Image.Image:
    """Mel amplitudes → the reference's RGB image (inverted power curve, low bins at the
    bottom)."""
    peak = float(mel.max())
    scaled = (mel / peak).clamp(0, 1) ** params.power_for_image if peak > 0 else mel * 0
    pixels = (255 - scaled.cpu().numpy() * 255).astype(np.uint8)  # truncated, as the reference
    return Image.fromarray(pixels[::-1].copy(), mode="L").convert("RGB")


def image_from_audio(samples: np.ndarray, params: SpectrogramParams = RIFFUSION) -> Image.Image:
    """Mono samples at `params.sample_rate` → a spectrogram image one column per hop."""
    return image_from_mel(mel_amplitudes(torch.from_numpy(np.asarray(samples, np.float32)),
                                         params), params)


# --- image → audio -------------------------------------------------------------------------------

def mel_from_image(image: Image.Image, params: SpectrogramParams = RIFFUSION) -> torch.Tensor:
    """The image's red channel → `(num_frequencies, columns)` mel amplitudes (the reference's
    `spectrogram_from_image`, mono)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)[::-1, :, 0]
    if pixels.shape[0] != params.num_frequencies:
        raise ValueError(f"a spectrogram image is {params.num_frequencies} rows tall, "
                         f"not {pixels.shape[0]}")
    data = ((255.0 - pixels) / 255.0) ** (1.0 / params.power_for_image) * IMAGE_MAX_VALUE
    return torch.from_numpy(data.copy())


def linear_amplitudes(mel: torch.Tensor, params: SpectrogramParams = RIFFUSION) -> torch.Tensor:
    """`(n_mels, frames)` → `(n_fft // 2 + 1, frames)` non-negative linear amplitudes."""
    inverse = _inverse_filterbank(params, str(mel.device))
    return torch.relu(inverse @ mel.float())


def griffin_lim(amplitudes: torch.Tensor, params: SpectrogramParams = RIFFUSION,
                seed: int = 0) -> torch.Tensor:
    """A waveform whose |STFT| approximates `amplitudes` (torchaudio's `griffinlim`: power 1,
    random initial phases, fast Griffin-Lim momentum), `hop * (frames - 1)` samples long."""
    stft, istft = _transforms(params, amplitudes.device)
    momentum = params.griffin_lim_momentum / (1 + params.griffin_lim_momentum)
    generator = torch.Generator(device=amplitudes.device).manual_seed(seed)
    angles = torch.rand(amplitudes.shape, dtype=torch.complex64, device=amplitudes.device,
                        generator=generator)
    previous = torch.zeros((), dtype=torch.complex64, device=amplitudes.device)
    for _ in range(params.griffin_lim_iters):
        rebuilt = stft(istft(amplitudes * angles))
        angles = rebuilt - previous * momentum
        angles = angles / (angles.abs() + 1e-16)
        previous = rebuilt
    return istft(amplitudes * angles)


def audio_from_image(image: Image.Image, params: SpectrogramParams = RIFFUSION,
                     seed: int = 0, device: torch.device | str = "cpu") -> np.ndarray:
    """A spectrogram image → mono float32 samples at `params.sample_rate`, peak-normalised to 1
    (the reference normalises too); an all-white (silent) image gives zeros. The transforms run
    on `device`."""
    mel = mel_from_image(image, params).to(device)
    waveform = griffin_lim(linear_amplitudes(mel, params), params, seed).cpu().numpy()
    peak = float(np.abs(waveform).max()) if waveform.size else 0.0
    if not (peak > 0 and math.isfinite(peak)):
        return np.zeros_like(waveform, dtype=np.float32)
    return (waveform / peak).astype(np.float32)
