"""Where kernels are cached, and the notice while they compile."""

import os
import subprocess
import sys
from pathlib import Path

from tracekit import __version__
from tracekit._jit import cache_dir

ROOT = Path(__file__).resolve().parents[1]


def test_cache_dir_is_per_user_and_version(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir("1.2.3") == tmp_path / "tracekit" / "numba" / "1.2.3"


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRACEKIT_PREFETCH": "0", **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)


def test_tracekit_sets_the_cache_unless_the_user_did(tmp_path):
    code = "import tracekit, numba; print(numba.config.CACHE_DIR)"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**env, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path)}).stdout.strip()
    assert got == str(tmp_path / "tracekit" / "numba" / __version__)
    assert _run(code, {"NUMBA_CACHE_DIR": str(tmp_path / "mine")}).stdout.strip() == str(tmp_path / "mine")


def test_one_notice_however_many_kernels_compile(tmp_path):
    code = ("import tracekit._jit as j; j.announce_compilation(); j.announce_compilation(); import numba\n"
            "f = numba.njit(lambda x: x + 1)\n"
            "g = numba.njit(lambda x: x * 2)\n"
            "print(f(1) + g(2.0))")
    first = _run(code, {"NUMBA_CACHE_DIR": str(tmp_path)})
    assert first.stderr.count("tracekit: compiling kernels for first use") == 1 and first.stdout.strip() == "6.0"
    quiet = _run("import numba; print(numba.njit(lambda x: x + 1)(1))", {"NUMBA_CACHE_DIR": str(tmp_path)})
    assert "tracekit" not in quiet.stderr  # only where a tracekit command asked for it
