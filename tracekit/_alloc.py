"""Allocator settings that give freed memory back to the system at once (memory on big traces).

polars allocates with jemalloc, which by default keeps freed pages for 0.5-1.5 s for reuse
(polars sets ``dirty_decay_ms:500,muzzy_decay_ms:1000``); pyarrow's default pool on Linux is
mimalloc, which keeps its segments. In ``tracekit diff`` one side's measures free a few hundred MB
that the next stage's peak would stand on: measured on the README tour's EP64 pair
(``/usr/bin/time -v tracekit diff out/ bf16/``, docs/diff.md), the peak drops from 1.54 to
1.41 GB with both settings below. Freed pages are kept 200 ms, then given back (``muzzy_decay_ms:0``
skips the lazy MADV_FREE stage, whose pages still count as resident): the same peak as giving them
back at once (``dirty_decay_ms:0``) at 4.5 instead of 7.4 system CPU-s for that diff.

Set as environment variables before polars or pyarrow is imported (they read them then); a value
the user has set is kept, and a library already imported is left as it is.
"""

from __future__ import annotations

import os
import sys

#: appended by polars to its own defaults (polars/__init__.py): later options win
POLARS_JEMALLOC = "dirty_decay_ms:200,muzzy_decay_ms:0"


def configure() -> None:
    """Set the allocator variables above where the user has not and the library is not loaded."""
    if "polars" not in sys.modules:
        os.environ.setdefault("_RJEM_MALLOC_CONF", POLARS_JEMALLOC)
    if "pyarrow" not in sys.modules and sys.platform.startswith("linux"):  # Linux wheels ship jemalloc
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
