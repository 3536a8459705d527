"""Record number -> physical line in a CSV file: ``Locator``, and the parse errors it names.

Pandas reads the files in chunks and knows only record numbers; a record can differ from a line
(blank lines are skipped, a quoted field may hold a newline), so the line of a bad record is found
by re-reading the file up to that record. That costs one pass over the head of the file, and only
on the error path. ``research.data.validate`` re-exports every name.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from research.errors import DataError

FIELD_LIMIT = 1 << 26  # the longest field the csv module reads while locating (64 MiB)


class _Tap:
    """Iterates the lines of ``fh`` and remembers the last one (to tell a line of spaces from a
    record)."""

    def __init__(self, fh):
        self.fh, self.last = fh, ""

    def __iter__(self):
        return self

    def __next__(self):
        self.last = next(self.fh)
        return self.last


class Locator:
    """Maps 0-based data record numbers (as pandas counts them) to 1-based physical lines.

    One scan (``_records``) gives every record's first line and number of fields, in file order,
    skipping what pandas skips: blank lines and lines of only spaces and tabs. A file on disk is
    read in pieces of whole lines; while a piece holds no quote and no lone CR, each of its
    non-blank lines is one record, found with numpy (~1 GB/s); from the first piece that is not
    that simple on, the ``csv`` module reads record by record (~2M rows/s), which handles quoted
    newlines and CR line ends exactly as pandas does. Text already in memory is read by the
    ``csv`` module throughout.

    Args:
        path: the file (named in errors).
        delimiter: field delimiter.
        header: whether line 1 is a header.
        text: the decoded text, for files already in memory; else the file is re-read as Latin-1
            (every byte is one character, so line breaks are found exactly).
    """

    PIECE = 1 << 22
    BATCH = 1 << 16  # records the csv path hands on at once

    def __init__(self, path: Path, delimiter: str, header: bool, text: str | None = None):
        self.path, self.delimiter, self.header, self.text = Path(path), delimiter, header, text
        self.blank = " \t".replace(delimiter, "")  # what a skipped line may hold besides its line end

    def line(self, record: int) -> int:
        """Physical line on which data record ``record`` starts (the last record's past the end)."""
        target = record + (1 if self.header else 0)  # the header is record 0 of the scan
        seen, last = 0, 1
        for starts, _ in self._records():
            if seen + len(starts) > target:
                return int(starts[target - seen])
            seen += len(starts)
            last = int(starts[-1]) if len(starts) else last
        return last

    def first_bad_width(self, n_fields: int) -> tuple[int, int]:
        """(line, number of fields) of the first record without ``n_fields`` fields (the header
        included); the number is -1 for a record the ``csv`` module cannot read."""
        for starts, widths in self._records():
            bad = np.flatnonzero(widths != n_fields)
            if len(bad):
                return int(starts[bad[0]]), int(widths[bad[0]])
        return 1, -1

    def _records(self):
        """(first lines, field counts) of the records in file order, header included, as arrays
        a batch at a time. A record the ``csv`` module cannot read counts -1 fields and ends it."""
        offset = lines = 0
        for piece in self._simple_pieces():
            starts, widths, n = self._piece_records(piece, lines)
            yield starts, widths
            offset, lines = offset + len(piece), lines + n
        batch = []
        for start, row in self._rows(offset, lines):
            batch.append((start, -1 if row is None else len(row)))
            if len(batch) == self.BATCH:
                yield tuple(np.array(b) for b in zip(*batch))
                batch = []
        if batch:
            yield tuple(np.array(b) for b in zip(*batch))

    def _simple_pieces(self):
        """The file's leading pieces of whole lines that hold no quote and no lone CR."""
        if self.text is not None:
            return
        with open(self.path, "rb") as fh:
            carry = b""
            while block := fh.read(self.PIECE):
                data = carry + block
                cut = data.rfind(b"\n") + 1
                piece, carry = data[:cut], data[cut:]
                if not piece:
                    continue  # no line end yet: a long line
                if b'"' in piece or piece.count(b"\r") != piece.count(b"\r\n"):
                    return
                yield piece

    def _piece_records(self, piece: bytes, lines: int):
        """(first lines, field counts, lines in the piece) of a simple piece that starts on line
        ``lines + 1``: one record per line that holds anything but blanks and its line end."""
        arr = np.frombuffer(piece, np.uint8)
        ends = np.flatnonzero(arr == 10)
        starts = np.concatenate([[0], ends[:-1] + 1])
        filler = np.zeros(256, dtype=bool)
        filler[list((self.blank + "\r\n").encode("latin-1"))] = True
        filled = np.add.reduceat(~filler[arr], starts, dtype=np.int64) > 0
        fields = np.add.reduceat(arr == ord(self.delimiter), starts, dtype=np.int64) + 1
        return lines + 1 + np.flatnonzero(filled), fields[filled], len(ends)

    def _rows(self, offset: int = 0, line0: int = 0):
        """(start line, fields) of every record from byte ``offset`` (a line start that is line
        ``line0 + 1``), header included when offset is 0. Blank lines and lines of only spaces and
        tabs (the delimiter aside) are skipped, as pandas skips them. A record the ``csv`` module
        cannot read yields ``(its line, None)`` and ends the rows."""
        import io

        if csv.field_size_limit() < FIELD_LIMIT:
            csv.field_size_limit(FIELD_LIMIT)
        if self.text is not None:
            fh = io.StringIO(self.text, newline="")
        else:
            raw = open(self.path, "rb")
            raw.seek(offset)
            fh = io.TextIOWrapper(raw, encoding="latin-1", newline="")
        tap = _Tap(fh)
        with fh:
            reader = csv.reader(tap, delimiter=self.delimiter)
            prev_end = line0
            try:
                for row in reader:
                    start = prev_end + 1
                    prev_end = line0 + reader.line_num
                    if not row:  # a blank line: pandas skips it, it is not a record
                        continue
                    if start == prev_end and len(row) == 1 and not tap.last.strip(self.blank + "\r\n"):
                        continue  # spaces / tabs only: pandas skips that line too
                    yield start, row
            except csv.Error:
                yield prev_end + 1, None  # e.g. a field over FIELD_LIMIT: report where it starts

    def unclosed_quote(self) -> tuple[int, int] | None:
        """(line, 1-based field) where a quoted field opens that the file ends inside, or None.

        The ``csv`` module, like pandas, reads an unclosed quoted field to the end of the file, so
        it is the last field of the last record; that record is read again in strict mode, which
        fails with "unexpected end of data" only then."""
        import io

        last, fields = None, 0
        for start, row in self._rows():
            if row is None:
                return None
            last, fields = start, len(row)
        if last is None:
            return None
        if self.text is not None:
            tail = io.StringIO(self.text, newline="")
        else:
            tail = io.TextIOWrapper(open(self.path, "rb"), encoding="latin-1", newline="")
        for _ in range(last - 1):  # lines as the csv module splits them (LF, CRLF, lone CR)
            tail.readline()
        with tail:
            try:
                for _row in csv.reader(tail, delimiter=self.delimiter, strict=True):
                    pass
            except csv.Error as exc:
                if "unexpected end of data" in str(exc):
                    return last, fields
        return None


def parser_error(path: Path, exc: Exception, locator: Locator, n_fields: int, what: str = "") -> DataError:
    """Turn a pandas / pyarrow parse error into a DataError with the true physical line."""
    if "EOF inside string" in str(exc):
        quote = locator.unclosed_quote()
        if quote is not None:
            return unclosed_quote_error(path, *quote)
    line, seen = locator.first_bad_width(n_fields)
    if seen > n_fields:
        return DataError(path, f"expected {n_fields} fields{what}, found {seen} (unquoted delimiter in a "
                               f"value, or the wrong delimiter?)", line=line)
    if seen >= 0:
        return DataError(path, f"expected {n_fields} fields{what}, found {seen} (a line cut short?)", line=line)
    msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return DataError(path, f"cannot parse the file: {msg}", line=line if line > 1 else None)


def unclosed_quote_error(path: Path, line: int, field: int) -> DataError:
    return DataError(path, "a quoted field opens on this line and is never closed: the file ends inside "
                           "it (a stray '\"'?)", line=line, column=field)
