"""The README's tour, run as written: every line of its code block, in a fresh folder beside the
clone's ``sample_traces/``, through ``tracekit.cli.main`` in this process.

By default the EP64 lines run at EP16 (``--ep 64`` -> ``--ep 16``) to keep the test to a couple of
minutes on a 2-core machine; ``TRACEKIT_TOUR_FULL=1`` runs the block exactly as written.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
from pathlib import Path

import pytest

from tracekit.cli import main

ROOT = Path(__file__).resolve().parents[1]
#: commands that exit 1 by design in the tour: the fuzzer reporting the hazard it was asked to find
EXIT_ONE = ("fuzz ring_buffer", "fuzz --check")


def tour_commands(readme: str) -> list[list[str]]:
    """The tour's commands, each a list of ``&&``-chained command lines (``;`` separates lines)."""
    block = readme.split("## A short tour", 1)[1].split("```", 2)[1]
    out = []
    for line in block.splitlines():
        line = line.split(" # ", 1)[0].strip()
        if not line:
            continue
        for part in line.split(";"):
            out.append([c.strip() for c in part.split("&&")])
    return out


def _run(command: str) -> tuple[int, str]:
    argv = shlex.split(command)
    assert argv[0] == "tracekit", command
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(argv[1:])
    return code, err.getvalue()


def test_the_tour_parses_into_known_commands():
    cmds = tour_commands((ROOT / "README.md").read_text())
    assert len(cmds) >= 15
    names = {shlex.split(c)[1] for chain in cmds for c in chain}
    assert {"synth", "info", "replay", "diff", "hw", "import", "export", "fuzz", "validate"} <= names
    text = (ROOT / "README.md").read_text().split("## A short tour", 1)[1].split("```", 2)[1]
    outputs = re.findall(r"-o (\S+)", text)
    for name in re.findall(r"[\w./*-]+\.(?:parquet|json\.gz|npz|npy|json|toml)\b", text):
        produced = any(name == o or (o.endswith("/") and name.startswith(o)) for o in outputs)
        assert produced or (ROOT / name).exists(), f"the tour reads {name}, which a fresh clone does not have"
    ignored = {ln.strip() for ln in (ROOT / ".gitignore").read_text().splitlines()}
    for out in outputs:  # run from the clone's root, the tour leaves no untracked clutter
        assert f"/{out}" in ignored or f"/{out}/" in ignored, f".gitignore does not cover the tour's output {out}"


@pytest.mark.slow
def test_every_tour_command_works(tmp_path, monkeypatch):
    for shipped in ("sample_traces", "examples", "docs"):  # the files the tour reads, as in a clone's root
        (tmp_path / shipped).symlink_to(ROOT / shipped)
    monkeypatch.chdir(tmp_path)
    full = os.environ.get("TRACEKIT_TOUR_FULL") == "1"
    for chain in tour_commands((ROOT / "README.md").read_text()):
        for command in chain:
            if not full:
                command = command.replace("--ep 64", "--ep 16")
            code, err = _run(command)
            want = 1 if any(k in command for k in EXIT_ONE) else 0
            assert code == want, f"{command}: exit {code}\n{err}"
            assert "Traceback" not in err
    for path in ("out/timeline.pftrace", "report.html", "timeline.json", "cap/events.parquet", "whatif/summary.json",
                 "cx/counterexample.pftrace", "r/memops.parquet"):
        assert (tmp_path / path).is_file(), path
