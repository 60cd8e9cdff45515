"""The ``voxtral-vllm`` command line against the emulator.

``cli.main`` runs its own event loop, so a test that serves an emulator on the test's loop calls
it in a worker thread (``asyncio.to_thread``), leaving the loop free to serve.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from livekit_plugins_voxtral_vllm import cli, discovery
from livekit_plugins_voxtral_vllm.discovery import ServerInfo
from livekit_plugins_voxtral_vllm.testing import (
    SynthesizedSpeech,
    VLLMRealtimeEmulator,
    synthesize,
)

from .helpers import normalize

SCRIPT = (
    "hello world. the meeting starts now. <pause:900> we can hear the quick brown fox. "
    "<pause:1000> thank you everyone."
)
MODEL = "mistralai/Voxtral-Mini-4B-Realtime-2602"
CAPTION_RE = re.compile(r"^\[(\d\d):(\d\d\.\d) (?:→|->) (\d\d):(\d\d\.\d)\] (.+)$")
SRT_TIME = r"(\d\d):(\d\d):(\d\d),(\d\d\d)"
VTT_TIME = r"(\d\d):(\d\d):(\d\d)\.(\d\d\d)"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (cli.ENV_URL, cli.ENV_MODEL, cli.ENV_KEY):
        monkeypatch.delenv(name, raising=False)


def write_wav(path: Path, speech: SynthesizedSpeech, channels: int = 1) -> Path:
    samples = np.asarray(speech.samples)
    if channels == 2:  # the right channel quieter, so the downmix really mixes
        samples = np.column_stack((samples, samples // 2)).reshape(-1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(speech.sample_rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return path


def encode_with_pyav(path: Path, speech: SynthesizedSpeech, codec: str) -> Path:
    """Encode mono speech with PyAV; skips the test if this FFmpeg build cannot."""
    try:
        with av.open(str(path), "w") as out:
            stream = out.add_stream(codec, rate=speech.sample_rate)
            stream.layout = "mono"
            frame = av.AudioFrame.from_ndarray(
                np.asarray(speech.samples).reshape(1, -1).copy(), format="s16", layout="mono"
            )
            frame.sample_rate = speech.sample_rate
            for packet in stream.encode(frame):
                out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
    except (av.FFmpegError, ValueError) as e:
        pytest.skip(f"PyAV/FFmpeg here cannot encode {codec}: {e}")
    return path


def caption_lines(stdout: str) -> list[tuple[float, float, str]]:
    out = []
    for line in stdout.splitlines():
        m = CAPTION_RE.match(line)
        if m:
            mm1, ss1, mm2, ss2, text = m.groups()
            out.append((int(mm1) * 60 + float(ss1), int(mm2) * 60 + float(ss2), text))
    return out


def caption_text(stdout: str) -> str:
    return normalize(" ".join(text for _, _, text in caption_lines(stdout)))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(*argv: str) -> int:
    return cli.main(list(argv))


async def run_async(*argv: str) -> int:
    return await asyncio.to_thread(cli.main, list(argv))


def seconds(groups: tuple[str, ...]) -> float:
    h, m, s, ms = (int(g) for g in groups)
    return h * 3600 + m * 60 + s + ms / 1000


# -- transcribe: audio files ---------------------------------------------------------------------


def test_transcribe_wav_48k_mono(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    speech = synthesize(SCRIPT, 48000)
    wav = write_wav(tmp_path / "talk.wav", speech)
    assert run("transcribe", str(wav), "--emulator") == cli.EXIT_OK
    out, err = capsys.readouterr()
    assert caption_text(out) == normalize(speech.text)
    assert len(caption_lines(out)) == 3
    assert "\r" not in out  # not a terminal: plain lines only
    assert cli.EMULATOR_NOTE in err
    # each caption spans its words
    (s1, e1, _), (s2, e2, _), (s3, e3, _) = caption_lines(out)
    assert s1 == pytest.approx(0.3, abs=0.1) and e3 == pytest.approx(7.7, abs=0.2)
    assert s1 < e1 <= s2 < e2 <= s3 < e3


def test_transcribe_wav_stereo_44k1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    speech = synthesize(SCRIPT, 44100)
    wav = write_wav(tmp_path / "stereo.wav", speech, channels=2)
    assert run("transcribe", str(wav), "--emulator") == cli.EXIT_OK
    out, err = capsys.readouterr()
    assert caption_text(out) == normalize(speech.text)
    assert "44100 Hz stereo" in err


@pytest.mark.parametrize(("name", "codec"), [("talk.ogg", "libopus"), ("talk.flac", "flac")])
def test_transcribe_compressed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, codec: str
) -> None:
    speech = synthesize(SCRIPT, 48000)
    path = encode_with_pyav(tmp_path / name, speech, codec)
    assert run("transcribe", str(path), "--emulator") == cli.EXIT_OK
    out, _ = capsys.readouterr()
    assert caption_text(out) == normalize(speech.text)


def test_transcribe_video_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A video container: the audio stream is found among others."""
    speech = synthesize("hello world. thank you everyone.", 48000)
    path = tmp_path / "clip.mp4"
    try:
        with av.open(str(path), "w") as out:
            video = out.add_stream("mpeg4", rate=10)
            video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
            audio = out.add_stream("aac", rate=48000)
            audio.layout = "mono"
            for i in range(int(speech.duration_s * 10)):
                img = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i, np.uint8), format="rgb24")
                img.pts = i
                for packet in video.encode(img):
                    out.mux(packet)
            frame = av.AudioFrame.from_ndarray(
                np.asarray(speech.samples).reshape(1, -1).copy(), format="s16", layout="mono"
            )
            frame.sample_rate = 48000
            for packet in [*audio.encode(frame), *audio.encode(None), *video.encode(None)]:
                out.mux(packet)
    except (av.FFmpegError, ValueError) as e:
        pytest.skip(f"PyAV/FFmpeg here cannot write a video file: {e}")
    assert run("transcribe", str(path), "--emulator") == cli.EXIT_OK
    out, _ = capsys.readouterr()
    assert caption_text(out) == normalize(speech.text)


# -- transcribe: output files --------------------------------------------------------------------


@pytest.fixture
def talk(tmp_path: Path) -> tuple[Path, SynthesizedSpeech]:
    speech = synthesize(SCRIPT, 48000)
    return write_wav(tmp_path / "talk.wav", speech), speech


def test_srt_output(
    tmp_path: Path, talk: tuple[Path, SynthesizedSpeech], capsys: pytest.CaptureFixture[str]
) -> None:
    wav, speech = talk
    srt = tmp_path / "captions.srt"
    assert run("transcribe", str(wav), "--emulator", "--output", str(srt)) == cli.EXIT_OK
    out, err = capsys.readouterr()
    blocks = srt.read_text(encoding="utf-8").strip().split("\n\n")
    last_end = 0.0
    texts = []
    for i, block in enumerate(blocks, 1):
        index, times, *lines = block.split("\n")
        assert index == str(i)
        m = re.fullmatch(f"{SRT_TIME} --> {SRT_TIME}", times)
        assert m, times
        start, end = seconds(m.groups()[:4]), seconds(m.groups()[4:])
        assert last_end <= start < end
        last_end = end
        assert lines and all(line.strip() for line in lines)
        texts.append(" ".join(lines))
    assert len(blocks) == 3
    assert normalize(" ".join(texts)) == normalize(speech.text)
    assert caption_text(out) == normalize(speech.text)  # live captions too
    assert f"wrote {srt}" in err


def test_vtt_output(tmp_path: Path, talk: tuple[Path, SynthesizedSpeech]) -> None:
    wav, speech = talk
    vtt = tmp_path / "captions.vtt"
    assert run("transcribe", str(wav), "--emulator", "-o", str(vtt)) == cli.EXIT_OK
    text = vtt.read_text(encoding="utf-8")
    assert text.startswith("WEBVTT\n\n")
    cues = re.findall(f"^{VTT_TIME} --> {VTT_TIME}\n(.+)$", text, flags=re.M)
    assert len(cues) == 3
    starts = [seconds(c[:4]) for c in cues]
    ends = [seconds(c[4:8]) for c in cues]
    assert all(s < e for s, e in zip(starts, ends, strict=True))
    assert all(e <= s for e, s in zip(ends, starts[1:], strict=False))
    assert normalize(" ".join(c[8] for c in cues)) == normalize(speech.text)


def test_json_output(tmp_path: Path, talk: tuple[Path, SynthesizedSpeech]) -> None:
    wav, speech = talk
    path = tmp_path / "captions.json"
    assert run("transcribe", str(wav), "--emulator", "-o", str(path), "--language", "en") == 0
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["model"] == MODEL
    assert doc["server"]["emulator"] is True
    assert doc["server"]["max_model_len"] == 131072
    assert doc["server"]["vllm_version"] == "0.33.0"
    assert doc["language"] == "en"
    assert doc["source"]["duration"] == pytest.approx(speech.duration_s, abs=0.05)
    assert normalize(doc["text"]) == normalize(speech.text)
    segments = doc["segments"]
    assert [s["id"] for s in segments] == [1, 2, 3]
    for seg in segments:
        assert set(seg) == {"id", "start", "end", "text", "words"}
        assert seg["start"] < seg["end"]
        assert normalize(" ".join(w["text"] for w in seg["words"])) == normalize(seg["text"])
    # every word against its synthesized burst (punctuation rides on the word before it)
    expected = [w for w in speech.words if w.text.startswith(" ")]
    words = [w for seg in segments for w in seg["words"]]
    assert [w["text"].rstrip(".,?") for w in words] == [w.text.strip() for w in expected]
    for got, want in zip(words, expected, strict=True):
        assert set(got) == {"text", "start", "end"}
        assert got["start"] == pytest.approx(want.start_s, abs=0.1), got
        assert got["end"] == pytest.approx(want.end_s, abs=0.1), got


def test_json_to_stdout(
    talk: tuple[Path, SynthesizedSpeech], capsys: pytest.CaptureFixture[str]
) -> None:
    wav, speech = talk
    assert run("transcribe", str(wav), "--emulator", "-o", "-", "--format", "json") == 0
    out, _ = capsys.readouterr()
    doc = json.loads(out)  # stdout holds the document only
    assert normalize(doc["text"]) == normalize(speech.text)


def test_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("transcribe", "--emulator", "--demo") == cli.EXIT_OK
    out, err = capsys.readouterr()
    assert caption_text(out) == normalize(synthesize(cli.DEMO_SCRIPT).text)
    assert cli.EMULATOR_NOTE in err


class FakeTTY(io.StringIO):
    encoding = "utf-8"

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stderr_tty", [True, False])
def test_terminal_status_line(monkeypatch: pytest.MonkeyPatch, stderr_tty: bool) -> None:
    """On a terminal the interim line is redrawn in place; finals stay as whole lines. With
    stderr a terminal too, the status line (progress bar and interim) lives there."""
    out, err = FakeTTY(), FakeTTY() if stderr_tty else io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    assert run("transcribe", "--emulator", "--demo") == cli.EXIT_OK
    finals = [line for line in out.getvalue().split("\n") if "→" in line]
    assert len(finals) == 4
    assert finals[0].endswith("[00:00.3 → 00:02.4] hello everyone. welcome to the meeting.")
    if stderr_tty:  # " 77% [###############.....] 00:08.5/00:10.9 can you hear"
        status = err.getvalue()
        assert re.search(r"\r *\d+% \[[#.]{20}\] \d\d:\d\d\.\d/00:10\.9", status)
        assert "the quick brown fox jumps over\r" in status  # the interim line
        assert "\r100% [####################] 00:10.9/00:10.9" in status
        assert "\r" not in out.getvalue()  # stdout: finals only
    else:
        status = out.getvalue()
        assert "\rhello everyone. welcome\r" in status
        assert "% [" not in status and "% [" not in err.getvalue()
        assert "progress: 100%" in err.getvalue()


def test_realtime_pacing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    speech = synthesize("hello world.", 48000)
    wav = write_wav(tmp_path / "short.wav", speech)
    started = time.monotonic()
    assert run("transcribe", str(wav), "--emulator", "--realtime") == cli.EXIT_OK
    elapsed = time.monotonic() - started
    out, err = capsys.readouterr()
    assert caption_text(out) == normalize(speech.text)
    assert elapsed >= speech.duration_s * 0.9
    assert "progress" not in err


async def test_fast_feed_waits_for_a_slow_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server slower than the feed (8x real time here): utterances pile up behind the two
    connections of the stream, which keeps only 20 s of audio for them. The feed waits for the
    captions, so no word is lost (without the wait, the last sentence is)."""
    sentence = "the quick brown fox jumps over the lazy dog. <pause:1000> "
    speech = synthesize(sentence * 8, 48000)
    wav = write_wav(tmp_path / "long.wav", speech)
    out_json = tmp_path / "long.json"
    async with VLLMRealtimeEmulator(step_time_s=0.01, record_audio=False) as emu:
        rc = await run_async("transcribe", str(wav), "--url", emu.url, "-o", str(out_json))
        stats = emu.stats()
    assert rc == cli.EXIT_OK
    doc = json.loads(out_json.read_text(encoding="utf-8"))
    assert normalize(doc["text"]) == normalize(speech.text)
    assert stats.errors == {}
    assert "not transcribed" not in capsys.readouterr().err


# -- check ---------------------------------------------------------------------------------------


def test_check_emulator(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("check", "--emulator") == cli.EXIT_OK
    out, _ = capsys.readouterr()
    assert cli.EMULATOR_NOTE in out
    assert MODEL in out
    assert "max_model_len=131072" in out
    assert "0.33.0" in out
    assert "realtime:      OK" in out


async def test_check_url(
    emulator: VLLMRealtimeEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_async("check", "--url", emulator.url) == cli.EXIT_OK
    out, _ = capsys.readouterr()
    assert f"{MODEL}  max_model_len=131072  <- configured" in out
    assert emulator.stats().dones == 1


async def test_check_reports_version_quirks(capsys: pytest.CaptureFixture[str]) -> None:
    async with VLLMRealtimeEmulator(fast=True, vllm_version="0.22.0") as emu:
        assert await run_async("check", "--url", emu.url) == cli.EXIT_OK
    out, _ = capsys.readouterr()
    assert "vLLM version:  0.22.0" in out
    assert "known quirk: reaching max_model_len kills the engine" in out


@pytest.mark.parametrize("command", ["check", "transcribe"])
def test_unreachable(
    command: str, talk: tuple[Path, SynthesizedSpeech], capsys: pytest.CaptureFixture[str]
) -> None:
    port = closed_port()
    argv = [command, "--url", f"127.0.0.1:{port}"]
    if command == "transcribe":
        argv.append(str(talk[0]))
    assert run(*argv) == cli.EXIT_SERVER
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert lines[-1].startswith("voxtral-vllm: error: cannot reach vLLM at http://127.0.0.1:")
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["check", "transcribe"])
async def test_wrong_model(
    command: str,
    emulator: VLLMRealtimeEmulator,
    talk: tuple[Path, SynthesizedSpeech],
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [command, "--url", emulator.url, "--model", "mistralai/Voxtral-Small-24B"]
    if command == "transcribe":
        argv.append(str(talk[0]))
    assert await run_async(*argv) == cli.EXIT_CONFIG
    _, err = capsys.readouterr()
    assert "'mistralai/Voxtral-Small-24B' is not served" in err
    assert f"it serves: {MODEL}" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["check", "transcribe"])
async def test_wrong_model_refused_by_the_session(
    command: str,
    emulator: VLLMRealtimeEmulator,
    talk: tuple[Path, SynthesizedSpeech],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When /v1/models lists nothing (a proxy that hides it), the session itself refuses."""
    real_discover = discovery.discover

    async def no_models(*args: Any, **kwargs: Any) -> ServerInfo:
        info = await real_discover(*args, **kwargs)
        return dataclasses.replace(info, models=())

    # the CLI's own look; the STT keeps its reference to the real one
    monkeypatch.setattr(discovery, "discover", no_models)
    argv = [command, "--url", emulator.url, "--model", "other/model"]
    if command == "transcribe":
        argv.append(str(talk[0]))
    assert await run_async(*argv) == cli.EXIT_CONFIG
    _, err = capsys.readouterr()
    last = err.strip().splitlines()[-1]
    assert last.startswith("voxtral-vllm: error: vLLM refused the session")
    assert "other/model" in last
    if command == "transcribe":  # the stream's error also names what is served
        assert f"The server serves: {MODEL}" in last
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["check", "transcribe"])
@pytest.mark.parametrize("key", [None, "wrong-key"])
async def test_api_key_missing_or_wrong(
    command: str,
    key: str | None,
    talk: tuple[Path, SynthesizedSpeech],
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with VLLMRealtimeEmulator(fast=True, api_key="s3cret-key") as emu:
        argv = [command, "--url", emu.url]
        if key is not None:
            argv += ["--api-key", key]
        if command == "transcribe":
            argv.append(str(talk[0]))
        rc = await run_async(*argv)
    out, err = capsys.readouterr()
    assert rc == cli.EXIT_CONFIG
    expected = "rejected the API key (HTTP 401)" if key else "requires an API key (HTTP 401)"
    assert expected in err.strip().splitlines()[-1]
    assert "Traceback" not in err
    for secret in ("s3cret-key", "wrong-key"):
        assert secret not in out + err


@pytest.mark.parametrize("command", ["check", "transcribe"])
async def test_api_key_right(
    command: str,
    tmp_path: Path,
    talk: tuple[Path, SynthesizedSpeech],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(cli.ENV_KEY, "s3cret-key")
    out_json = tmp_path / "out.json"
    async with VLLMRealtimeEmulator(fast=True, api_key="s3cret-key") as emu:
        argv = [command, "--url", emu.url]
        if command == "transcribe":
            argv += [str(talk[0]), "-o", str(out_json)]
        assert await run_async(*argv) == cli.EXIT_OK
    out, err = capsys.readouterr()
    assert "s3cret-key" not in out + err
    if command == "check":
        assert "API key:       set (not shown)" in out
    else:
        assert "s3cret-key" not in out_json.read_text(encoding="utf-8")
        assert caption_text(out) == normalize(talk[1].text)


# -- file and usage errors -----------------------------------------------------------------------


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.wav"
    assert run("transcribe", str(missing), "--emulator") == cli.EXIT_FILE
    _, err = capsys.readouterr()
    assert err.strip() == f"voxtral-vllm: error: no such file: {missing}"


def test_undecodable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.wav"
    junk.write_bytes(np.random.default_rng(7).bytes(50_000))
    assert run("transcribe", str(junk), "--emulator") == cli.EXIT_FILE
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # checked before anything starts
    assert lines[0].startswith(f"voxtral-vllm: error: cannot decode {junk}")
    assert "Traceback" not in err


def test_file_without_audio(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "silent.mkv"
    try:
        with av.open(str(path), "w") as out:
            video = out.add_stream("mpeg4", rate=10)
            video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
            for i in range(5):
                img = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
                img.pts = i
                for packet in video.encode(img):
                    out.mux(packet)
            for packet in video.encode(None):
                out.mux(packet)
    except (av.FFmpegError, ValueError) as e:
        pytest.skip(f"PyAV/FFmpeg here cannot write a video file: {e}")
    assert run("transcribe", str(path), "--emulator") == cli.EXIT_FILE
    _, err = capsys.readouterr()
    assert "has no audio stream" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["transcribe", "--emulator"], "needs a FILE"),
        (["transcribe", "--demo"], "--demo needs --emulator"),
        (["transcribe", "--emulator", "--demo", "-o", "out.txt"], "cannot tell the format"),
        (["transcribe", "--emulator", "--demo", "-o", "-"], "'-o -' needs --format"),
        (["check", "--url", "ftp://host"], "bad server URL"),
    ],
)
def test_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == cli.EXIT_USAGE
    _, err = capsys.readouterr()
    assert message in err


def test_argparse_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["transcribe", "x.wav", "--delay-ms", "100"]) == cli.EXIT_USAGE
    assert cli.main(["check", "--url", "x", "--emulator"]) == cli.EXIT_USAGE
    assert cli.main([]) == cli.EXIT_USAGE
    _, err = capsys.readouterr()
    assert "multiple of 80" in err and "not allowed with" in err


def test_output_directory_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["transcribe", "--emulator", "--demo", "-o", str(tmp_path / "no" / "x.srt")]
    assert cli.main(argv) == cli.EXIT_FILE
    _, err = capsys.readouterr()
    assert "no such directory" in err


# -- the real process ----------------------------------------------------------------------------


@pytest.fixture
def clean_env() -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXTRAL_VLLM_")}
    yield env


def test_subprocess_smoke(tmp_path: Path, clean_env: dict[str, str]) -> None:
    vtt = tmp_path / "demo.vtt"
    proc = subprocess.run(
        [sys.executable, "-m", "livekit_plugins_voxtral_vllm", "transcribe", "--emulator"]
        + ["--demo", "-o", str(vtt)],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert caption_text(proc.stdout) == normalize(synthesize(cli.DEMO_SCRIPT).text)
    assert cli.EMULATOR_NOTE in proc.stderr
    assert vtt.read_text(encoding="utf-8").startswith("WEBVTT")


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == cli.EXIT_OK
    top = capsys.readouterr().out
    assert cli.main(["transcribe", "--help"]) == cli.EXIT_OK
    sub = capsys.readouterr().out
    for text in (top, sub):
        for code in ("0  success", "2  usage", "3  input or output file", "4  server", "5  config"):
            assert code in text
    assert "--realtime" in sub and "--emulator" in sub and "--delay-ms" in sub
