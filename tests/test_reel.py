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


def run_video_job(store, music: bytes | None = None, **body) -> bytes:
    """A stored `video` job body of one blue picture (2 s, 64×36, 12 fps; `body` adds to it)
    run by a `TaskRunner` on `store`, with `music` as its stored music track; the file's
    bytes."""
    from retouch.serving.runner import TaskRunner
    from retouch.serving.tasks import parse_request

    png = io.BytesIO()
    Image.new("RGB", (40, 30), BLUE).save(png, format="PNG")
    request = parse_request({
        "tool": "video", "project_id": "prj_1",
        "input": {"pictures": [{"picture_id": "pic_1", "storage_key": "k"}],
                  "music_key": "m" if music else None},
        "options": {"width": 64, "height": 36, "duration": 2, "fps": 12, "aspect_ratio": "16:9",
                    "resolution": "360p"}, **body}, surface=None)
    inputs = {"input.pictures[0]": png.getvalue(), **({"input.music": music} if music else {})}
    [data] = TaskRunner(store=store).run_job(request, inputs, 3, lambda _: None, lambda: False)
    return data


def test_the_video_task_runs_a_stored_job_body():
    data = run_video_job(None)
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


# --- voice-over ---------------------------------------------------------------------------------

def decoded_audio(data: bytes) -> tuple[np.ndarray, int, float]:
    """(mono float samples, rate, decoded seconds) of a reel's audio track."""
    with av.open(io.BytesIO(data)) as container:
        rate = container.streams.audio[0].codec_context.sample_rate
        samples = np.concatenate([f.to_ndarray().mean(axis=0) for f in container.decode(audio=0)])
    return samples, rate, samples.size / rate


def tone_level(samples: np.ndarray, rate: int, hz: float, start_s: float, end_s: float) -> float:
    """Amplitude of the `hz` sine in [start_s, end_s) (a lock-in: speech at other frequencies
    averages out)."""
    a, b = int(start_s * rate), int(end_s * rate)
    t = np.arange(a, b) / rate
    window = samples[a:b]
    return 2 * abs(np.mean(window * np.exp(-2j * np.pi * hz * t)))


def chirp_speech(seconds: float = 1.0, rate: int = 16_000) -> np.ndarray:
    """Speech stand-in: a 1-3 kHz sweep, far from the 440 Hz music."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * (1000 + 1000 * t / seconds) * t)).astype(np.float32)


def test_voice_over_ducks_the_music_while_it_speaks():
    from retouch.pipelines.voiceover import DUCK_GAIN, DUCK_RAMP_S, VOICE_START_S

    picture = [Image.new("RGB", (64, 64), RED)]
    music = wav_bytes(0.5)  # 440 Hz, looped to 4 s
    plain = render_reel(picture, ReelSpec(64, 36, 4), RunContext(seed=1), music=music)
    voiced = render_reel(picture, ReelSpec(64, 36, 4), RunContext(seed=1), music=music,
                         voice=(chirp_speech(1.0), 16_000))
    (without, rate, _), (with_voice, _, seconds) = decoded_audio(plain), decoded_audio(voiced)
    speech_end = VOICE_START_S + 1.0
    assert seconds >= speech_end and abs(seconds - 4.0) < 0.1  # the track covers the speech
    under = (VOICE_START_S + DUCK_RAMP_S, speech_end - 0.05)
    ratio = tone_level(with_voice, rate, 440, *under) / tone_level(without, rate, 440, *under)
    assert abs(ratio - DUCK_GAIN) < 0.08  # the music is about 12 dB quieter under the speech
    after = (speech_end + DUCK_RAMP_S + 0.1, 2.9)  # back to full level before the fade-out
    restored = tone_level(with_voice, rate, 440, *after) / tone_level(without, rate, 440, *after)
    assert abs(restored - 1.0) < 0.1
    # The speech itself is there: energy at 1-3 kHz only in the voiced reel.
    a, b = int(under[0] * rate), int(under[1] * rate)
    assert np.sqrt(np.mean(with_voice[a:b] ** 2)) > 2 * np.sqrt(np.mean(without[a:b] ** 2)) * \
        DUCK_GAIN


def test_a_voice_without_music_gets_an_audio_track_of_the_reels_length():
    from retouch.pipelines.voiceover import VOICE_START_S

    data = render_reel([Image.new("RGB", (64, 64), BLUE)], ReelSpec(64, 36, 3),
                       RunContext(seed=2), output_format="webm",
                       voice=(chirp_speech(0.8), 16_000))
    samples, rate, seconds = decoded_audio(data)
    assert abs(seconds - 3.0) < 0.1
    rms = lambda a, b: float(np.sqrt(np.mean(samples[int(a * rate):int(b * rate)] ** 2)))  # noqa
    assert rms(0.0, VOICE_START_S - 0.1) < 1e-3 < 0.05 < rms(VOICE_START_S, VOICE_START_S + 0.8)
    assert rms(VOICE_START_S + 1.0, 3.0) < 1e-3


def test_voice_text_is_checked_against_the_reel_length():
    from retouch.pipelines.voiceover import MAX_VOICE_CHARS, check_voice

    check_voice(None, 2)
    check_voice("Welcome home.", 2)  # 13 characters fit one second of speech
    for text, duration in (("", 10), ("   ", 10), ("x" * 16, 2),
                           ("x" * (MAX_VOICE_CHARS + 1), 60)):
        with pytest.raises(PipelineInputError) as error:
            check_voice(text, duration)
        assert error.value.field == "voice"


def test_the_tiny_speech_model_is_seeded_and_capped(tiny_store):
    speech = tiny_store.speech()
    first = speech("Welcome to a bright flat.", seed=1, max_seconds=0.8)
    assert speech.sampling_rate == 16_000 and 0 < first.size <= 0.8 * 16_000
    assert np.array_equal(first, speech("Welcome to a bright flat.", seed=1, max_seconds=0.8))
    assert not np.array_equal(first, speech("Welcome to a bright flat.", seed=2, max_seconds=0.8))
    assert float(np.abs(first).max()) > 0
    assert set(tiny_store.revisions()) >= {"speech", "vocoder", "speaker"}


def test_the_video_task_speaks_the_voice_with_the_store(tiny_store):
    data = run_video_job(tiny_store, direction={"voice": "Welcome home."})
    samples, rate, seconds = decoded_audio(data)
    assert abs(seconds - 2.0) < 0.1 and float(np.abs(samples).max()) > 0.01


# --- background music ---------------------------------------------------------------------------

def test_background_music_text_is_composed_into_the_reel(tiny_store):
    data = run_video_job(tiny_store, direction={"background_music": "soft piano"})
    samples, rate, seconds = decoded_audio(data)
    assert rate == 44_100 and abs(seconds - 2.0) < 0.1
    assert float(np.sqrt(np.mean(samples[:rate] ** 2))) > 0.01  # the first second (before the fade)
    webm = run_video_job(tiny_store, direction={"background_music": "soft piano"},
                         options={"width": 64, "height": 36, "duration": 2, "fps": 12,
                                  "aspect_ratio": "16:9", "resolution": "360p",
                                  "output_format": "webm"})
    with av.open(io.BytesIO(webm)) as container:
        assert [s.codec_context.name for s in container.streams.audio] == ["opus"]


def test_the_users_music_track_wins_over_the_music_direction(tiny_store, monkeypatch):
    def no_music_model():
        raise AssertionError("the music model was called although a track was given")

    monkeypatch.setattr(tiny_store, "music", no_music_model)
    data = run_video_job(tiny_store, music=wav_bytes(),
                         direction={"background_music": "soft piano"})
    samples, rate, _ = decoded_audio(data)
    assert tone_level(samples, rate, 440, 0.2, 0.9) > 0.2  # the user's 440 Hz tone


def test_a_blank_music_direction_adds_no_audio(tiny_store, monkeypatch):
    monkeypatch.setattr(tiny_store, "music", lambda: pytest.fail("no music was asked for"))
    frames, audio = decode(run_video_job(tiny_store, direction={"background_music": "  "}))
    assert len(frames) == 24 and audio == []


# --- scene pacing --------------------------------------------------------------------------------

def test_holds_pace_the_timeline():
    timeline = Timeline.build(3, 96, 12, holds=(1.5, 1.0, 0.6))
    seconds = timeline.seconds(24)
    assert abs(sum(seconds) - 4.0) < 1e-9
    assert seconds[0] > seconds[1] > seconds[2]
    assert abs(timeline.lengths[0] / timeline.lengths[2] - 1.5 / 0.6) < 1e-9
    for frame in range(96):
        assert abs(sum(w for _, _, w in timeline.layers(frame)) - 1.0) < 1e-9
    equal = Timeline.build(3, 96, 12)
    assert equal.lengths[0] == equal.lengths[2]
    with pytest.raises(PipelineInputError) as error:
        render_reel([Image.new("RGB", (8, 8), RED)], ReelSpec(16, 16, 2, holds=(1.0, 2.0)),
                    RunContext(seed=0))
    assert error.value.field == "holds"


def test_scene_context_plans_a_property_tour():
    from retouch.pipelines.scene_pacing import FEATURED_HOLD, STEPS, PictureScene, plan_tour

    scenes = [PictureScene("interior", "bedroom"), PictureScene("interior", "other"),
              PictureScene("interior", "kitchen"), PictureScene("exterior", None),
              PictureScene("interior", "living_room"), PictureScene("exterior", "terrace")]
    plan = plan_tour(scenes, "Renovated kitchen, sunny patio")
    assert [i for i, _ in plan] == [3, 2, 4, 0, 5, 1]  # exterior, living spaces, rooms, outdoor
    holds = dict(plan)
    assert holds[3] > holds[4] > holds[0] > holds[1]  # establishing longest, details shortest
    assert holds[2] == round(STEPS["kitchen"].hold * FEATURED_HOLD, 3)  # named: a selling point
    assert holds[5] == round(STEPS["terrace"].hold * FEATURED_HOLD, 3)  # "patio" names it
    assert plan == plan_tour(scenes, "Renovated kitchen, sunny patio")
    assert dict(plan_tour(scenes, "Quiet street"))[2] == STEPS["kitchen"].hold
