"""Voice-over for reels: the `voice` text's limits, and mixing the synthesized speech with the
music so the speech stays intelligible (the music is ducked while it plays).

The speech starts `VOICE_START_S` into the reel and must end `VOICE_TAIL_S` before its end (the
synthesizer is capped to that window). It is levelled to `SPEECH_RMS` (peaks at most
`SPEECH_PEAK`), resampled to the container's rate and put on both channels; the music is lowered
to `DUCK_GAIN` (about -12 dB) from `DUCK_RAMP_S` before the speech until `DUCK_RAMP_S` after it,
with linear ramps. No model here: the caller synthesizes.
"""

from __future__ import annotations

import numpy as np

from .errors import PipelineInputError

MAX_VOICE_CHARS = 400  # SpeechT5 reads at most 450 characters; leave room for normalisation
VOICE_CHARS_PER_SECOND = 15  # a calm narration pace (about 160 words a minute)
VOICE_START_S = 0.5
VOICE_TAIL_S = 0.5
DUCK_GAIN = 0.25
DUCK_RAMP_S = 0.3
SPEECH_RMS = 0.1
SPEECH_PEAK = 0.9


def voice_window_s(duration_s: int) -> float:
    """Seconds of speech a reel of `duration_s` can hold."""
    return max(0.0, duration_s - VOICE_START_S - VOICE_TAIL_S)


def check_voice(text: str | None, duration_s: int) -> None:
    """The voice-over text must be non-blank and fit the reel at a calm pace; errors name
    `voice`."""
    if text is None:
        return
    if not text.strip():
        raise PipelineInputError("voice", "must contain the words to speak")
    if len(text) > MAX_VOICE_CHARS:
        raise PipelineInputError("voice", f"at most {MAX_VOICE_CHARS} characters")
    budget = int(voice_window_s(duration_s) * VOICE_CHARS_PER_SECOND)
    if len(text.strip()) > budget:
        raise PipelineInputError("voice", f"too long for a {duration_s} s video: at most "
                                          f"{budget} characters (about "
                                          f"{VOICE_CHARS_PER_SECOND} per second)")


def resample(samples: np.ndarray, source_rate: int, rate: int) -> np.ndarray:
    """Mono float32 samples from `source_rate` to `rate` (PyAV's resampler)."""
    import av

    resampler = av.AudioResampler(format="fltp", layout="mono", rate=rate)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[None], np.float32),
                                       format="fltp", layout="mono")
    frame.sample_rate = source_rate
    chunks = [f.to_ndarray()[0] for f in resampler.resample(frame)]
    chunks += [f.to_ndarray()[0] for f in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def level_speech(samples: np.ndarray) -> np.ndarray:
    """Speech at `SPEECH_RMS`, its peaks at most `SPEECH_PEAK` (silence stays silent)."""
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0
    if rms < 1e-12:
        return np.zeros_like(samples)
    levelled = samples * (SPEECH_RMS / rms)
    peak = float(np.abs(levelled).max())
    return (levelled * min(1.0, SPEECH_PEAK / peak)).astype(np.float32)


def duck_envelope(length: int, start: int, end: int, rate: int) -> np.ndarray:
    """Music gain per sample: 1, ramping to `DUCK_GAIN` over `DUCK_RAMP_S` before `start`,
    held until `end`, ramping back after it."""
    t = np.arange(length, dtype=np.float32)
    ramp = max(1.0, DUCK_RAMP_S * rate)
    # 0 outside, 1 inside [start, end), linear in the ramps on either side.
    depth = np.clip(np.minimum((t - (start - ramp)) / ramp, ((end + ramp) - t) / ramp), 0, 1)
    return (1.0 - (1.0 - DUCK_GAIN) * depth).astype(np.float32)


def mix_voice_over(music: np.ndarray | None, speech: np.ndarray, speech_rate: int, rate: int,
                   duration_s: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The reel's stereo track `(2, duration_s * rate)`: the speech (mono, at `speech_rate`)
    over the ducked music (already fitted to the reel), or over silence without music. Also
    returns the speech's `(start, end)` sample span."""
    length = duration_s * rate
    voice = level_speech(resample(speech, speech_rate, rate))
    start = int(VOICE_START_S * rate)
    voice = voice[:max(0, length - start)]
    end = start + voice.size
    track = np.zeros((2, length), np.float32) if music is None else \
        music * duck_envelope(length, start, end, rate)
    track[:, start:end] += voice
    peak = float(np.abs(track).max()) if track.size else 0.0
    if peak > 1.0:
        track /= peak
    return track.astype(np.float32), (start, end)
