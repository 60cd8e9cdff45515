"""Hypothesis strategies shared by the protocol and connection tests: whatever a server
(or something pretending to be one) could send."""

from __future__ import annotations

import json

from hypothesis import strategies as st

from livekit_plugins_voxtral_vllm.protocol import ErrorCode

ANY_CHAR = st.characters(exclude_categories=())
"""Any code point, lone surrogates included (json.dumps escapes them as \\udxxx)."""

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(ANY_CHAR, max_size=12),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(ANY_CHAR, max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

SERVER_LIKE = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["session.created", "transcription.delta", "transcription.done", "error"]
        )
        | JSON_VALUES
    },
    optional={
        "id": st.text(max_size=8) | JSON_VALUES,
        "created": st.integers() | JSON_VALUES,
        "delta": st.text(ANY_CHAR, max_size=8) | JSON_VALUES,
        "text": st.text(ANY_CHAR, max_size=8) | JSON_VALUES,
        "usage": st.none() | JSON_VALUES,
        "error": st.text(max_size=8) | JSON_VALUES,
        "code": st.sampled_from([c.value for c in ErrorCode]) | JSON_VALUES,
    },
)
"""Objects shaped like vLLM's four server events, with any field possibly wrong."""

ANY_FRAME = st.text(ANY_CHAR) | JSON_VALUES.map(json.dumps) | SERVER_LIKE.map(json.dumps)
"""A text frame: arbitrary text, arbitrary JSON, or a near-miss server event."""
