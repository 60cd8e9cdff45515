from __future__ import annotations

import pytest

from ..fake_livekit import FakeRoom, STTFactory


@pytest.fixture
def room() -> FakeRoom:
    """A connected LiveKit room without a server (see tests/fake_livekit.py)."""
    return FakeRoom()


@pytest.fixture
def stts() -> STTFactory:
    """A captioner's ``stt_factory`` that records the scripted STTs it makes."""
    return STTFactory()
