"""Schema adapters: raw rating and catalogue files -> one frame, one item table, one manifest.

Size: one module because the three adapters (mal2020, cooperunion2017, generic) differ only in
how ``plan_files`` finds and names their columns; reading, catalogues and the memory guard are shared.

``load(adapter, raw_dir, data_cfg)`` returns ``(frame, item_table, manifest)``:

* ``frame``: columns ``user`` (int64 external id), ``item`` (int64 anime id), ``rating`` (float32 on
  the source scale, NaN = watched but not scored), optional ``status`` (int8 MAL watching_status)
  and, for the generic adapter with ``data.timestamp_col``, ``timestamp`` (int64). Rows are in file
  order, minus the dropped ones.
* ``item_table``: indexed by anime id (int64, index name ``anime_id``) with the columns the source
  has among ``name`` (HTML entities unescaped; NaN when empty), ``genres`` and ``studios`` (lists of
  str, [] for ``Unknown``), ``type`` and ``source`` (str, NaN for ``Unknown``), ``episodes``,
  ``score``, ``members`` (float64, NaN for ``Unknown``) and ``synopsis`` (str, "" when missing or
  one of MAL's two "No synopsis ... has been added" placeholders, which are counted under
  ``rows_flagged["placeholder_synopsis"]``). ``None`` when the source has no catalogue file.
* ``manifest``: ``{"files": {name: {"sha256", "rows_read", "rows_kept", "rows_dropped": {reason: n},
  ["rows_flagged": {reason: n}], ["format": {...}]}}}``, ``rows_read == rows_kept +
  sum(rows_dropped)`` for every file (``validate.check_balance``).

Adapters and their default files (``data.ratings`` / ``data.catalogue`` / ``data.synopsis`` override
them, relative to ``raw_dir`` or absolute):

* ``mal2020``: ratings ``rating_complete.csv``, else the single ``rating_complete*.csv``, else
  ``animelist.csv`` / the single ``animelist*.csv``. The layout is told by the header:
  ``user_id, anime_id, rating`` (rating_complete) or ``user_id, anime_id, score|rating,
  watching_status, watched_episodes`` (animelist; ``status`` is kept). A headerless file with 3 or 5
  fields is read in those orders. Scores are whole numbers 1-10, 0 = watched, not scored.
  Catalogue ``anime.csv`` joined with ``anime_with_synopsis.csv`` (column ``sypnopsis``, sic);
  anime only in the synopsis file are added from it. ``watching_status.csv`` (header ``status,
  description``) gives the known status codes; other codes are kept and counted
  (``unknown_status``).
* ``cooperunion2017``: ratings ``rating.csv``, else the single ``rating*.csv``, with or without the
  ``user_id,anime_id,rating`` header (told by whether line 1 holds only integers); ratings 1-10,
  -1 = watched, not rated. Catalogue ``anime.csv`` (its ``rating`` column is the average score and
  becomes ``score``).
* ``generic``: ``data.ratings`` with ``data.delimiter``, ``data.header`` and
  ``data.user_col`` / ``item_col`` / ``rating_col`` / ``timestamp_col`` as column names or 0-based
  positions (strings of digits). Ratings are any finite numbers (no "unrated" code). Ids must be
  integers: string ids are rejected with the line and column (map them to integers first; inventing
  codes here would make ids in results unreadable). A catalogue only when ``data.catalogue`` is set;
  its id column is ``data.item_col`` (when a name), ``item_id``, ``item``, ``anime_id``, ``MAL_ID`` or
  ``id``.

The parquet output of ``animerec prepare`` (``data.source = "processed"``) is read by
``prepare.load_processed``, which returns the same triple; ``load.load_dataset`` chooses between
the two, so data flow one way (raw -> sources -> validate -> prepare -> load).

The files are read in chunks with pandas (Latin-1, so every byte decodes and a stray non-ASCII byte
in a number is reported as a bad value rather than a decoding crash); the CSV line endings (LF,
CRLF), a missing final newline and a UTF-8 byte-order mark are all accepted. A last line that lacks
fields in a file without a final newline (a file cut while copying) is dropped and counted
(``truncated_last_line``); a short line anywhere else is an error. See ``validate`` for the row
filters and their order, and for why ratings of anime missing from the catalogue are kept.

Memory: an in-memory load whose estimated peak (rows x ``BYTES_PER_ROW``) exceeds the available
memory (``/proc/meminfo`` MemAvailable, or ``ANIMEREC_MEMORY_LIMIT``, or the ``memory_limit``
argument) raises ``ResourceError`` before reading, pointing to ``animerec prepare``.
"""
from __future__ import annotations

import difflib
import errno
import html
import io
import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from research.config import RAW_SOURCES as ADAPTERS
from research.data import validate as V
from research.data.locate import Locator, parser_error
from research.data.validate import BadValue, FileStats
from research.errors import ConfigError, DataError, ResourceError

# Peak resident memory of an in-memory load, per rating row: 63 B/row measured (ru_maxrss above the
# import baseline) on an 8M-row synthetic rating_complete.csv -- parse buffers of one chunk, the
# collected columns, their concatenation and the duplicate hash table; 80 leaves a margin.
BYTES_PER_ROW = 80
MEMORY_ENV = "ANIMEREC_MEMORY_LIMIT"

SYNOPSIS_PLACEHOLDERS = ("No synopsis information has been added to this title.",
                         "No synopsis has been added for this series yet.")


# ---------------------------------------------------------------------------------------------
# Finding the files


@dataclass
class RatingsFile:
    """A ratings file and how to read it."""

    path: Path
    kind: str  # rating_complete | animelist | cooperunion | generic
    delimiter: str
    header: bool
    head: V.Head
    n_fields: int
    roles: dict  # role -> 0-based position: user, item, rating[, status][, timestamp]
    labels: dict  # role -> column name (or 1-based position) for messages
    scale: V.RatingScale
    nonnegative_ids: bool = True


@dataclass
class Plan:
    """The files one ``load`` / ``prepare`` reads."""

    adapter: str
    raw_dir: Path
    ratings: RatingsFile
    catalogue: Path | None = None
    catalogue_kind: str = ""
    synopsis: Path | None = None
    status: Path | None = None
    catalogue_delimiter: str = ","
    catalogue_id_names: tuple = ()


def _is_data_file(path: Path) -> bool:
    """True for a regular file (or a symlink to one), False when nothing is there; DataError for
    anything else at that path (a folder, a FIFO, a device, a symlink loop, a dangling symlink),
    which would otherwise be skipped silently, or (a FIFO) block the read forever."""
    try:
        lst = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise DataError(path, f"cannot read this path: {exc.strerror}") from None
    try:
        st = os.stat(path)
    except OSError as exc:
        if not stat.S_ISLNK(lst.st_mode):
            raise DataError(path, f"cannot read this path: {exc.strerror}") from None
        what = "a symbolic link loop" if exc.errno == errno.ELOOP else \
            f"a broken symbolic link (to {os.readlink(path)!r})" if exc.errno == errno.ENOENT else \
            f"a symbolic link that cannot be followed ({exc.strerror})"
        raise DataError(path, f"is {what}, not a data file") from None
    if stat.S_ISREG(st.st_mode):
        return True
    kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode)
            else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode)
            or stat.S_ISBLK(st.st_mode) else "not a regular file")
    raise DataError(path, f"is {kind}, not a data file; move it away or point the config at the file")


def _configured(raw_dir: Path, name: str, what: str) -> Path:
    p = Path(os.path.expanduser(name))
    p = p if p.is_absolute() else raw_dir / p
    if not _is_data_file(p):
        raise ConfigError(f"data.{what}: {name!r} not found (looked for {p.resolve()}, in the raw folder "
                          f"{raw_dir.resolve()})")
    return p


def _pick(raw_dir: Path, patterns: list[str], what: str) -> Path:
    """The first pattern with exactly one match; several matches of a glob are an error. A match
    that is not a regular file is an error (``_is_data_file``)."""
    for pat in patterns:
        hits = sorted(p for p in raw_dir.glob(pat) if _is_data_file(p))
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ConfigError(f"several {what} files match {pat!r} in {raw_dir}: "
                              f"{', '.join(h.name for h in hits)}; set data.ratings to one of them")
    raise DataError(raw_dir, f"no {what} file found (looked for {', '.join(patterns)})")


def _optional(raw_dir: Path, configured: str, default: str | None, what: str) -> Path | None:
    if configured:
        return _configured(raw_dir, configured, what)
    if default and _is_data_file(raw_dir / default):
        return raw_dir / default
    return None


def _delimiter(value: str) -> str:
    d = {"\\t": "\t", "tab": "\t", "\\s": " ", "space": " "}.get(value, value)
    if len(d) != 1:
        raise ConfigError(f"data.delimiter must be one character (or 'tab'), not {value!r}")
    return d


def _missing_column(path: Path, name: str, tokens: list[str], line: str, delimiter: str) -> DataError:
    near = difflib.get_close_matches(name, tokens, n=1, cutoff=0.6)
    hint = f"; did you mean {near[0]!r} (renamed column?)" if near else ""
    return DataError(path, f"missing column {name!r} (the header has {tokens}){hint}"
                           f"{V.delimiter_hint(line, delimiter)}", line=1, column=name)


def _header_tokens(head: V.Head, delimiter: str) -> list[str]:
    return [t.strip() for t in V.split_line(head.first_line, delimiter)]


def _no_duplicate_names(path: Path, names: list[str]) -> None:
    """A header naming a column twice is an error (compared case-insensitively, as columns are
    looked up); empty names are not compared. A name longer than ``V.MAX_NAME_CHARS`` is an
    error too."""
    V.check_names(path, [str(n) for n in names])
    seen = {}
    for i, name in enumerate(names):
        key = str(name).strip().lower()
        if key and key in seen:
            raise DataError(path, f"the header names this column twice (fields {seen[key] + 1} and {i + 1}); "
                                  f"rename or drop one", line=1, column=str(name).strip())
        seen.setdefault(key, i)


def _mal_ratings(path: Path) -> RatingsFile:
    head = V.read_head(path)
    raw = _header_tokens(head, ",")
    tokens = [t.lower() for t in raw]
    if not head.first_line.strip():
        raise DataError(path, "line 1 is empty (expected the header user_id,anime_id,rating)", line=1)
    header = not all(V.looks_like_int(t) for t in tokens)
    if header:
        _no_duplicate_names(path, raw)
        idx = {}
        for i, t in enumerate(tokens):
            idx.setdefault(t, i)
        need = {"user": "user_id", "item": "anime_id"}
        roles, labels = {}, {}
        for role, name in need.items():
            if name not in idx:
                raise _missing_column(path, name, raw, head.first_line, ",")
            roles[role], labels[role] = idx[name], raw[idx[name]]
        rating_name = "rating" if "rating" in idx else "score" if "score" in idx else None
        if rating_name is None:
            raise _missing_column(path, "rating", raw, head.first_line, ",")
        roles["rating"], labels["rating"] = idx[rating_name], raw[idx[rating_name]]
        kind = "rating_complete"
        if "watching_status" in idx:
            kind = "animelist"
            roles["status"], labels["status"] = idx["watching_status"], raw[idx["watching_status"]]
    else:
        n = len(tokens)
        if n not in (3, 5):
            raise DataError(path, f"a headerless MAL ratings file has 3 fields (user_id,anime_id,rating) or 5 "
                                  f"(animelist); line 1 has {n}{V.delimiter_hint(head.first_line, ',')}", line=1)
        kind = "rating_complete" if n == 3 else "animelist"
        roles = {"user": 0, "item": 1, "rating": 2, **({"status": 3} if n == 5 else {})}
        labels = {r: p + 1 for r, p in roles.items()}
    return RatingsFile(path, kind, ",", header, head, len(tokens), roles, labels, V.MAL_SCALE)


def _cooperunion_ratings(path: Path) -> RatingsFile:
    head = V.read_head(path)
    raw = _header_tokens(head, ",")
    tokens = [t.lower() for t in raw]
    header = not all(V.looks_like_int(t) for t in tokens)
    if header:
        _no_duplicate_names(path, raw)
        idx = {t: i for i, t in reversed(list(enumerate(tokens)))}
        roles, labels = {}, {}
        for role, name in (("user", "user_id"), ("item", "anime_id"), ("rating", "rating")):
            if name not in idx:
                raise _missing_column(path, name, raw, head.first_line, ",")
            roles[role], labels[role] = idx[name], raw[idx[name]]
    else:
        if len(tokens) != 3:
            raise DataError(path, f"a headerless CooperUnion rating file has 3 fields (user_id,anime_id,rating); "
                                  f"line 1 has {len(tokens)}{V.delimiter_hint(head.first_line, ',')}", line=1)
        roles = {"user": 0, "item": 1, "rating": 2}
        labels = {r: p + 1 for r, p in roles.items()}
    return RatingsFile(path, "cooperunion", ",", header, head, len(tokens), roles, labels, V.COOPERUNION_SCALE)


def _generic_ratings(path: Path, cfg) -> RatingsFile:
    delimiter = _delimiter(cfg.delimiter)
    head = V.read_head(path)
    raw = _header_tokens(head, delimiter)
    n = len(raw)
    if cfg.header:
        _no_duplicate_names(path, raw)
    specs = {"user": ("user_col", cfg.user_col), "item": ("item_col", cfg.item_col),
             "rating": ("rating_col", cfg.rating_col)}
    if cfg.timestamp_col != "":
        specs["timestamp"] = ("timestamp_col", cfg.timestamp_col)
    roles, labels = {}, {}
    for role, (key, spec) in specs.items():
        spec = str(spec).strip()
        if spec == "":
            raise ConfigError(f"data.{key} is empty: name the column or give its 0-based position")
        pos = None
        if cfg.header:
            if spec in raw:
                pos = raw.index(spec)
            else:
                lower = [t.lower() for t in raw]
                if spec.lower() in lower:
                    pos = lower.index(spec.lower())
        if pos is None and spec.isdigit():
            pos = int(spec)
            if pos >= n:
                raise DataError(path, f"data.{key} = {spec} but line 1 has only {n} field(s)"
                                      f"{V.delimiter_hint(head.first_line, delimiter)}", line=1)
        if pos is None:
            if not cfg.header:
                raise ConfigError(f"data.{key} = {spec!r}: with data.header = false columns are 0-based positions")
            raise _missing_column(path, spec, raw, head.first_line, delimiter)
        roles[role] = pos
        labels[role] = raw[pos] if cfg.header else pos + 1
    return RatingsFile(path, "generic", delimiter, bool(cfg.header), head, n, roles, labels,
                       V.GENERIC_SCALE, nonnegative_ids=False)


def plan_files(adapter: str, raw_dir: Path, cfg) -> Plan:
    """Resolve which files ``adapter`` reads in ``raw_dir`` and how (no data rows are read)."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise ConfigError(f"raw data folder {raw_dir} does not exist")
    if adapter == "mal2020":
        path = (_configured(raw_dir, cfg.ratings, "ratings") if cfg.ratings else
                _pick(raw_dir, ["rating_complete.csv", "rating_complete*.csv", "animelist.csv", "animelist*.csv"],
                      "MAL ratings"))
        rf = _mal_ratings(path)
        return Plan(adapter, raw_dir, rf,
                    catalogue=_optional(raw_dir, cfg.catalogue, "anime.csv", "catalogue"), catalogue_kind="mal2020",
                    synopsis=_optional(raw_dir, cfg.synopsis, "anime_with_synopsis.csv", "synopsis"),
                    status=(raw_dir / "watching_status.csv") if rf.kind == "animelist"
                    and _is_data_file(raw_dir / "watching_status.csv") else None)
    if adapter == "cooperunion2017":
        path = (_configured(raw_dir, cfg.ratings, "ratings") if cfg.ratings else
                _pick(raw_dir, ["rating.csv", "rating*.csv"], "CooperUnion ratings"))
        return Plan(adapter, raw_dir, _cooperunion_ratings(path),
                    catalogue=_optional(raw_dir, cfg.catalogue, "anime.csv", "catalogue"),
                    catalogue_kind="cooperunion2017",
                    synopsis=_optional(raw_dir, cfg.synopsis, None, "synopsis"))
    if adapter == "generic":
        if not cfg.ratings:
            raise ConfigError("data.ratings must name the ratings file for data.source = 'generic'")
        path = _configured(raw_dir, cfg.ratings, "ratings")
        ids = tuple(n for n in (str(cfg.item_col).strip(),) if n and not n.isdigit())
        return Plan(adapter, raw_dir, _generic_ratings(path, cfg),
                    catalogue=_optional(raw_dir, cfg.catalogue, None, "catalogue"), catalogue_kind="generic",
                    synopsis=_optional(raw_dir, cfg.synopsis, None, "synopsis"),
                    catalogue_delimiter=_delimiter(cfg.delimiter), catalogue_id_names=ids)
    raise ConfigError(f"unknown data adapter {adapter!r} (one of {', '.join(ADAPTERS)})")


# ---------------------------------------------------------------------------------------------
# Reading ratings in chunks


def _file_format(rf: RatingsFile) -> dict:
    return {"header": rf.header, "delimiter": rf.delimiter, "line_endings": rf.head.line_ending,
            "final_newline": rf.head.final_newline, "bom": bool(rf.head.bom), "layout": rf.kind}


def new_stats(rf: RatingsFile) -> FileStats:
    return FileStats(rf.path.name, V.sha256_file(rf.path, delimiter=rf.delimiter), format=_file_format(rf))


def iter_chunks(rf: RatingsFile, stats: FileStats, chunk_rows: int = 1_000_000, max_rows: int = 0):
    """Yield validated column dicts (numpy arrays) of at most ``chunk_rows`` rows, in file order.

    Counts every record read in ``stats.rows_read`` and a dropped truncated last line. Raises
    DataError (file, physical line, column) on the first bad value.
    """
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows must be >= 1, not {chunk_rows}")
    locator = Locator(rf.path, rf.delimiter, rf.header)
    nrows = max_rows + 1 if max_rows and max_rows > 0 else None  # one more, to know if we stopped early
    records = 0
    last_user = None
    it = _frames(rf, chunk_rows, nrows)
    try:
        cur = next(it, None)
        while cur is not None:
            nxt = next(it, None)
            at_eof = nxt is None
            if nrows is not None and records + len(cur) > max_rows:
                cur = cur.iloc[:max_rows - records]
                nxt, at_eof = None, False
            cols = _validate_chunk(rf, cur, records, at_eof, stats, locator)
            # runs of equal user ids, to report whether the file is grouped by user (MAL's are;
            # nothing here relies on it)
            u = cols["user"]
            if len(u):
                blocks = int((u[1:] != u[:-1]).sum()) + (0 if last_user == u[0] else 1)
                stats.format["user_blocks"] = stats.format.get("user_blocks", 0) + blocks
                last_user = u[-1]
            yield cols
            records += len(cur)
            cur = nxt
    except (pd.errors.ParserError, pd.errors.ParserWarning) as exc:
        raise parser_error(rf.path, exc, locator, rf.n_fields) from None
    except pd.errors.EmptyDataError:
        pass
    finally:
        it.close()
    if records == 0:
        raise DataError(rf.path, "no data rows" + (" after the header" if rf.header else ""),
                        line=2 if rf.header else 1)


_ID_ROLES = ("user", "item", "timestamp")


def _frames(rf: RatingsFile, chunk_rows: int, nrows: int | None):
    """The file's records as DataFrames of ``chunk_rows``, with exact integer id columns.

    pandas parses a column as int64 (exact) unless a value is not an integer: one ``1.0`` or empty
    cell makes the whole chunk's column float64, where ``2**53`` and ``2**53 + 1`` are one number.
    From the first chunk with a float id column on, the file is read again with the id columns as
    text (about 5x slower to parse), skipping the chunks already yielded, and ``int_column`` parses
    them exactly. Files of plain integer ids never take that path.
    """
    id_pos = {pos: str for role, pos in rf.roles.items() if role in _ID_ROLES}
    done, as_text = 0, False
    while True:
        with open(rf.path, "rb") as fh:
            fh.seek(rf.head.bom_len)
            reader = _strict(lambda: pd.read_csv(
                fh, sep=rf.delimiter, header=None, names=list(range(rf.n_fields)),
                skiprows=1 if rf.header else 0, index_col=False, encoding="latin-1", chunksize=chunk_rows,
                nrows=nrows, keep_default_na=False, na_values=[""], skip_blank_lines=True, engine="c",
                dtype=id_pos if as_text else None))
            it = iter(reader)
            seen = 0
            while True:
                chunk = _strict(lambda: next(it, None))
                if chunk is None:
                    return
                seen += 1
                if seen <= done:
                    continue  # yielded by the integer pass
                if not as_text and any(chunk[pos].dtype.kind == "f" for pos in id_pos):
                    as_text = True
                    break
                done += 1
                yield chunk


def _strict(step):
    """Run a pandas reading step with ParserWarning raised as an error: when the *first* data line
    has extra fields, pandas (index_col=False) only warns and drops them."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)
        return step()


def _validate_chunk(rf: RatingsFile, chunk: pd.DataFrame, offset: int, at_eof: bool, stats: FileStats,
                    locator: Locator) -> dict:
    stats.rows_read += len(chunk)
    if at_eof and not rf.head.final_newline and len(chunk):
        # a copy cut mid-line: the last record lacks fields -> drop it, counted
        last = chunk.iloc[-1, list(rf.roles.values())]
        if last.isna().any():
            stats.drop("truncated_last_line", 1)
            chunk = chunk.iloc[:-1]
    problems = []
    cols = {}
    for role, pos in rf.roles.items():
        series = chunk[pos]
        try:
            if series.dtype.kind == "b":
                raise BadValue(0, f"{V.short(series.iloc[0])} is not a number")
            if role in ("user", "item"):
                cols[role] = V.int_column(series, nonnegative=rf.nonnegative_ids)
            elif role == "rating":
                cols[role] = V.rating_column(series, rf.scale)
            elif role == "status":
                cols[role] = V.small_int_column(series)
            else:
                cols[role] = V.int_column(series)
        except BadValue as bad:
            problems.append((bad.pos, role, bad.message))
    if problems:
        pos, role, message = min(problems, key=lambda p: p[0])
        raise DataError(rf.path, message, line=locator.line(offset + pos), column=rf.labels[role])
    return cols


def note_grouping(stats: FileStats, n_users: int) -> None:
    """Record in the file's format whether each user's rows form one block (before any filter)."""
    blocks = stats.format.pop("user_blocks", 0)
    stats.format["grouped_by_user"] = bool(blocks == n_users)


def _concat(parts: list[dict], roles) -> dict:
    dtypes = {"user": np.int64, "item": np.int64, "rating": np.float32, "status": np.int8, "timestamp": np.int64}
    if not parts:
        return {r: np.empty(0, dtypes[r]) for r in roles}
    return {r: np.concatenate([p[r] for p in parts]) if len(parts) > 1 else parts[0][r] for r in roles}


def frame_of(cols: dict) -> pd.DataFrame:
    order = [c for c in ("user", "item", "rating", "status", "timestamp") if c in cols]
    return pd.DataFrame({c: cols[c] for c in order}, copy=False)  # no second copy of 100M-row columns


# ---------------------------------------------------------------------------------------------
# Catalogues

_CAT_ALIASES = {
    "name": ("name", "title"),
    "english_name": ("english name", "english_name"),  # mal2020's anime.csv: name lookup (similar-anime)
    "japanese_name": ("japanese name", "japanese_name"),
    "genres": ("genres", "genre"),
    "type": ("type",),
    "studios": ("studios", "studio"),
    "source": ("source",),
    "episodes": ("episodes",),
    "score": ("score",),
    "members": ("members",),
    "synopsis": ("synopsis", "sypnopsis"),
}
_ID_ALIASES = {"mal2020": ("mal_id", "anime_id"), "cooperunion2017": ("anime_id", "mal_id"),
               "generic": ("item_id", "item", "anime_id", "mal_id", "id")}
_UNKNOWN = {"", "unknown"}


def read_catalogue(path: Path, kind: str, delimiter: str = ",", id_names: tuple = ()) -> tuple[pd.DataFrame, FileStats]:
    """Read one catalogue-like file (anime.csv, anime_with_synopsis.csv, a generic item table).

    Returns the item table (see the module docstring) and the file's stats. Duplicate ids keep the
    last row (``duplicate``); lines that are not UTF-8 are decoded as Windows-1252
    (``rows_flagged["encoding_fallback"]``).
    """
    stats = FileStats(path.name, V.sha256_file(path, V.MAX_CATALOGUE_LINE_BYTES, delimiter))  # before reading it all
    data = path.read_bytes()
    if not data:
        raise DataError(path, "the file is empty (0 bytes)", line=1)
    text = V.decode_text(path, data, stats)
    first = text.split("\n", 1)[0].rstrip("\r")
    header = [t.strip() for t in V.split_line(first, delimiter)]
    locator = Locator(path, delimiter, True, text=text)
    aliases = dict(_CAT_ALIASES)
    if kind == "cooperunion2017":
        aliases["score"] = ("score", "rating")  # CooperUnion's anime.csv: rating = mean user score
    if not first.strip():
        raise DataError(path, "line 1 is empty (expected a header)", line=1)
    _no_duplicate_names(path, header)
    try:
        # pyarrow: ~3x faster than pandas here, and strict about the field count of every line
        # (pandas with usecols silently accepts extra fields, and pads short lines)
        names = [f"c{i}" for i in range(len(header))]
        body = text.encode("utf-8")
        # one block for the whole (in-memory) file: a huge field cannot straddle two blocks
        tb = pacsv.read_csv(io.BytesIO(body),
                            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1, use_threads=False,
                                                           block_size=max(1 << 20, len(body) + 1)),
                            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
                            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                                 strings_can_be_null=False))
    except pa.ArrowInvalid as exc:
        raise parser_error(path, exc, locator, len(header)) from None
    stats.rows_read = tb.num_rows
    if tb.num_rows == 0:
        raise DataError(path, "no data rows after the header", line=2)
    norm = {}
    for i, c in enumerate(header):
        norm.setdefault(c.strip().lower(), i)
    id_pos = next((norm[a.lower()] for a in (*id_names, *_ID_ALIASES.get(kind, ())) if a.lower() in norm), None)
    if id_pos is None:
        want = (*id_names, *_ID_ALIASES.get(kind, ()))[0]
        raise _missing_column(path, want, header, first, delimiter)
    try:
        ids = V.int_column(pd.Series(tb.column(id_pos).to_pylist(), dtype=object), nonnegative=kind != "generic")
    except BadValue as bad:
        raise DataError(path, bad.message, line=locator.line(bad.pos), column=header[id_pos]) from None
    out = {}
    for col, names in aliases.items():
        src = next((norm[a] for a in names if a in norm and norm[a] != id_pos), None)
        if src is None:
            continue
        raw = tb.column(src).to_pylist()  # only the columns used (MAL's anime.csv has 35)
        values = [v.strip() for v in raw]
        unknown = np.array([v.lower() in _UNKNOWN for v in values], dtype=bool)
        if col == "name":
            out[col] = pd.Series([html.unescape(v) if v else np.nan for v in values], dtype="str")
        elif col in ("english_name", "japanese_name"):  # "Unknown" = no such name
            out[col] = pd.Series([np.nan if u else html.unescape(v) for v, u in zip(values, unknown)], dtype="str")
        elif col in ("genres", "studios"):
            out[col] = [[] if u else [g.strip() for g in v.split(",") if g.strip()] for v, u in zip(values, unknown)]
        elif col in ("type", "source"):
            out[col] = pd.Series([np.nan if u else v for v, u in zip(values, unknown)], dtype="str")
        elif col in ("episodes", "score", "members"):
            vals = pd.to_numeric(pd.Series([None if u else v.replace(",", "") for v, u in zip(values, unknown)],
                                           dtype=object), errors="coerce").to_numpy(dtype=np.float64)
            bad = np.isnan(vals) & ~unknown
            if bad.any():
                pos = int(np.flatnonzero(bad)[0])
                raise DataError(path, f"{V.short(raw[pos])} is not a number (nor 'Unknown')",
                                line=locator.line(pos), column=header[src])
            out[col] = vals
        elif col == "synopsis":
            placeholder = [v.startswith(SYNOPSIS_PLACEHOLDERS) for v in values]
            stats.flag("placeholder_synopsis", int(sum(placeholder)))
            out[col] = pd.Series(["" if p else v for v, p in zip(values, placeholder)], dtype="str")
    del tb
    table = pd.DataFrame(out)
    table.index = pd.Index(ids, dtype=np.int64, name="anime_id")
    dup = table.index.duplicated(keep="last")
    stats.drop("duplicate", int(dup.sum()))
    if dup.any():
        table = table[~dup]
    return table, stats


_COLUMN_ORDER = ("name", "english_name", "japanese_name", "genres", "type", "studios", "source", "episodes", "score",
                 "members", "synopsis")


def read_item_table(plan: Plan) -> tuple[pd.DataFrame | None, dict]:
    """The item table of a plan and the stats of the files it read ({name: FileStats})."""
    files = {}
    table = None
    if plan.catalogue is not None:
        table, st = read_catalogue(plan.catalogue, plan.catalogue_kind, plan.catalogue_delimiter,
                                   plan.catalogue_id_names)
        files[plan.catalogue.name] = st
    if plan.synopsis is not None:
        syn, st = read_catalogue(plan.synopsis, plan.catalogue_kind, plan.catalogue_delimiter,
                                 plan.catalogue_id_names)
        files[plan.synopsis.name] = st
        if table is None:
            table = syn
        else:
            if "synopsis" in syn:
                table["synopsis"] = syn["synopsis"].reindex(table.index).fillna("").astype("str")
            extra = syn.index.difference(table.index)
            st.flag("not_in_catalogue", len(extra))  # kept: added to the table from the synopsis file
            if len(extra):
                add = syn.loc[extra, [c for c in syn.columns if c in table.columns]]
                table = pd.concat([table, add])
                for col in ("genres", "studios"):
                    if col in table:
                        table[col] = [v if isinstance(v, list) else [] for v in table[col]]
        if "synopsis" in table:
            table["synopsis"] = table["synopsis"].fillna("").astype("str")
    if table is not None:
        table = table[[c for c in _COLUMN_ORDER if c in table.columns]]
        table.index = table.index.astype(np.int64)
        table.index.name = "anime_id"
    return table, files


def read_status_codes(path: Path | None) -> tuple[np.ndarray | None, FileStats | None]:
    """The watching_status codes (``status, description`` header, with a space)."""
    if path is None:
        return None, None
    stats = FileStats(path.name, V.sha256_file(path, V.MAX_CATALOGUE_LINE_BYTES))
    text = V.decode_text(path, path.read_bytes(), stats)
    locator = Locator(path, ",", True, text=text)
    _no_duplicate_names(path, V.split_line(text.split("\n", 1)[0].rstrip("\r"), ","))
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, index_col=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise parser_error(path, exc, locator, 2) from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    if "status" not in df:
        raise _missing_column(path, "status", list(df.columns), text.split("\n", 1)[0], ",")
    try:
        codes = V.small_int_column(df["status"])
    except BadValue as bad:
        raise DataError(path, bad.message, line=locator.line(bad.pos), column="status") from None
    stats.rows_read = len(df)
    return np.unique(codes), stats


# ---------------------------------------------------------------------------------------------
# Memory guard


_BYTES_TEXT = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([KMGT]?)I?B?", re.ASCII)


def _parse_bytes(text: str) -> int:
    """``500M``, ``8G``, ``1.5GiB``, ``1000000`` -> bytes (binary units). Raises ValueError for
    anything else (``infG``, ``-1G``, ``1.5.5G``, ``nan``) and for less than one byte."""
    m = _BYTES_TEXT.fullmatch(text.strip().upper())
    if not m:
        raise ValueError(text)
    mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2)]
    from decimal import Decimal

    n = int(Decimal(m.group(1)) * mult)
    if n < 1:
        raise ValueError(text)
    return n


def human_bytes(n: float) -> str:
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def available_memory() -> int:
    """Bytes of memory available now (``ANIMEREC_MEMORY_LIMIT`` if set, else MemAvailable)."""
    env = os.environ.get(MEMORY_ENV, "").strip()
    if env:
        try:
            return _parse_bytes(env)
        except ValueError:
            raise ConfigError(f"{MEMORY_ENV}={env!r}: expected a positive number of bytes, e.g. 500M, "
                              f"8G or 1.5G") from None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def estimate_rows(path: Path) -> int:
    """Rows in a CSV estimated from its size and the mean line length of its first MiB."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        sample = fh.read(1 << 20)
    lines = sample.count(b"\n") or 1
    if len(sample) >= size:
        return max(lines, 1)
    return int(size / (len(sample) / lines)) + 1


def check_memory(rf: RatingsFile, max_rows: int, adapter: str, raw_dir: Path, memory_limit: int | None = None) -> None:
    """Raise ResourceError when an in-memory load of ``rf`` would not fit (see the module docstring)."""
    rows = estimate_rows(rf.path)
    if max_rows and max_rows > 0:
        rows = min(rows, max_rows)
    need = rows * BYTES_PER_ROW
    limit = memory_limit if memory_limit is not None else available_memory()
    if need > limit:
        raise ResourceError(
            f"{rf.path}: loading about {rows:,} rating rows in memory needs about {human_bytes(need)} "
            f"({BYTES_PER_ROW} B/row), more than the {human_bytes(limit)} available. Stream it instead: "
            f"`animerec prepare --source {adapter} --raw {raw_dir} --out data/processed/{adapter}`, then set "
            f'data.source = "processed" and data.path = "data/processed/{adapter}" (or lower data.max_rows)')


# ---------------------------------------------------------------------------------------------


def load(adapter: str, raw_dir: Path, data_cfg, *, memory_limit: int | None = None):
    """Load ratings, the item table and a manifest (see the module docstring).

    Args:
        adapter: one of ``ADAPTERS`` (``research.config.RAW_SOURCES``).
        raw_dir: the folder holding the raw files.
        data_cfg: a ``research.config.DataConfig``.
        memory_limit: bytes the load may use; default ``ANIMEREC_MEMORY_LIMIT`` or MemAvailable.

    Returns:
        (frame, item_table or None, manifest).
    """
    plan = plan_files(adapter, Path(raw_dir), data_cfg)
    rf = plan.ratings
    check_memory(rf, data_cfg.max_rows, adapter, plan.raw_dir, memory_limit)
    item_table, cat_files = read_item_table(plan)
    status_codes, status_stats = read_status_codes(plan.status)
    stats = new_stats(rf)
    parts = list(iter_chunks(rf, stats, max_rows=data_cfg.max_rows))
    cols = _concat(parts, rf.roles)
    del parts
    note_grouping(stats, len(np.unique(cols["user"])))
    cols = V.apply_row_filters(cols, stats, data_cfg.unrated, data_cfg.min_user_ratings)
    V.flag_references(cols, stats, None if item_table is None else item_table.index.to_numpy(), status_codes)
    frame = frame_of(cols)
    files = {rf.path.name: stats.to_dict(), **{n: s.to_dict() for n, s in cat_files.items()}}
    if status_stats is not None:
        files[status_stats.name] = status_stats.to_dict()
    manifest = {"files": files}
    V.check_balance(manifest)
    if stats.rows_kept != len(frame):
        raise AssertionError(f"manifest says {stats.rows_kept} rows kept, the frame has {len(frame)}")
    return frame, item_table, manifest
