"""Reel: a short MP4 from still pictures — a Ken Burns camera move over each picture, crossfades
between them, H.264 (yuv420p) at a fixed frame rate, optional music and voice-over.

`render_reel(pictures, spec, ctx, music=None, voice=None) -> bytes` returns the file. The frame
count is exactly `spec.duration_s * spec.fps`. Each picture's share of the timeline follows
`spec.holds` (scene pacing, `pipelines.scene_pacing`; equal when unset); neighbours overlap by
the transition, during which they are blended. A picture's camera move (zoom in or out, pan
direction) is drawn from `ctx.seed`, so the same seed renders the same reel.

Music — WAV or MP3 bytes (decoded), or samples composed from the `background_music` text by
`pipelines.music` when no track is given — is stereo at the container's audio rate, looped or
cut to the video's length, faded out over the last second and encoded. A voice-over (speech
synthesized from the video's `voice` text) is mixed over it with the music ducked while it plays
(`pipelines.voiceover`). Without music or voice the file has no audio stream. `output_format`
picks the container: `mp4` (H.264 yuv420p + AAC 44.1 kHz) or `webm` (VP9 yuv420p + Opus 48 kHz).
No HTTP, no database: the caller supplies decoded pictures, audio bytes and synthesized speech.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from PIL import Image

from .common import RunContext
from .errors import PipelineInputError
from .music import compose_music
from .voiceover import check_voice, mix_voice_over, voice_window_s

FPS = 24
MIN_DURATION_S, MAX_DURATION_S = 2, 60
MAX_PICTURES = 30
MAX_SIDE = 3840
TRANSITION_S = 0.5
ZOOM_RANGE = 0.15  # the camera zooms by up to 15 % across one picture
AUDIO_RATE = 44_100
AUDIO_FRAME_SAMPLES = 1024
FADE_OUT_S = 1.0
MAX_MUSIC_BYTES = 25 * 1024 * 1024
MUSIC_PROGRESS = 0.4  # share of a reel's progress bar for composing background music

# Short side in pixels per named video resolution; the long side follows the aspect ratio.
RESOLUTIONS: dict[str, int] = {"240p": 240, "360p": 360, "720p": 720, "1080p": 1080}
ASPECT_RATIOS: dict[str, tuple[int, int]] = {"16:9": (16, 9), "9:16": (9, 16), "1:1": (1, 1),
                                             "4:5": (4, 5), "4:3": (4, 3), "3:4": (3, 4)}


def frame_size(aspect_ratio: str, resolution: str) -> tuple[int, int]:
    """Even `(width, height)` for an aspect ratio (`16:9`) and a named resolution (`720p`)."""
    if aspect_ratio not in ASPECT_RATIOS:
        raise PipelineInputError("aspect_ratio", f"must be one of {', '.join(ASPECT_RATIOS)}")
    if resolution not in RESOLUTIONS:
        raise PipelineInputError("resolution", f"must be one of {', '.join(RESOLUTIONS)}")
    w, h = ASPECT_RATIOS[aspect_ratio]
    short = RESOLUTIONS[resolution]
    if w >= h:
        return _even(short * w / h), short
    return short, _even(short * h / w)


def _even(value: float) -> int:
    return max(2, int(round(value / 2)) * 2)


@dataclass(frozen=True)
class ReelSpec:
    width: int
    height: int
    duration_s: int
    fps: int = FPS
    transition_s: float = TRANSITION_S
    # Relative time on screen per picture (scene pacing, `pipelines.scene_pacing`); None: equal.
    holds: tuple[float, ...] | None = None

    @property
    def frame_count(self) -> int:
        return self.duration_s * self.fps


@dataclass(frozen=True)
class CameraMove:
    """Where the crop window starts and ends: zoom factors (≥ 1) and centres in [0, 1]."""

    zoom_start: float
    zoom_end: float
    centre_start: tuple[float, float]
    centre_end: tuple[float, float]


def check_inputs(pictures: list[Image.Image], spec: ReelSpec) -> None:
    """Validate a reel request; errors name the field."""
    if not pictures:
        raise PipelineInputError("picture_ids", "at least one picture is needed")
    if len(pictures) > MAX_PICTURES:
        raise PipelineInputError("picture_ids", f"at most {MAX_PICTURES} pictures fit in one reel")
    if not (isinstance(spec.duration_s, int) and MIN_DURATION_S <= spec.duration_s
            <= MAX_DURATION_S):
        raise PipelineInputError("duration", f"must be a whole number of seconds from "
                                       f"{MIN_DURATION_S} to {MAX_DURATION_S}")
    for name, value in (("width", spec.width), ("height", spec.height)):
        if value < 2 or value > MAX_SIDE or value % 2:
            raise PipelineInputError(name, f"must be an even number of pixels from 2 to {MAX_SIDE}")
    if not 1 <= spec.fps <= 60:
        raise PipelineInputError("fps", "must be from 1 to 60")
    if spec.holds is not None and (len(spec.holds) != len(pictures)
                                   or not all(0.2 <= h <= 5 for h in spec.holds)):
        raise PipelineInputError("holds", "one hold from 0.2 to 5 per picture")
    if spec.frame_count < len(pictures):
        raise PipelineInputError("duration",
                                 f"{spec.duration_s} s is too short for {len(pictures)} "
                                       "pictures")


def camera_moves(count: int, seed: int) -> list[CameraMove]:
    """One camera move per picture, drawn from `seed`; consecutive moves alternate in/out."""
    rng = random.Random(seed)
    moves = []
    for i in range(count):
        zoomed = 1.0 + ZOOM_RANGE * rng.uniform(0.6, 1.0)
        start = (rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65))
        end = (rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7))
        zoom_in = (i + rng.randrange(2)) % 2 == 0
        moves.append(CameraMove(1.0 if zoom_in else zoomed, zoomed if zoom_in else 1.0,
                                start, end))
    return moves


@dataclass(frozen=True)
class Timeline:
    """Picture segments on the frame axis: segment i covers `[starts[i], starts[i] + lengths[i])`;
    neighbours overlap by `overlap` frames (the crossfade)."""

    starts: tuple[float, ...]
    lengths: tuple[float, ...]
    overlap: float

    @property
    def count(self) -> int:
        return len(self.lengths)

    @classmethod
    def build(cls, count: int, frames: int, transition_frames: float,
              holds: tuple[float, ...] | None = None) -> "Timeline":
        """Segments whose lengths are proportional to `holds` (equal without), filling exactly
        `frames`: frames = sum(lengths) - (count-1)*overlap, the overlap at most half of the
        shortest segment."""
        weights = [float(h) for h in holds] if holds else [1.0] * count
        total, shortest = sum(weights), min(weights)
        overlap = 0.0 if count == 1 else min(
            transition_frames, shortest * frames / (2 * total - shortest * (count - 1)))
        span = frames + (count - 1) * overlap
        lengths = tuple(span * w / total for w in weights)
        starts, position = [], 0.0
        for length in lengths:
            starts.append(position)
            position += length - overlap
        return cls(starts=tuple(starts), lengths=lengths, overlap=overlap)

    def layers(self, frame: int) -> list[tuple[int, float, float]]:
        """`(picture index, position in its segment 0..1, blend weight)` for one frame."""
        centre = frame + 0.5
        found = []
        for i, (start, length) in enumerate(zip(self.starts, self.lengths)):
            if start <= centre < start + length or (i == self.count - 1 and centre >= start):
                found.append((i, min(1.0, (centre - start) / length)))
        if len(found) == 1 or self.overlap <= 0:
            index, position = found[-1]
            return [(index, position, 1.0)]
        (a, pos_a), (b, pos_b) = found[0], found[-1]
        weight_b = min(1.0, max(0.0, (centre - self.starts[b]) / self.overlap))
        return [(a, pos_a, 1.0 - weight_b), (b, pos_b, weight_b)]

    def seconds(self, fps: int) -> list[float]:
        """How long each picture is on screen, crossfades counted half to each side."""
        return [(length - self.overlap * ((i > 0) + (i < self.count - 1)) / 2) / fps
                for i, length in enumerate(self.lengths)]


def _ease(t: float) -> float:
    return 0.5 - 0.5 * math.cos(math.pi * min(1.0, max(0.0, t)))


def _cover_box(size: tuple[int, int], aspect: float) -> tuple[float, float]:
    """The largest (width, height) of the target aspect that fits inside the picture."""
    width, height = size
    if width / height > aspect:
        return height * aspect, float(height)
    return float(width), width / aspect


def _prepare(picture: Image.Image, spec: ReelSpec) -> Image.Image:
    """RGB, scaled down so the widest crop maps about 1:1 onto the output at the closest zoom
    (no upsampling, and cheap per-frame resizes)."""
    picture = picture.convert("RGB")
    crop_w, _ = _cover_box(picture.size, spec.width / spec.height)
    limit = spec.width * (1.0 + ZOOM_RANGE)
    if crop_w > limit:
        scale = limit / crop_w
        picture = picture.resize((max(1, round(picture.width * scale)),
                                  max(1, round(picture.height * scale))), Image.Resampling.LANCZOS)
    return picture


def camera_frame(picture: Image.Image, move: CameraMove, position: float,
                 size: tuple[int, int]) -> np.ndarray:
    """The picture seen by the camera at `position` (0..1) of its move, as a uint8 RGB array."""
    t = _ease(position)
    zoom = move.zoom_start + (move.zoom_end - move.zoom_start) * t
    cx = move.centre_start[0] + (move.centre_end[0] - move.centre_start[0]) * t
    cy = move.centre_start[1] + (move.centre_end[1] - move.centre_start[1]) * t
    base_w, base_h = _cover_box(picture.size, size[0] / size[1])
    crop_w, crop_h = base_w / zoom, base_h / zoom
    # The centre moves only as far as the crop window stays inside the picture.
    left = (picture.width - crop_w) * cx
    top = (picture.height - crop_h) * cy
    frame = picture.resize(size, Image.Resampling.BILINEAR,
                           box=(left, top, left + crop_w, top + crop_h))
    return np.asarray(frame)


def render_frames(pictures: list[Image.Image], spec: ReelSpec, ctx: RunContext,
                  progress_end: float = 0.9, progress_start: float = 0.0):
    """Yield the reel's frames as uint8 RGB arrays (H×W×3), reporting progress from
    `progress_start` up to `progress_end` and stopping with `Cancelled` when asked."""
    prepared = [_prepare(p, spec) for p in pictures]
    moves = camera_moves(len(prepared), ctx.seed)
    timeline = Timeline.build(len(prepared), spec.frame_count, spec.transition_s * spec.fps,
                              spec.holds)
    size = (spec.width, spec.height)
    for n in range(spec.frame_count):
        if n % 4 == 0:
            ctx.check_cancelled()
        layers = [layer for layer in timeline.layers(n) if layer[2] > 0]
        if len(layers) == 1:  # one picture on screen: no blending
            index, position, _ = layers[0]
            yield camera_frame(prepared[index], moves[index], position, size)
        else:
            frame = np.zeros((spec.height, spec.width, 3), dtype=np.float32)
            for index, position, weight in layers:
                frame += weight * camera_frame(prepared[index], moves[index], position, size)
            yield np.clip(np.rint(frame), 0, 255).astype(np.uint8)
        ctx.report(progress_start + (progress_end - progress_start) * (n + 1) / spec.frame_count)


def music_format(data: bytes, field: str = "music_url") -> str:
    """`wav` or `mp3` (the container PyAV finds), else `PipelineInputError(field)`."""
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            name = container.format.name.split(",")[0]
    except (av.error.FFmpegError, ValueError):
        name = None
    if name not in ("wav", "mp3"):
        raise PipelineInputError(field, "must be a WAV or MP3 audio file")
    return name


@dataclass(frozen=True)
class Container:
    """How one output format is encoded."""

    video_codec: str
    video_options: dict
    audio_codec: str
    audio_rate: int


CONTAINERS: dict[str, Container] = {
    "mp4": Container("libx264", {"preset": "veryfast", "crf": "20"}, "aac", AUDIO_RATE),
    # Realtime VP9 keeps CPU encoding about as fast as x264 veryfast; Opus only runs at 48 kHz.
    "webm": Container("libvpx-vp9", {"deadline": "realtime", "cpu-used": "8", "crf": "32",
                                     "b": "0", "row-mt": "1"}, "libopus", 48_000),
}


def decode_music(data: bytes, field: str = "music_url", rate: int = AUDIO_RATE) -> np.ndarray:
    """WAV/MP3 bytes → float32 stereo samples `(2, n)` at `rate` Hz; `PipelineInputError`
    otherwise."""
    import av

    if len(data) > MAX_MUSIC_BYTES:
        raise PipelineInputError(field, f"the music file is larger than {MAX_MUSIC_BYTES} bytes")
    chunks = []
    try:
        music_format(data, field)
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise PipelineInputError(field, "the file has no audio track")
            resampler = av.AudioResampler(format="fltp", layout="stereo", rate=rate)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
    except PipelineInputError:
        raise
    except (av.error.FFmpegError, ValueError) as exc:
        raise PipelineInputError(field, f"must be a WAV or MP3 audio file ({type(exc).__name__})") \
            from None
    samples = np.concatenate(chunks, axis=1) if chunks else np.zeros((2, 0), np.float32)
    if samples.shape[1] == 0:
        raise PipelineInputError(field, "the audio track is empty")
    return samples.astype(np.float32)


def fit_music(samples: np.ndarray, duration_s: int, rate: int = AUDIO_RATE) -> np.ndarray:
    """Loop or cut `samples` to exactly `duration_s` and fade out over the last second."""
    needed = duration_s * rate
    repeats = -(-needed // samples.shape[1])
    track = np.tile(samples, (1, repeats))[:, :needed].copy()
    fade = min(needed, int(FADE_OUT_S * rate))
    track[:, needed - fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return track


def render_reel(pictures: list[Image.Image], spec: ReelSpec, ctx: RunContext,
                music: bytes | np.ndarray | None = None, output_format: str = "mp4",
                voice: tuple[np.ndarray, int] | None = None,
                progress_start: float = 0.0) -> bytes:
    """The reel's file bytes (`mp4` or `webm`), with an audio track when `music` (WAV/MP3 bytes,
    or stereo float32 samples `(2, n)` at the container's audio rate) or `voice` (synthesized
    speech: mono samples and their rate) is given; the music is ducked under the voice
    (`pipelines.voiceover`). Progress runs from `progress_start` (work done before) to 1."""
    import av

    check_inputs(pictures, spec)
    kind = container_for(output_format)
    if isinstance(music, np.ndarray):
        track = fit_music(music, spec.duration_s, kind.audio_rate)
    elif music is not None:
        track = fit_music(decode_music(music, rate=kind.audio_rate), spec.duration_s,
                          kind.audio_rate)
    else:
        track = None
    if voice is not None:
        track, _ = mix_voice_over(track, voice[0], voice[1], kind.audio_rate, spec.duration_s)
    ctx.report(progress_start)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=output_format) as container:
        video = container.add_stream(kind.video_codec, rate=spec.fps)
        video.width, video.height, video.pix_fmt = spec.width, spec.height, "yuv420p"
        video.codec_context.time_base = Fraction(1, spec.fps)
        video.options = dict(kind.video_options)
        audio = None
        if track is not None:
            audio = container.add_stream(kind.audio_codec, rate=kind.audio_rate,
                                         layout="stereo")
        for n, pixels in enumerate(render_frames(pictures, spec, ctx,
                                                 progress_start=progress_start)):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = n  # in 1/fps units: frame n is shown at n/fps seconds
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio is not None:
            _encode_audio(container, audio, track)
    ctx.report(1.0)
    return buffer.getvalue()


def container_for(output_format: str) -> Container:
    """How `output_format` is encoded, else `PipelineInputError("output_format")`."""
    if output_format not in CONTAINERS:
        raise PipelineInputError("output_format", f"must be one of {', '.join(CONTAINERS)}")
    return CONTAINERS[output_format]


def _encode_audio(container, stream, track: np.ndarray) -> None:
    import av

    rate = stream.codec_context.sample_rate
    for start in range(0, track.shape[1], AUDIO_FRAME_SAMPLES):
        chunk = np.ascontiguousarray(track[:, start:start + AUDIO_FRAME_SAMPLES])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
        frame.sample_rate = rate
        frame.pts = start
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def reel(store, request, inputs: dict, ctx: RunContext) -> list[bytes]:
    """The `video` task: `inputs` holds the decoded `input.pictures[i]` and optionally the
    `input.music` bytes; returns `[file bytes]` in `options.output_format`. A `direction.voice`
    text is spoken by the store's text-to-speech model (`store.speech()`); without `input.music`
    a `direction.background_music` text is composed by its music model (`pipelines.music`,
    the first `MUSIC_PROGRESS` of the bar). Without either text no model is used."""
    options = request.options
    pictures = [inputs[f"input.pictures[{n}]"] for n in range(len(request.input.pictures))]
    holds = tuple(p.hold for p in request.input.pictures)
    spec = ReelSpec(width=options.width, height=options.height, duration_s=options.duration,
                    fps=options.fps, holds=None if all(h == 1.0 for h in holds) else holds)
    text = request.direction.voice
    voice = None
    if text is not None:
        check_voice(text, options.duration)
        speech = store.speech()
        samples = speech(text.strip(), seed=ctx.seed, max_seconds=voice_window_s(options.duration))
        voice = (samples, speech.sampling_rate)
    music = inputs.get("input.music")  # the user's own track wins over a music direction
    progress_start = 0.0
    direction = (request.direction.background_music or "").strip()
    if music is None and direction:
        check_inputs(pictures, spec)  # fail fast, before minutes of composing
        music = compose_music(store, direction, options.duration, ctx.seed, ctx,
                              rate=container_for(options.output_format).audio_rate,
                              span=(0.0, MUSIC_PROGRESS))
        progress_start = MUSIC_PROGRESS
    return [render_reel(pictures, spec, ctx, music=music, output_format=options.output_format,
                        voice=voice, progress_start=progress_start)]
