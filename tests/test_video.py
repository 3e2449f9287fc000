"""Tests for sdbatch.io.video (streaming video I/O on the bundled ffmpeg)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sdbatch.io import ffmpeg, probe
from sdbatch.io.video import (
    VideoError,
    VideoInfo,
    VideoWriter,
    encode_video,
    iter_frames,
    make_test_clip,
    probe_video,
    probe_video_cached,
    select_frames,
    write_video,
)

psutil = pytest.importorskip("psutil")


# --------------------------------------------------------------------------
# fixtures / helpers


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    return {
        "sound": make_test_clip(d / "walk.mp4", frames=24, fps=12, size=(64, 48), audio=True),
        "silent": make_test_clip(d / "silent.mp4", frames=24, fps=12, size=(64, 48), audio=False),
        "gif": make_test_clip(d / "anim.gif", frames=24, fps=10, size=(64, 48)),
        "webm": make_test_clip(d / "clip.webm", frames=12, fps=12, size=(32, 32), audio=True),
        "long": make_test_clip(d / "long.mp4", frames=300, fps=24, size=(32, 32), audio=False),
    }


@pytest.fixture(scope="module")
def full_decode(clips) -> list[np.ndarray]:
    return [f for _, f in iter_frames(clips["sound"])]


def _audio_seconds(path: Path) -> float:
    """Length of the first audio stream of ``path`` (from its packets)."""
    res = subprocess.run(
        [ffmpeg.ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-nostats",
         "-progress", "pipe:1", "-i", str(path), "-map", "0:a:0", "-c", "copy", "-f", "null", "-"],
        capture_output=True, text=True, check=True,
    )
    us = [int(line.split("=", 1)[1]) for line in res.stdout.splitlines()
          if line.startswith("out_time_us=") and line.split("=", 1)[1].strip().isdigit()]
    return us[-1] / 1e6


def _ffmpeg_children() -> list:
    out = []
    for c in psutil.Process().children(recursive=True):
        try:
            if "ffmpeg" in c.name():
                out.append(c)
        except psutil.NoSuchProcess:
            pass
    return out


def _wait_no_ffmpeg(timeout: float = 3.0) -> list:
    deadline = time.monotonic() + timeout
    while True:
        left = _ffmpeg_children()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


def _write_pngs(frames, folder: Path) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, f in enumerate(frames):
        p = folder / f"{i:05d}.png"
        Image.fromarray(f).save(p)
        paths.append(p)
    return paths


# --------------------------------------------------------------------------
# import


def test_import_is_light():
    code = (
        "import sys, sdbatch.io.video; "
        "bad = [m for m in ('torch', 'imageio_ffmpeg', 'cv2', 'numpy') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=Path(__file__).resolve().parents[1])


# --------------------------------------------------------------------------
# probe


def test_probe_with_audio(clips):
    info = probe_video(clips["sound"])
    assert isinstance(info, VideoInfo)
    assert (info.width, info.height) == (64, 48)
    assert info.frames == 24
    assert info.fps == pytest.approx(12.0)
    assert info.duration == pytest.approx(2.0)
    assert info.has_audio is True
    assert info.path == Path(clips["sound"])


def test_probe_without_audio(clips):
    info = probe_video(clips["silent"])
    assert info.frames == 24 and info.has_audio is False


def test_probe_gif_and_webm(clips):
    g = probe_video(clips["gif"])
    assert (g.width, g.height, g.frames, g.has_audio) == (64, 48, 24, False)
    assert g.fps == pytest.approx(10.0)
    w = probe_video(clips["webm"])
    assert (w.width, w.height, w.frames, w.has_audio) == (32, 32, 12, True)
    assert w.fps == pytest.approx(12.0)


def test_probe_frame_count_is_what_iter_frames_yields(clips):
    for key in ("long", "gif", "webm"):
        info = probe_video(clips[key])
        assert sum(1 for _ in iter_frames(clips[key])) == info.frames


@pytest.mark.parametrize(
    "kind, content",
    [
        ("missing", None),
        ("random", os.urandom(4096)),
        ("text", b"this is not a video\n" * 20),
        ("empty", b""),
    ],
)
def test_probe_errors_name_the_file(tmp_path, kind, content):
    p = tmp_path / f"{kind}.mp4"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(VideoError) as ei:
        probe_video(p)
    msg = str(ei.value)
    assert str(p) in msg and "\n" not in msg
    if kind == "missing":
        assert "no such file" in msg
    else:
        assert "not a readable video" in msg
    # the decoder reports the same kind of error
    with pytest.raises(VideoError) as ei2:
        list(iter_frames(p))
    assert str(p) in str(ei2.value) and "\n" not in str(ei2.value)


def test_probe_relative_path_in_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "clips").mkdir()
    Path("clips/x.mp4").write_bytes(os.urandom(1000))
    with pytest.raises(VideoError, match=r"^clips/x\.mp4: not a readable video \(ffmpeg: .+\)$"):
        probe_video("clips/x.mp4")
    with pytest.raises(VideoError, match=r"^clips/nope\.mp4: no such file$"):
        probe_video("clips/nope.mp4")


def test_rotated_clip_reports_decoded_size(tmp_path, clips, capfd):
    rot = tmp_path / "phone.mp4"
    res = subprocess.run([ffmpeg.ffmpeg_exe(), "-nostdin", "-loglevel", "error",
                          "-display_rotation", "90", "-i", str(clips["silent"]), "-c", "copy", str(rot)], check=False)
    if res.returncode != 0:
        pytest.skip("this ffmpeg cannot write display rotation")
    info = probe_video(rot)
    assert (info.width, info.height, info.frames) == (48, 64, 24)
    (i, frame), = iter_frames(rot, [3])
    assert i == 3 and frame.shape == (64, 48, 3)
    assert "frame size" not in capfd.readouterr().err


def test_probe_audio_only_and_directory(tmp_path):
    a = tmp_path / "voice.m4a"
    subprocess.run([ffmpeg.ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-f", "lavfi",
                    "-i", "sine=duration=0.5", "-c:a", "aac", str(a)], check=True)
    with pytest.raises(VideoError, match="voice.m4a: not a video file"):
        probe_video(a)
    with pytest.raises(VideoError, match="is a directory"):
        probe_video(tmp_path)


# --------------------------------------------------------------------------
# select_frames


def _info(frames=24) -> VideoInfo:
    return VideoInfo(Path("clips/walk.mp4"), 64, 48, 12.0, frames, frames / 12.0, False)


def test_select_frames_every_nth(clips):
    info = probe_video(clips["sound"])
    kept = select_frames(info, every_nth=2)
    assert kept == list(range(0, 24, 2)) and len(kept) == 12


def test_select_frames_end_is_exclusive():
    assert select_frames(_info()) == list(range(24))
    assert select_frames(_info(), 0, 10) == list(range(10))
    assert select_frames(_info(), 5, 24, 3) == [5, 8, 11, 14, 17, 20, 23]
    assert select_frames(_info(), 23) == [23]


@pytest.mark.parametrize(
    "args",
    [(5, 5), (10, 3), (24, None), (0, 25), (-1, None), (0, -2)],
)
def test_select_frames_empty_or_out_of_range(args):
    with pytest.raises(VideoError) as ei:
        select_frames(_info(), *args)
    assert str(ei.value).startswith("clips/walk.mp4: ")
    if args[0] >= 0 and (args[1] is None or args[1] >= 0):
        assert "range selects no frames" in str(ei.value)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_select_frames_bad_step(bad):
    with pytest.raises(VideoError):
        select_frames(_info(), every_nth=bad)


# --------------------------------------------------------------------------
# iter_frames


def test_iter_frames_full_decode(clips, full_decode):
    assert len(full_decode) == 24
    f = full_decode[0]
    assert f.shape == (48, 64, 3) and f.dtype == np.uint8 and f.flags.writeable
    # testsrc2 moves: consecutive frames differ
    assert not np.array_equal(full_decode[0], full_decode[1])


@pytest.mark.parametrize(
    "indices",
    [
        list(range(0, 24, 2)),  # every 2nd
        list(range(5, 17, 3)),  # start offset + step
        [23],  # last only
        [0],
        [3, 5, 6, 20],  # irregular
        [20, 3, 3, 5],  # unsorted + duplicate -> sorted, unique
    ],
)
def test_iter_frames_yields_exactly_selected(clips, full_decode, indices):
    got = list(iter_frames(clips["sound"], indices))
    assert [i for i, _ in got] == sorted(set(indices))
    for i, frame in got:
        assert np.array_equal(frame, full_decode[i]), f"frame {i} differs from full decode"


def test_iter_frames_with_select_frames(clips, full_decode):
    info = probe_video(clips["sound"])
    kept = select_frames(info, 1, 20, 4)
    got = list(iter_frames(clips["sound"], kept))
    assert [i for i, _ in got] == kept == [1, 5, 9, 13, 17]
    assert all(np.array_equal(f, full_decode[i]) for i, f in got)


def test_iter_frames_resize(clips, full_decode):
    got = list(iter_frames(clips["sound"], [0, 7], size=(32, 24)))
    assert [i for i, _ in got] == [0, 7]
    for i, f in got:
        assert f.shape == (24, 32, 3) and f.dtype == np.uint8
        ref = full_decode[i].reshape(24, 2, 32, 2, 3).mean(axis=(1, 3))
        assert np.abs(f.astype(float) - ref).mean() < 3.0
    big = next(iter(iter_frames(clips["sound"], [0], size=(128, 96))))[1]
    assert big.shape == (96, 128, 3)


def test_iter_frames_gif(clips):
    got = list(iter_frames(clips["gif"], select_frames(probe_video(clips["gif"]), every_nth=5)))
    assert [i for i, _ in got] == [0, 5, 10, 15, 20]
    assert all(f.shape == (48, 64, 3) for _, f in got)


def test_iter_frames_index_past_end(clips):
    with pytest.raises(VideoError, match="frame 24 requested"):
        list(iter_frames(clips["sound"], [22, 23, 24]))
    with pytest.raises(VideoError, match="negative"):
        iter_frames(clips["sound"], [-1, 2])
    with pytest.raises(VideoError, match="no such file"):
        iter_frames(Path("nope/missing.mp4"))  # validated at call time
    assert list(iter_frames(clips["sound"], [])) == []


def test_iter_frames_early_close_stops_ffmpeg(clips):
    assert _wait_no_ffmpeg() == []
    gen = iter_frames(clips["long"])
    idx, _frame = next(gen)
    assert idx == 0
    assert len(_ffmpeg_children()) == 1
    t0 = time.monotonic()
    gen.close()
    assert time.monotonic() - t0 < 1.0
    # no live ffmpeg and no zombie left behind
    assert _wait_no_ffmpeg() == []

    def consume_some():
        for i, _ in iter_frames(clips["long"], range(10, 300, 2)):
            if i >= 20:
                break  # generator is dropped -> closed by refcounting

    consume_some()
    assert _wait_no_ffmpeg() == []

    # an exception in the consumer also stops ffmpeg
    with pytest.raises(KeyError):
        for _ in iter_frames(clips["long"]):
            raise KeyError("boom")
    assert _wait_no_ffmpeg() == []


def test_iter_frames_memory_does_not_grow_with_length(tmp_path):
    short = make_test_clip(tmp_path / "short.mp4", frames=50, fps=24, size=(32, 32), audio=False)
    long = make_test_clip(tmp_path / "long2000.mp4", frames=2000, fps=24, size=(32, 32), audio=False)
    proc = psutil.Process()

    def peak_growth(path, indices=None):
        base = proc.memory_info().rss
        peak = base
        n = 0
        for n, (_, _frame) in enumerate(iter_frames(path, indices), 1):
            if n % 20 == 0:
                peak = max(peak, proc.memory_info().rss)
        peak = max(peak, proc.memory_info().rss)
        return n, peak - base

    peak_growth(short)  # warm-up: first-use imports and buffers
    n_short, g_short = peak_growth(short)
    n_long, g_long = peak_growth(long)
    n_sel, g_sel = peak_growth(long, range(0, 2000, 3))
    assert (n_short, n_long, n_sel) == (50, 2000, 667)
    assert g_long - g_short < 20 * 2**20, (g_short, g_long)
    assert g_sel - g_short < 20 * 2**20, (g_short, g_sel)


# --------------------------------------------------------------------------
# writing / encoding


def test_video_writer_round_trip(tmp_path, full_decode):
    out = tmp_path / "w.mp4"
    with VideoWriter(out, 12.5, (64, 48)) as w:
        for f in full_decode[:10]:
            w.write(f)
        assert w.frames_written == 10
    info = probe_video(out)
    assert (info.width, info.height, info.frames, info.has_audio) == (64, 48, 10, False)
    assert info.fps == pytest.approx(12.5)
    got = [f for _, f in iter_frames(out)]
    assert len(got) == 10
    err = np.mean([np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(got, full_decode)])
    assert err < 8, err  # lossy (crf 18, yuv420p on a 64x48 test pattern)


def test_video_writer_validation_and_abort(tmp_path):
    with pytest.raises(VideoError, match="even"):
        VideoWriter(tmp_path / "odd.mp4", 12, (63, 48))
    with pytest.raises(VideoError, match="unsupported output container"):
        VideoWriter(tmp_path / "x.webm", 12, (64, 48))
    out = tmp_path / "bad.mp4"
    with pytest.raises(VideoError, match="48x64x3 uint8"), VideoWriter(out, 12, (64, 48)) as w:
        w.write(np.zeros((48, 64, 3), np.uint8))
        w.write(np.zeros((10, 10, 3), np.uint8))
    assert not out.exists()  # partial file removed on error
    assert _wait_no_ffmpeg() == []


def test_encode_video_with_trimmed_audio(tmp_path, clips, full_decode):
    frames = _write_pngs(full_decode[:12], tmp_path / "frames")
    out = tmp_path / "out" / "result.mp4"
    encode_video(frames, out, fps=12, audio_from=clips["sound"], audio_start=0.5)
    info = probe_video(out)
    assert (info.frames, info.width, info.height) == (12, 64, 48)
    assert info.fps == pytest.approx(12.0)
    assert info.has_audio is True
    assert _audio_seconds(out) == pytest.approx(12 / 12, abs=0.06)
    assert sorted(p.name for p in out.parent.iterdir()) == ["result.mp4"]  # no temp left
    got = [f for _, f in iter_frames(out)]
    assert np.mean(np.abs(got[3].astype(int) - full_decode[3].astype(int))) < 8


def test_encode_video_audio_duration_and_start(tmp_path, clips, full_decode):
    frames = _write_pngs(full_decode[:12], tmp_path / "frames")  # 1.0 s at 12 fps
    # explicit shorter duration: audio cut, video keeps all its frames
    out = tmp_path / "short_audio.mp4"
    encode_video(frames, out, 12, audio_from=clips["sound"], audio_start=0.25, audio_duration=0.5)
    assert probe_video(out).frames == 12
    assert _audio_seconds(out) == pytest.approx(0.5, abs=0.06)
    # start near the end of the 2 s source: only 0.5 s of sound is left
    out2 = tmp_path / "tail.mp4"
    encode_video(frames, out2, 12, audio_from=clips["sound"], audio_start=1.5)
    assert probe_video(out2).frames == 12
    assert _audio_seconds(out2) == pytest.approx(0.5, abs=0.06)
    # start past the end of the source audio
    with pytest.raises(VideoError, match="past the end of the audio"):
        encode_video(frames, tmp_path / "never.mp4", 12, audio_from=clips["sound"], audio_start=5)
    assert not (tmp_path / "never.mp4").exists()


def test_encode_video_without_audio_sources(tmp_path, clips, full_decode):
    frames = _write_pngs(full_decode[:6], tmp_path / "frames")
    out = tmp_path / "a.mp4"
    encode_video(frames, out, 12, audio_from=clips["silent"])  # source has no sound
    info = probe_video(out)
    assert (info.frames, info.has_audio) == (6, False)
    out2 = tmp_path / "b.mp4"
    encode_video(frames, out2, 24)
    assert probe_video(out2).frames == 6 and probe_video(out2).fps == pytest.approx(24)
    with pytest.raises(VideoError, match="nope.mp4: no such file"):
        encode_video(frames, tmp_path / "c.mp4", 12, audio_from=tmp_path / "nope.mp4")


def test_encode_video_failure_keeps_old_file(tmp_path, full_decode):
    from PIL import Image

    frames = _write_pngs(full_decode[:4], tmp_path / "frames")
    odd = tmp_path / "frames" / "odd.png"
    Image.new("RGB", (32, 32)).save(odd)
    out = tmp_path / "keep.mp4"
    out.write_bytes(b"previous result")
    with pytest.raises(VideoError, match="odd.png: frame is 32x32, expected 64x48"):
        encode_video(frames + [odd], out, 12)
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "keep.mp4"]
    with pytest.raises(VideoError, match="no frames"):
        encode_video([], out, 12)
    assert _wait_no_ffmpeg() == []


def test_write_video_writes_straight_into_the_given_temp_file(tmp_path, clips, full_decode):
    """write_video fills the caller's temp file (no rename of its own); ``final`` picks the container."""
    frames = _write_pngs(full_decode[:6], tmp_path / "frames")
    out = tmp_path / "out"
    out.mkdir()
    tmp = out / ".clip.mp4.tmp-1-abcd"
    write_video(frames, tmp, 12, audio_from=clips["sound"], final=out / "clip.mp4")
    assert sorted(p.name for p in out.iterdir()) == [tmp.name]  # the audio mux's intermediate is gone
    info = probe_video(tmp)
    assert (info.frames, info.has_audio) == (6, True)
    # an error removes the temp file and names the final file
    with pytest.raises(VideoError, match=r"clip\.mp4: no frames to encode"):
        write_video([], tmp, 12, final=out / "clip.mp4")
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "small.png")
    with pytest.raises(VideoError, match="frame is 32x32"):
        write_video(frames + [tmp_path / "small.png"], tmp, 12, final=out / "clip.mp4")
    assert list(out.iterdir()) == []
    assert _wait_no_ffmpeg() == []


# --------------------------------------------------------------------------
# probe cache


@pytest.fixture
def probe_cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("SDBATCH_CACHE", str(folder))
    return folder


def _no_ffmpeg(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("ffmpeg ran")

    monkeypatch.setattr(ffmpeg, "run", fail)
    monkeypatch.setattr(ffmpeg.subprocess, "run", fail)
    monkeypatch.setattr(ffmpeg.subprocess, "Popen", fail)


def test_probe_cache_hit_runs_no_ffmpeg_and_changed_content_reprobes(tmp_path, clips, probe_cache, monkeypatch):
    from sdbatch.io.hashing import sha256_file

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(clips["sound"].read_bytes())
    digest = sha256_file(clip)
    first = probe_video_cached(clip, digest)
    assert first == probe_video(clip)
    entry = probe.probe_cache_path(digest)
    assert entry.is_file() and entry.parent.parent == probe_cache
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # written atomically: no temp left

    with monkeypatch.context() as m:
        _no_ffmpeg(m)
        again = probe_video_cached(clip, digest)
        assert again == first
        elsewhere = probe_video_cached(tmp_path / "copy.mp4", digest)  # same content, other name
        assert elsewhere.path == tmp_path / "copy.mp4" and elsewhere.frames == first.frames

    # other content (another sha256) is probed again
    clip.write_bytes(clips["long"].read_bytes())
    changed = probe_video_cached(clip, sha256_file(clip))
    assert (changed.frames, changed.width, changed.has_audio) == (300, 32, False)


OLD_VERSION = json.dumps({"version": 0, "width": 64, "height": 48, "fps": 12.0, "frames": 9, "duration": 0.75,
                          "has_audio": True}).encode()  # well formed, but written by an older probe


@pytest.mark.parametrize("corrupt", [b"", b"{not json", b"[1, 2]", b'{"version": 1, "frames": "24"}', OLD_VERSION])
def test_probe_cache_corrupt_entry_is_ignored_and_rebuilt(tmp_path, clips, probe_cache, monkeypatch, corrupt):
    from sdbatch.io.hashing import sha256_file

    digest = sha256_file(clips["sound"])
    entry = probe.probe_cache_path(digest)
    entry.parent.mkdir(parents=True)
    entry.write_bytes(corrupt)
    info = probe_video_cached(clips["sound"], digest)
    assert (info.frames, info.width, info.height, info.has_audio) == (24, 64, 48, True)
    with monkeypatch.context() as m:  # rebuilt: the next probe is a hit
        _no_ffmpeg(m)
        assert probe_video_cached(clips["sound"], digest) == info


def test_probe_cache_does_not_remember_errors_or_need_a_writable_folder(tmp_path, clips, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("SDBATCH_CACHE", str(blocker))
    from sdbatch.io.hashing import sha256_file

    assert probe_video_cached(clips["silent"], sha256_file(clips["silent"])).frames == 24  # cache unwritable
    monkeypatch.setenv("SDBATCH_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video\n" * 20)
    for _ in range(2):
        with pytest.raises(VideoError, match="not a readable video"):
            probe_video_cached(bad, sha256_file(bad))
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.json"))


def test_probe_cache_entry_holds_every_field_but_the_path():
    from dataclasses import fields

    assert set(probe._TYPES) == {f.name for f in fields(VideoInfo)} - {"path"}
