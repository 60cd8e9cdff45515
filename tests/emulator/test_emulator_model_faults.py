"""Model-side faults over the wire: the blank-token rut and per-generation max_model_len."""

from __future__ import annotations

import pytest

from livekit_plugins_voxtral_vllm.testing import VLLMRealtimeEmulator, synthesize
from livekit_plugins_voxtral_vllm.testing.tokens import encode

from .support import open_client

SPEECH = synthesize("hello everyone, the meeting starts now.")


async def test_rut_on_every_connection(emulator: VLLMRealtimeEmulator) -> None:
    first = await open_client(emulator)
    emulator.rut = True
    deltas, done = await first.transcribe(SPEECH.samples)
    assert set(deltas) == {""} and done["text"] == ""
    assert len(deltas) > 20  # a healthy-looking socket: a delta per step, nothing in them
    fresh = await open_client(emulator)  # a fresh socket ruts too
    deltas, done = await fresh.transcribe(SPEECH.samples)
    assert done["text"] == ""
    assert first.ws.state.name == "OPEN" and fresh.ws.state.name == "OPEN"
    gen = emulator.connections[1].generations[0]
    assert gen.rut_steps == gen.steps and "".join(gen.words_heard) == SPEECH.text
    emulator.rut = False
    _, done = await first.transcribe(SPEECH.samples)
    assert done["text"] == SPEECH.text


async def test_rut_on_one_socket_only(emulator: VLLMRealtimeEmulator) -> None:
    stuck = await open_client(emulator)
    healthy = await open_client(emulator)
    emulator.connections[0].rut = True
    _, done = await stuck.transcribe(SPEECH.samples)
    assert done["text"] == ""
    _, done = await healthy.transcribe(SPEECH.samples)
    assert done["text"] == SPEECH.text
    # every later generation of the stuck socket stays stuck; a new socket is fine
    _, done = await stuck.transcribe(SPEECH.samples)
    assert done["text"] == ""
    _, done = await (await open_client(emulator)).transcribe(SPEECH.samples)
    assert done["text"] == SPEECH.text


async def test_rut_next_connections(emulator: VLLMRealtimeEmulator) -> None:
    emulator.rut_next_connections(1)
    stuck = await open_client(emulator)
    fresh = await open_client(emulator)
    assert emulator.connections[0].rut and not emulator.connections[1].rut
    assert (await stuck.transcribe(SPEECH.samples))[1]["text"] == ""
    assert (await fresh.transcribe(SPEECH.samples))[1]["text"] == SPEECH.text
    with pytest.raises(ValueError, match="count must be >= 0"):
        emulator.rut_next_connections(-1)


async def test_generation_max_steps_by_emulator_wide_index(
    emulator: VLLMRealtimeEmulator,
) -> None:
    emulator.generation_max_steps = {0: 7, 2: 12}
    a = await open_client(emulator)
    b = await open_client(emulator)
    await a.commit()
    await a.append(SPEECH.samples)
    deltas, done = await a.until_done()  # generation 0: unsolicited done after 7 steps
    assert len(deltas) == 7 and done["usage"]["completion_tokens"] == 7
    assert emulator.connections[0].generations[0].finished_reason == "max_model_len"
    _, done = await b.transcribe(SPEECH.samples)  # generation 1: no limit
    assert done["text"] == SPEECH.text
    await a.commit()
    await a.append(SPEECH.samples)
    deltas, _ = await a.until_done()  # generation 2
    assert len(deltas) == 12
    assert emulator.generations_started == 3


async def test_generation_max_steps_callable_and_mid_word(emulator: VLLMRealtimeEmulator) -> None:
    speech = synthesize("it is 2026 <pause:300> okay", tail_ms=1500)
    client = await open_client(emulator)
    _, whole = await client.transcribe(speech.samples)
    assert whole["text"] == " it is 2026 okay"
    tokens = emulator.connections[0].generations[0].tokens
    cut = tokens.index(encode(" 2026")[0]) + 2  # " " and "2" sent
    emulator.generation_max_steps = lambda i: cut if i == 1 else None
    await client.commit()
    await client.append(speech.samples)
    _, done = await client.until_done()
    assert done["text"] == " it is 2"
    # a bad count from the callable surfaces loudly, as the commit's processing_error
    emulator.generation_max_steps = lambda i: 0
    await client.commit()
    event = await client.recv()
    assert event["type"] == "error" and "gave 0: must be >= 1" in event["error"]


async def test_limit_generation_on_a_connection(emulator: VLLMRealtimeEmulator) -> None:
    client = await open_client(emulator)
    emulator.connections[0].limit_generation(5)  # no generation yet: the next one
    await client.commit()
    await client.append(SPEECH.samples)
    deltas, _ = await client.until_done()
    assert len(deltas) == 5


async def test_limits_need_a_version_that_stops_at_the_limit() -> None:
    with pytest.raises(ValueError, match=r"vLLM 0.31.0 dies at max_model_len"):
        VLLMRealtimeEmulator(vllm_version="0.31.0", generation_max_steps={0: 5})
    with pytest.raises(ValueError, match=r"step counts >= 1, got \{0: 0\}"):
        VLLMRealtimeEmulator(generation_max_steps={0: 0})


async def test_language_is_the_speakers_and_changes_at_runtime() -> None:
    speech = synthesize("我们 在 公园 散步 吧 。", language="zh")
    async with VLLMRealtimeEmulator(fast=True, language="zh") as emu:
        client = await open_client(emu)
        deltas, done = await client.transcribe(speech.samples)
        assert done["text"] == speech.text == "我们在公园散步吧。"
        assert [d for d in deltas if d][:5] == ["我们", "在", "公", "园", "散"]
        assert "" in deltas[deltas.index("公") : deltas.index("园")]
        emu.language = "ja"
        _, done = await client.transcribe(synthesize("公園 で 散歩", language="ja").samples)
        assert done["text"] == "公園で散歩"
        with pytest.raises(ValueError, match="unsupported emulator language 'ko'"):
            emu.language = "ko"


async def test_rut_after_some_steps(emulator: VLLMRealtimeEmulator) -> None:
    speech = synthesize("hello everyone <pause:1500> the meeting starts now", tail_ms=1500)
    end_of_everyone = round(speech.words[1].end_s * 16000)
    steps_for_two_words = -(-end_of_everyone // 1280) + 1
    emulator.rut_next_connections(1, after_steps=steps_for_two_words)
    stuck = await open_client(emulator)
    _, done = await stuck.transcribe(speech.samples)
    assert done["text"] == " hello everyone"  # the rest fell into the rut
    assert emulator.connections[0].rut
    fresh = await open_client(emulator)
    assert not emulator.connections[1].rut
    fresh_conn = emulator.connections[1]
    fresh_conn.rut_after(steps_for_two_words)
    _, done = await fresh.transcribe(speech.samples)
    assert done["text"] == " hello everyone"
    with pytest.raises(ValueError, match="after_steps must be >= 0"):
        emulator.rut_next_connections(1, after_steps=-1)
