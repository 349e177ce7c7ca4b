"""The allocator settings of tracekit/_alloc.py: set before polars loads, a user's own kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = "import tracekit, os, polars; print(os.environ.get('_RJEM_MALLOC_CONF'))"


def _conf(extra_env: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("_RJEM_MALLOC_CONF", "ARROW_DEFAULT_MEMORY_POOL")}
    env.update(extra_env, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_polars_returns_freed_pages_at_once():
    # polars appends the variable to its own defaults; the last option wins
    assert _conf({}).endswith("dirty_decay_ms:200,muzzy_decay_ms:0")


def test_a_users_setting_is_kept():
    assert _conf({"_RJEM_MALLOC_CONF": "dirty_decay_ms:250"}).endswith(",dirty_decay_ms:250")
