"""Errors a user can fix. The CLI prints them on one line and exits with code 2, no traceback."""
from __future__ import annotations


class AnimeRecError(Exception):
    """Base class for errors caused by input (data files, configs, arguments), not by bugs."""


class DataError(AnimeRecError):
    """A data file is malformed. Names the file, and the line and column when they are known.

    Args:
        path: the file.
        message: what is wrong.
        line: 1-based physical line number in the file (the header is line 1), if known.
        column: the column name (or 1-based position), if known.
    """

    def __init__(self, path, message: str, line: int | None = None, column: str | int | None = None):
        self.path = str(path)
        self.line = line
        self.column = column
        self.reason = message
        where = self.path
        if line is not None:
            where += f":{line}"
        if column is not None:
            where += f": column {column!r}" if isinstance(column, str) else f": column {column}"
        super().__init__(f"{where}: {message}")


class ConfigError(AnimeRecError):
    """A config file or a ``--set`` override is wrong (unknown key, wrong type, bad model name)."""


class ResourceError(AnimeRecError):
    """A job would not fit in this machine's memory; the message points to the streaming path."""
