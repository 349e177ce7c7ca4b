"""The one exception type users see.

A :class:`TracekitError` renders as one line: where (file, column, row), what was wrong, and what to
do. The CLI prints it as ``tracekit: error: <line>`` and exits with status 2.
"""

from __future__ import annotations


class TracekitError(Exception):
    """Bad input or an impossible request, explained in one line.

    >>> str(TracekitError("expert 300 out of range [0, 256)", where="r.parquet: column topk_expert row 17"))
    'r.parquet: column topk_expert row 17: expert 300 out of range [0, 256)'
    """

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.where}: {self.what}" if self.where else self.what
        if self.fix:
            text += f" ({self.fix})"
        return " ".join(text.split())

    def located(self, where: str) -> "TracekitError":
        """The same error with ``where`` prefixed (e.g. the file name)."""
        loc = f"{where}: {self.where}" if self.where else where
        return TracekitError(self.what, where=loc, fix=self.fix)


class ConservationError(TracekitError):
    """A replay lost, duplicated or misdelivered tokens or bytes: a bug, never a warning."""
