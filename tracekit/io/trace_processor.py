"""Perfetto's own trace processor (``trace_processor_shell``), run as a subprocess: find it, run
SQL over a trace, get rows back.

tracekit does not ship the binary; it is used when the user has one (on ``PATH``, named by
``--shell`` or ``$TRACE_PROCESSOR_SHELL``). Nothing is downloaded.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tracekit.errors import TracekitError

ENV = "TRACE_PROCESSOR_SHELL"
NAME = "trace_processor_shell"


def find_shell(explicit: str | None = None) -> str | None:
    """The trace processor to use: ``explicit``, else ``$TRACE_PROCESSOR_SHELL``, else
    ``trace_processor_shell`` on PATH; None when there is none. A path given but not
    executable is an error."""
    given = explicit or os.environ.get(ENV)
    if given:
        path = shutil.which(given) or given
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            source = "--shell" if explicit else f"${ENV}"
            raise TracekitError(f"{source}={given!r} is not an executable trace_processor_shell",
                                fix=f"point {source} at the binary, or unset it to use the one on PATH")
        return path
    return shutil.which(NAME)


def query(shell: str, trace: str | os.PathLike[str], sql: str, *, timeout: float = 600) -> list[list[dict[str, str]]]:
    """Run the ``;``-separated statements of ``sql`` over ``trace``; one list of rows (column ->
    text, as the shell prints them) per statement that returns rows."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(sql)
        name = f.name
    try:
        p = subprocess.run([shell, "query", "-f", name, str(trace)], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TracekitError(f"the trace processor took more than {timeout:.0f} s", where=str(trace),
                            fix="try a smaller trace") from None
    finally:
        Path(name).unlink(missing_ok=True)
    if p.returncode != 0:
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        raise TracekitError(f"the trace processor could not run the query: {(lines or ['no output'])[-1][:200]}",
                            where=str(trace), fix="check the file with tracekit validate")
    return _blocks(p.stdout)


def _blocks(stdout: str) -> list[list[dict[str, str]]]:
    out: list[list[dict[str, str]]] = []
    for block in stdout.split("\n\n"):
        if not block.strip():
            continue
        rows = list(csv.reader(io.StringIO(block.strip("\n"))))
        out.append([dict(zip(rows[0], r)) for r in rows[1:]])
    return out
