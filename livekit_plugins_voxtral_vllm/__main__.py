"""``python -m livekit_plugins_voxtral_vllm``: the ``voxtral-vllm`` command line (see ``cli``)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
