"""The reel pipeline: exact frame count and size, crossfades, camera moves, music only when
given, progress and cancel."""

from __future__ import annotations

import io
import wave

import av
import numpy as np
import pytest
from PIL import Image

from retouch.pipelines.common import RunContext
from retouch.pipelines.errors import Cancelled, PipelineInputError
from retouch.pipelines.reel import (ReelSpec, Timeline, camera_frame, camera_moves, frame_size,
                                    music_format, render_reel)

RED, BLUE = (230, 20, 20), (20, 20, 230)


def wav_bytes(seconds: float = 0.5, rate: int = 22_050) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    samples = (np.sin(2 * np.pi * 440 * t) * 12_000).astype(np.int16)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


def decode(data: bytes) -> tuple[list[np.ndarray], list]:
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        audio = [(s.codec_context.name, float(s.duration * s.time_base))
                 for s in container.streams.audio]
    return frames, audio


def test_frame_sizes_are_even_and_follow_the_aspect_ratio():
    assert frame_size("16:9", "240p") == (426, 240)
    assert frame_size("9:16", "360p") == (360, 640)
    assert frame_size("1:1", "720p") == (720, 720)
    with pytest.raises(PipelineInputError) as error:
        frame_size("7:3", "720p")
    assert error.value.field == "aspect_ratio"


def test_reel_has_exact_frames_size_and_a_crossfade_without_audio():
    pictures = [Image.new("RGB", (320, 200), RED), Image.new("RGB", (200, 300), BLUE)]
    reported: list[float] = []
    data = render_reel(pictures, ReelSpec(128, 72, 2), RunContext(seed=5,
                                                                   progress=reported.append))
    frames, audio = decode(data)
    assert len(frames) == 2 * 24 and frames[0].shape == (72, 128, 3)
    assert audio == []  # no music supplied: no audio stream
    first, last = frames[0].mean(axis=(0, 1)), frames[-1].mean(axis=(0, 1))
    assert first[0] > 200 and first[2] < 50 and last[2] > 200 and last[0] < 50
    # Around the cut both pictures are visible at once (the crossfade), never a hard switch.
    middle = [f.mean(axis=(0, 1)) for f in frames[20:28]]
    assert any(m[0] > 60 and m[2] > 60 for m in middle)
    reds = [f.mean(axis=(0, 1))[0] for f in frames]
    assert all(a >= b - 6 for a, b in zip(reds, reds[1:]))  # the fade moves one way
    assert reported == sorted(reported) and reported[-1] == 1.0


def test_music_is_looped_to_the_reel_and_muxed_as_aac():
    data = render_reel([Image.new("RGB", (64, 64), RED)], ReelSpec(128, 72, 2),
                       RunContext(seed=1), music=wav_bytes(0.5))
    frames, audio = decode(data)
    assert len(frames) == 48
    assert len(audio) == 1 and audio[0][0] == "aac" and abs(audio[0][1] - 2.0) < 0.1


def mp3_bytes(seconds: float = 0.5, rate: int = 44_100) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=rate, layout="mono")
        t = np.arange(int(seconds * rate)) / rate
        tone = (np.sin(2 * np.pi * 220 * t) * 0.3).astype(np.float32)
        for start in range(0, tone.size, 1152):
            frame = av.AudioFrame.from_ndarray(tone[None, start:start + 1152], format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def test_an_mp3_track_is_accepted_too():
    assert music_format(mp3_bytes()) == "mp3" and music_format(wav_bytes()) == "wav"
    data = render_reel([Image.new("RGB", (64, 64), BLUE)], ReelSpec(64, 36, 2),
                       RunContext(seed=2), music=mp3_bytes())
    frames, audio = decode(data)
    assert len(frames) == 48 and len(audio) == 1 and audio[0][0] == "aac"
    with pytest.raises(PipelineInputError) as error:
        music_format(image_png())
    assert error.value.field == "music_url"


def image_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), RED).save(buffer, format="PNG")
    return buffer.getvalue()


def test_camera_moves_pan_and_zoom_deterministically():
    gradient = np.tile(np.linspace(0, 255, 300, dtype=np.uint8)[None, :, None], (200, 1, 3))
    picture = Image.fromarray(gradient)
    moves = camera_moves(3, seed=9)
    assert moves == camera_moves(3, seed=9) and moves != camera_moves(3, seed=10)
    assert all(max(m.zoom_start, m.zoom_end) > 1.05 and min(m.zoom_start, m.zoom_end) == 1.0
               for m in moves)
    start = camera_frame(picture, moves[0], 0.0, (64, 36))
    end = camera_frame(picture, moves[0], 1.0, (64, 36))
    moved = np.abs(start.astype(np.float32) - end.astype(np.float32)).mean()
    assert start.shape == (36, 64, 3) and start.dtype == np.uint8 and moved > 1.0


def test_timeline_covers_every_frame_with_weights_summing_to_one():
    timeline = Timeline.build(3, 48, 12)
    for frame in range(48):
        layers = timeline.layers(frame)
        assert abs(sum(w for _, _, w in layers) - 1.0) < 1e-9
    assert timeline.layers(0)[0][0] == 0 and timeline.layers(47)[-1][0] == 2


def test_bad_inputs_name_the_field_and_cancel_stops_the_render():
    picture = Image.new("RGB", (64, 64), RED)
    for spec, field in ((ReelSpec(127, 72, 2), "width"), (ReelSpec(128, 72, 1), "duration"),
                        (ReelSpec(128, 72, 61), "duration")):
        with pytest.raises(PipelineInputError) as error:
            render_reel([picture], spec, RunContext(seed=0))
        assert error.value.field == field
    with pytest.raises(PipelineInputError) as error:
        render_reel([], ReelSpec(128, 72, 2), RunContext(seed=0))
    assert error.value.field == "picture_ids"
    with pytest.raises(PipelineInputError) as error:
        render_reel([picture], ReelSpec(128, 72, 2), RunContext(seed=0), music=b"not audio")
    assert error.value.field == "music_url"
    with pytest.raises(Cancelled):
        render_reel([picture], ReelSpec(128, 72, 2), RunContext(seed=0, is_cancelled=lambda: True))


def test_the_video_task_runs_a_stored_job_body():
    from retouch.serving.runner import TaskRunner
    from retouch.serving.tasks import parse_request

    png = io.BytesIO()
    Image.new("RGB", (40, 30), BLUE).save(png, format="PNG")
    body = {"tool": "video", "project_id": "prj_1",
            "input": {"pictures": [{"picture_id": "pic_1", "storage_key": "k"}],
                      "music_key": None},
            "options": {"width": 64, "height": 36, "duration": 2, "fps": 12,
                        "aspect_ratio": "16:9", "resolution": "360p"}}
    request = parse_request(body, surface=None)
    [data] = TaskRunner(store=None).run_job(request, {"input.pictures[0]": png.getvalue()}, 3,
                                            lambda _: None, lambda: False)
    frames, audio = decode(data)
    assert len(frames) == 24 and frames[0].shape == (36, 64, 3) and audio == []


def test_a_webm_reel_is_vp9_with_opus_music_and_the_same_frames():
    """`output_format="webm"`: an EBML (Matroska/WebM) file, VP9 video, Opus music at 48 kHz."""
    import io as _io
    import wave

    import av
    import numpy as _np
    from PIL import Image as _Image

    from retouch.pipelines.common import RunContext as _Ctx
    from retouch.pipelines.reel import ReelSpec as _Spec, render_reel as _render

    buffer = _io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(22050)
        tone = (_np.sin(_np.arange(22050) * 2 * _np.pi * 440 / 22050) * 8000).astype("<i2")
        out.writeframes(tone.tobytes())
    pictures = [_Image.new("RGB", (64, 48), (200, 30, 40)),
                _Image.new("RGB", (64, 48), (20, 130, 40))]
    data = _render(pictures, _Spec(64, 48, 2), _Ctx(seed=1), music=buffer.getvalue(),
                   output_format="webm")
    assert data[:4] == b"\x1a\x45\xdf\xa3"  # EBML magic
    with av.open(_io.BytesIO(data)) as container:
        assert "webm" in container.format.name
        assert container.streams.video[0].codec_context.name == "vp9"
        assert container.streams.audio[0].codec_context.name == "opus"
        assert container.streams.audio[0].codec_context.sample_rate == 48000
        assert sum(1 for _ in container.decode(video=0)) == 48
