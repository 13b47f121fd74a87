"""How a gateway process runs: its garbage collector and its event loop (the CLI's, and each sending
process's: gateway/senders.py)."""

from __future__ import annotations

import gc
import importlib.util

GC_YOUNG_THRESHOLD = 20_000  # allocations between young collections (CPython's default: 700)


def tune_gc() -> None:
    """Fewer, cheaper garbage collections: each push allocates a few short-lived objects, and at the
    default threshold collections took about 3% of the CPU under load (bench/README.md). The objects
    made at import are frozen out of every later collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 50, 50)


def loop_options() -> dict[str, bool]:
    """uvloop where it is installed: less CPU per push than asyncio's own loop (bench/README.md)."""
    return {"use_uvloop": importlib.util.find_spec("uvloop") is not None}
