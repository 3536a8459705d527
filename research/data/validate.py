"""Checks shared by the in-memory loaders (``sources``) and the streaming converter (``prepare``).

Size: one module because it is the one place both loading paths (``sources``, ``prepare``) take
their checks and the decisions below from; the physical-line ``Locator`` is ``research.data.locate``.

Every problem a user can cause raises ``research.errors.DataError`` naming the file, the 1-based
*physical* line (the header is line 1) and the column. Pandas reads the files in chunks and knows
only record numbers; a record can differ from a line (blank lines are skipped, a quoted field may
hold a newline), so the line of a bad record is found by re-reading the file with the ``csv``
module up to that record (``research.data.locate.Locator``). That costs one pass over the head of
the file, and only on the error path.

Decisions recorded here so both paths apply them the same way:

* Duplicate ``(user, item)`` rows: the last one in file order is kept (it is the latest state of a
  MAL list); the others are dropped under reason ``duplicate``.
* The order of the row filters is: ``truncated_last_line`` -> ``duplicate`` -> ``plan_to_watch``
  -> ``unrated`` -> ``min_user_ratings``. Unscored plan-to-watch rows (animelist status 6) are
  never interactions (nobody watched anything), so they are dropped even with ``unrated = "keep"``.
  A row is counted under the first reason that drops it, so ``rows_read == rows_kept +
  sum(rows_dropped)`` always.
* Ratings of anime that are not in the catalogue are **kept and counted** under
  ``rows_flagged["unknown_anime"]`` (not dropped): the rating is real user behaviour, the 2020
  catalogue is simply older or smaller than the lists; collaborative models need no side features,
  and ``build_dataset`` gives such anime NaN / [] side features.
* Ids must be integers (or integral numbers such as ``1.0``) in the int64 range; other ids are an
  error (the generic adapter does not invent codes for string ids: map them first). They are
  parsed exactly, never through a float (which cannot tell ``2**53`` from ``2**53 + 1``).
* Ratings are stored as float32: a finite rating that would become ``inf`` or (nonzero) ``0`` in
  that cast is an error, like any other bad rating.
* A header that names a column twice (case-insensitively) is an error: which one is meant?
* A physical line of a ratings file longer than ``MAX_LINE_BYTES`` (1 MiB; a rating line is ~20
  bytes) is an error naming its line, found while the file is hashed (``sha256_file``), before
  pandas would buffer it: a file with no line breaks (a binary file, a 2 GB one-line header) ends
  there, in linear time and bounded memory. Catalogues (read whole, where a synopsis may be long)
  allow ``MAX_CATALOGUE_LINE_BYTES`` (64 MiB). A column name longer than ``MAX_NAME_CHARS`` is an
  error too.
* Lines of only spaces and tabs are skipped as pandas skips them (they are not records); reported
  lines are always the file's physical lines.
"""
from __future__ import annotations

import csv
import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from research.data.locate import FIELD_LIMIT
from research.errors import DataError

# the reasons a row can be dropped for, in the order the filters run
DROP_REASONS = ("truncated_last_line", "duplicate", "plan_to_watch", "unrated", "min_user_ratings")

PLAN_TO_WATCH = 6  # MAL watching_status code: on the list, never watched

_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min

BOMS = {
    b"\xef\xbb\xbf": "utf-8",
    b"\xff\xfe": "utf-16-le",
    b"\xfe\xff": "utf-16-be",
}


def short(value, limit: int = 40) -> str:
    """repr of a value, cut to ``limit`` characters (a 10 MB field must not flood the message)."""
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


MAX_LINE_BYTES = 1 << 20  # longest physical line of a ratings file (see the module docstring)
MAX_CATALOGUE_LINE_BYTES = 1 << 26  # of a catalogue (read whole; a synopsis can be long)
MAX_NAME_CHARS = 256  # longest column name accepted in a header


def sha256_file(path: Path, max_line: int = MAX_LINE_BYTES, delimiter: str = ",") -> str:
    """The file's sha256; raises DataError at the first physical line longer than ``max_line``
    bytes. One pass: blocks of ``max_line // 2`` bytes are hashed, and only a block holding no
    line break (so a line of at least that length passes through it) has its line measured."""
    digest = hashlib.sha256()
    step = max(1, max_line // 2)
    with open(path, "rb") as fh:
        prev, offset = b"", 0
        while True:
            block = fh.read(step)
            if not block:
                break
            digest.update(block)
            if b"\n" not in block and b"\r" not in block:
                # the previous block holds a line break (else its line, measured then, would end in
                # this block) or this is the first block: the long line starts after that break
                start = offset - len(prev) + max(prev.rfind(b"\n"), prev.rfind(b"\r")) + 1
                _check_line_at(path, start, max_line, delimiter)
            prev, offset = block, offset + len(block)
    return digest.hexdigest()


def _check_line_at(path: Path, start: int, max_line: int, delimiter: str) -> None:
    """Raise DataError if the line starting at byte ``start`` is longer than ``max_line`` bytes."""
    with open(path, "rb") as fh:
        fh.seek(start)
        text = fh.read(max_line + 1)
        if len(text) <= max_line or b"\n" in text or b"\r" in text:
            return
        line = _count_breaks(fh, start) + 1
    column = None
    if b'"' not in text:  # no quoting: the field the limit falls in is told by the delimiters
        column = text.count(delimiter.encode("latin-1")) + 1
    raise DataError(path, f"the line is longer than {human_size(max_line)}, the longest line accepted "
                          f"in this file (the wrong file, or no line breaks?)",
                    line=line, column=column)


def _count_breaks(fh, end: int) -> int:
    """Line breaks (LF, CRLF, lone CR) in the first ``end`` bytes of ``fh``."""
    fh.seek(0)
    n, at, last = 0, 0, b""
    while at < end:
        block = fh.read(min(1 << 22, end - at))
        if not block:
            break
        n += block.count(b"\n") + block.count(b"\r") - block.count(b"\r\n")
        if last == b"\r" and block[:1] == b"\n":
            n -= 1
        last, at = block[-1:], at + len(block)
    return n


def human_size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n:,} bytes"


def check_names(path: Path, names: list[str]) -> None:
    """Raise DataError (line 1, the field's 1-based position) for a header field longer than
    ``MAX_NAME_CHARS``: no column is called that; the first line is data, or not CSV."""
    for i, name in enumerate(names):
        if len(name) > MAX_NAME_CHARS:
            raise DataError(path, f"header field {i + 1} is {len(name):,} characters long; a column name is at "
                                  f"most {MAX_NAME_CHARS} (is line 1 a header?)", line=1, column=i + 1)


# ---------------------------------------------------------------------------------------------
# Per-file bookkeeping


@dataclass
class FileStats:
    """What happened to the rows of one file (one entry of ``manifest["files"]``).

    ``rows_dropped`` counts rows removed per reason; ``rows_flagged`` counts rows that were kept
    but are worth knowing about (``unknown_anime``, ``unknown_status``, ``encoding_fallback`` ...).
    """

    name: str
    sha256: str = ""
    rows_read: int = 0
    rows_dropped: Counter = field(default_factory=Counter)
    rows_flagged: Counter = field(default_factory=Counter)
    format: dict = field(default_factory=dict)

    @property
    def rows_kept(self) -> int:
        return self.rows_read - sum(self.rows_dropped.values())

    def drop(self, reason: str, n: int) -> None:
        if n:
            self.rows_dropped[reason] += int(n)

    def flag(self, reason: str, n: int) -> None:
        if n:
            self.rows_flagged[reason] += int(n)

    def to_dict(self) -> dict:
        out = {"sha256": self.sha256, "rows_read": int(self.rows_read), "rows_kept": int(self.rows_kept),
               "rows_dropped": {k: int(v) for k, v in self.rows_dropped.items() if v}}
        if any(self.rows_flagged.values()):
            out["rows_flagged"] = {k: int(v) for k, v in self.rows_flagged.items() if v}
        if self.format:
            out["format"] = dict(self.format)
        return out


def check_balance(manifest: dict) -> None:
    """Raise AssertionError unless ``rows_read == rows_kept + sum(rows_dropped)`` for every file."""
    for name, f in manifest["files"].items():
        dropped = sum(f["rows_dropped"].values())
        if f["rows_read"] != f["rows_kept"] + dropped:
            raise AssertionError(f"{name}: read {f['rows_read']} != kept {f['rows_kept']} + dropped {dropped}")


# ---------------------------------------------------------------------------------------------
# The first line, encodings, line endings


@dataclass
class Head:
    """What the first line of a file says."""

    bom: str  # "" or the encoding the BOM announces
    bom_len: int
    first_line: str  # decoded as latin-1, without the line ending
    line_ending: str  # "crlf" | "lf" | "cr" | "none" (a one-line file)
    final_newline: bool
    size: int


def read_head(path: Path) -> Head:
    """Read the first line and the last byte of ``path``. Raises DataError for an empty file and
    for UTF-16 files (which pandas would read as garbage)."""
    size = path.stat().st_size
    if size == 0:
        raise DataError(path, "the file is empty (0 bytes)", line=1)
    with open(path, "rb") as fh:
        start = fh.read(1 << 16)
        bom, bom_len = "", 0
        for mark, enc in BOMS.items():
            if start.startswith(mark):
                bom, bom_len = enc, len(mark)
                break
        if bom.startswith("utf-16"):
            raise DataError(path, f"the file is {bom.upper()} (byte-order mark); convert it to UTF-8", line=1)
        buf = bytearray(start[bom_len:])
        # grow the buffer until the first line ends, up to MAX_LINE_BYTES (linear: a bytearray)
        while b"\n" not in buf and b"\r" not in buf and len(buf) <= MAX_LINE_BYTES:
            more = fh.read(1 << 20)
            if not more:
                break
            buf += more
        buf = bytes(buf)
        fh.seek(size - 1)
        last = fh.read(1)
    cut = len(buf)
    for ch in (b"\n", b"\r"):
        at = buf.find(ch, 0, cut)
        if at >= 0:
            cut = at
    if cut > MAX_LINE_BYTES:
        raise DataError(path, f"line 1 is longer than {human_size(MAX_LINE_BYTES)}, the longest line accepted "
                              f"(no header is that long: the wrong file, or no line breaks?)", line=1)
    if cut == len(buf):
        ending = "none"
    elif buf[cut] == 13:
        ending = "crlf" if buf[cut + 1:cut + 2] == b"\n" else "cr"
    else:
        ending = "lf"
    return Head(bom, bom_len, buf[:cut].decode("latin-1"), ending, last in (b"\n", b"\r"), size)


def split_line(line: str, delimiter: str) -> list[str]:
    """Fields of one CSV line (quote-aware; any field up to ``FIELD_LIMIT`` long)."""
    if csv.field_size_limit() < FIELD_LIMIT:
        csv.field_size_limit(FIELD_LIMIT)
    rows = list(csv.reader([line], delimiter=delimiter))
    return rows[0] if rows else []


def looks_like_int(token: str) -> bool:
    t = token.strip()
    if t.startswith(("-", "+")):
        t = t[1:]
    return t.isdigit()


def delimiter_hint(line: str, delimiter: str) -> str:
    """' (the file looks ';'-delimited)' when another delimiter splits the header better."""
    n = len(split_line(line, delimiter))
    best = max(((len(split_line(line, d)), d) for d in (",", ";", "\t", "|", " ") if d != delimiter),
               default=(0, ""))
    if best[0] > n and best[0] >= 2:
        return f" (the line has {n} field(s) with {delimiter!r} but {best[0]} with {best[1]!r}: wrong delimiter?)"
    return ""


def decode_text(path: Path, data: bytes, stats: FileStats) -> str:
    """Decode a (small) text file as UTF-8; lines that are not valid UTF-8 are decoded as
    Windows-1252 / Latin-1 instead and counted under ``rows_flagged["encoding_fallback"]``
    (lines, which for these catalogues are rows)."""
    for mark, enc in BOMS.items():
        if data.startswith(mark):
            if enc.startswith("utf-16"):
                raise DataError(path, f"the file is {enc.upper()} (byte-order mark); convert it to UTF-8", line=1)
            data = data[len(mark):]
            stats.format["bom"] = True
            break
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    out, fallback = [], 0
    for raw in data.splitlines(keepends=True):
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            fallback += 1
            try:
                out.append(raw.decode("cp1252"))
            except UnicodeDecodeError:
                out.append(raw.decode("latin-1"))
    stats.flag("encoding_fallback", fallback)
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Column checks. They return values or raise ``BadValue`` with the position inside the chunk;
# the caller knows the record offset and the locator, and raises the DataError.


class BadValue(Exception):
    """A value at position ``pos`` of a column is wrong."""

    def __init__(self, pos: int, message: str):
        super().__init__(message)
        self.pos = int(pos)
        self.message = message


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _missing(raw) -> bool:
    return raw is None or raw is pd.NA or (isinstance(raw, float) and math.isnan(raw))


_EXACT_FLOAT = 2.0 ** 53  # every integer below this is exact in a float64, not all at or above it
_INT_TEXT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_INT64_RANGE = "the int64 range, -2**63 .. 2**63-1"


def int_column(values: pd.Series, *, nonnegative: bool = False) -> np.ndarray:
    """Integer ids as int64, parsed exactly. Empty cells, non-integers and values out of the int64
    range raise ``BadValue`` at the first offending position.

    Integer columns are taken as they are; text (and object) columns are parsed digit by digit
    (integral decimals such as ``1.0`` / ``1e3`` through ``Decimal``, never through a float). A
    float column is accepted only below 2**53, where floats are exact: ``sources.iter_chunks``
    re-reads a float-typed id column as text rather than passing it here."""
    dtype = values.dtype
    if dtype.kind == "i":
        arr = values.to_numpy().astype(np.int64, copy=False)
    elif dtype.kind == "u":
        raw = values.to_numpy()
        big = raw > np.uint64(_INT64_MAX)
        if big.any():
            pos = _first(big)
            raise BadValue(pos, f"{short(values.iloc[pos])} is out of {_INT64_RANGE}")
        arr = raw.astype(np.int64)
    elif dtype.kind == "f":
        arr = _float_ids(values)
    else:
        arr = _text_ids(values)
    if nonnegative and len(arr) and arr.min() < 0:
        pos = _first(arr < 0)
        raise BadValue(pos, f"{arr[pos]} is negative (ids are >= 0 in this source)")
    return arr


def _float_ids(values: pd.Series) -> np.ndarray:
    fl = values.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(fl) | (np.floor(fl) != fl) | (np.abs(fl) >= _EXACT_FLOAT)
    if bad.any():
        pos = _first(bad)
        raw = values.iloc[pos]
        if _missing(raw):
            raise BadValue(pos, "missing value (empty field, or too few fields on the line)")
        if np.isfinite(fl[pos]) and np.floor(fl[pos]) == fl[pos]:
            raise BadValue(pos, f"{short(raw)} was read as a float, which is not exact at or beyond 2**53")
        raise BadValue(pos, f"{short(raw)} is not an integer id")
    return fl.astype(np.int64)


def _text_ids(values: pd.Series) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    try:  # the common case, all plain digits: pyarrow's exact string -> int64 cast
        arr = pc.cast(pc.utf8_trim_whitespace(pa.array(values, from_pandas=True)), pa.int64())
        if arr.null_count == 0:
            return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.int64)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        pass
    out = np.empty(len(values), dtype=np.int64)
    for pos, v in enumerate(values.to_numpy(dtype=object)):
        out[pos] = _exact_int(v, pos)
    return out


def _exact_int(v, pos: int) -> int:
    """One id value (str, int or float) as an int64, exactly, or ``BadValue``."""
    if _missing(v) or (isinstance(v, str) and not v.strip()):
        raise BadValue(pos, "missing value (empty field, or too few fields on the line)")
    n = None
    if isinstance(v, (bool, np.bool_)):
        pass
    elif isinstance(v, (int, np.integer)):
        n = int(v)
    elif isinstance(v, (float, np.floating)):
        if math.isfinite(v) and float(v).is_integer():
            if abs(v) >= _EXACT_FLOAT:
                raise BadValue(pos, f"{short(v)} was read as a float, which is not exact at or beyond 2**53")
            n = int(v)
    elif isinstance(v, str):
        t = v.strip()
        if _INT_TEXT.fullmatch(t):
            n = int(t)
        elif _DECIMAL_TEXT.fullmatch(t):
            from decimal import Decimal

            d = Decimal(t)
            if d == d.to_integral_value():
                if d.adjusted() > 19:  # never build the int of "1e999999999"
                    raise BadValue(pos, f"{short(v)} is out of {_INT64_RANGE}")
                n = int(d)
    if n is None:
        raise BadValue(pos, f"{short(v)} is not an integer id")
    if not _INT64_MIN <= n <= _INT64_MAX:
        raise BadValue(pos, f"{short(v)} is out of {_INT64_RANGE}")
    return n


@dataclass(frozen=True)
class RatingScale:
    """What a rating column may hold.

    Args:
        label: for messages.
        integer: whether ratings must be whole numbers.
        low, high: the inclusive range of real ratings.
        unrated: codes meaning "watched, not scored" (read as NaN).
    """

    label: str
    integer: bool
    low: float
    high: float
    unrated: tuple = ()


MAL_SCALE = RatingScale("MyAnimeList score (1-10, 0 = watched, not scored)", True, 1, 10, (0,))
COOPERUNION_SCALE = RatingScale("CooperUnion rating (1-10, -1 = watched, not rated)", True, 1, 10, (-1,))
GENERIC_SCALE = RatingScale("rating (any finite number)", False, -math.inf, math.inf, ())


def rating_column(values: pd.Series, scale: RatingScale) -> np.ndarray:
    """Ratings as float32 with NaN for the scale's "unrated" codes; anything else outside the scale
    raises ``BadValue``."""
    num = pd.to_numeric(values, errors="coerce") if not pd.api.types.is_numeric_dtype(values.dtype) else values
    arr = np.asarray(num.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        pos = _first(bad)
        raw = values.iloc[pos]
        if _missing(raw):
            raise BadValue(pos, "missing rating (empty field, or too few fields on the line)")
        raise BadValue(pos, f"{short(raw)} is not a number ({scale.label})")
    unrated = np.isin(arr, scale.unrated) if scale.unrated else np.zeros(len(arr), bool)
    if scale.integer:
        frac = np.floor(arr) != arr
        if frac.any():
            pos = _first(frac)
            raise BadValue(pos, f"{short(values.iloc[pos])} is not a whole number ({scale.label})")
    out = (~unrated) & ((arr < scale.low) | (arr > scale.high))
    if out.any():
        pos = _first(out)
        raise BadValue(pos, f"{short(values.iloc[pos])} is out of range ({scale.label})")
    with np.errstate(over="ignore"):
        res = arr.astype(np.float32)
    big = ~np.isfinite(res)
    tiny = (res == 0) & (arr != 0)
    if big.any() or tiny.any():
        pos = _first(big | tiny)
        raw = short(values.iloc[pos])
        if big[pos]:
            raise BadValue(pos, f"{raw} is too large for a rating (stored as a 32-bit float: at most 3.4e+38)")
        raise BadValue(pos, f"{raw} is too small for a rating: as a 32-bit float it would be 0 "
                            f"(a nonzero rating needs a magnitude of at least 1.4e-45)")
    res[unrated] = np.nan
    return res


def small_int_column(values: pd.Series, low: int = 0, high: int = 127) -> np.ndarray:
    """A small integer code (watching_status) as int8."""
    arr = int_column(values)
    bad = (arr < low) | (arr > high)
    if bad.any():
        pos = _first(bad)
        raise BadValue(pos, f"{arr[pos]} is out of range [{low}, {high}]")
    return arr.astype(np.int8)


# ---------------------------------------------------------------------------------------------
# Row filters, shared by both paths (in ``prepare`` they run per user-hash bucket; every user's
# rows are in one bucket, so the result is the same as on the whole file).


def keep_last_mask(user: np.ndarray, item: np.ndarray) -> np.ndarray:
    """Boolean mask keeping the last row of each ``(user, item)`` pair (in array order)."""
    n = len(user)
    if n == 0:
        return np.ones(0, bool)
    if user.min() >= 0 and item.min() >= 0 and user.max() < 2 ** 31 and item.max() < 2 ** 32:
        key = (user.astype(np.int64) << 32) | item.astype(np.int64)
        dup = pd.Series(key, copy=False).duplicated(keep="last").to_numpy()
    else:
        dup = pd.DataFrame({"u": user, "i": item}).duplicated(keep="last").to_numpy()
    return ~dup


def apply_row_filters(cols: dict, stats: FileStats, unrated: str, min_user_ratings: int) -> dict:
    """Duplicates (keep last), unrated rows (``unrated`` = "drop" | "keep" | "zero": read as 0/10,
    the original study's choice), users with fewer than
    ``min_user_ratings`` rated rows. Counts each dropped row once in ``stats``.

    Args:
        cols: column name -> numpy array (``user``, ``item``, ``rating`` and optional extras).
    """
    if unrated not in ("drop", "keep", "zero"):
        from research.errors import ConfigError

        raise ConfigError(f"data.unrated must be 'drop', 'keep' or 'zero', not {unrated!r}")
    keep = keep_last_mask(cols["user"], cols["item"])
    stats.drop("duplicate", int((~keep).sum()))
    if not keep.all():
        cols = {k: v[keep] for k, v in cols.items()}
    if unrated == "zero":
        # the original study's reading: score 0 is a rating of 0/10, every list row kept
        # (plan-to-watch included). Offered to reproduce it, not as a sound default.
        cols = dict(cols)
        cols["rating"] = np.where(np.isnan(cols["rating"]), np.float32(0.0), cols["rating"]).astype(np.float32)
    if "status" in cols and len(cols["status"]):
        ptw = (cols["status"] == PLAN_TO_WATCH) & np.isnan(cols["rating"])
        stats.drop("plan_to_watch", int(ptw.sum()))
        if ptw.any():
            cols = {k: v[~ptw] for k, v in cols.items()}
    if unrated == "drop":
        rated = ~np.isnan(cols["rating"])
        stats.drop("unrated", int((~rated).sum()))
        if not rated.all():
            cols = {k: v[rated] for k, v in cols.items()}
    if min_user_ratings > 1 and len(cols["user"]):
        rated_users = cols["user"][~np.isnan(cols["rating"])]
        uniq, counts = np.unique(rated_users, return_counts=True)
        ok_users = uniq[counts >= min_user_ratings]
        ok = np.isin(cols["user"], ok_users)
        stats.drop("min_user_ratings", int((~ok).sum()))
        if not ok.all():
            cols = {k: v[ok] for k, v in cols.items()}
    return cols


def flag_references(cols: dict, stats: FileStats, catalogue_ids: np.ndarray | None,
                    status_codes: np.ndarray | None = None) -> None:
    """Count kept rows whose anime is not in the catalogue (``unknown_anime``) and whose watching
    status is not a known code (``unknown_status``). They stay in the data."""
    if catalogue_ids is not None and len(cols["item"]):
        stats.flag("unknown_anime", int((~np.isin(cols["item"], catalogue_ids)).sum()))
    if status_codes is not None and "status" in cols and len(cols["status"]):
        stats.flag("unknown_status", int((~np.isin(cols["status"], status_codes)).sum()))
