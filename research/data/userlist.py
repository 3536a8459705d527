"""A user's own anime list, read for ``animerec recommend --list FILE`` (fold-in of a new user).

Size: one module because it is one file format's reader (CSV or MAL XML export) and its mapping
to the run's items (``AnimeNames``, which ``similar-anime --anime`` and the API share).

Two formats, told apart by the content (the first non-blank character ``<`` means XML):

* **CSV** with a header (line 1). One of ``anime_id`` (a MyAnimeList id) or ``name`` (resolved
  against the run's catalogue as ``similar-anime --anime`` resolves names, ``AnimeNames``) is
  required; both may be given (a row with an empty ``anime_id`` then uses its ``name``). Optional:
  ``score`` (``rating`` in the older copy of mal2020's ``animelist.csv``), ``watching_status``
  (``status``), ``user_id``; other columns (``watched_episodes`` ...) are ignored. So the rows of one
  user cut from mal2020's ``animelist.csv`` are a valid list, and so is a hand-written
  ``name,score`` file. Column names are matched case-insensitively; comma-delimited.
* **MyAnimeList XML export**: ``<myanimelist>`` holding ``<anime>`` elements with
  ``<series_animedb_id>``, ``<series_title>`` (used when the id is missing), ``<my_score>`` and
  ``<my_status>`` (``Watching``, ``Completed``, ``On-Hold``, ``Dropped``, ``Plan to Watch``, or
  the numeric codes); ``<myinfo>`` and every other element are ignored.

Values (both formats):

* **score**: a whole number 0-10; 0 or an empty cell = "watched without a score" (NaN, as
  mal2020's score 0). A fraction (7.5), a negative or > 10 score is an error.
* **status** (mal2020's ``watching_status.csv``): 1 Currently Watching, 2 Completed, 3 On Hold,
  4 Dropped are *watched*: folded in (a dropped anime was watched in part; its score, often low,
  is kept). 6 Plan to Watch *without* a score is not watched: it is never folded in (it says
  nothing about taste) but it is on the user's list, so it is never recommended back. A
  plan-to-watch row *with* a score is folded in as a rating. These are the rules ``prepare``
  applies to the training data (``validate``: unscored plan-to-watch rows are dropped). No status
  column or an empty cell = watched. Any other code or text is an error.
* The same anime twice (by id, or two names resolving to one anime): the last row wins (the
  latest state of a MAL list, as ``validate`` keeps the last duplicate), counted ``duplicate``.
* A list holding rows of more than one ``user_id`` is an error (give one user's rows).

Every error is a ``DataError`` naming the file, the physical line and the column (for XML, the
element name, e.g. ``my_score``), so the CLI prints one line and exits 2.

XML safety: parsed with the standard library's ElementTree (``XMLPullParser``, fed line by line so
element positions are known). A document type declaration (``<!DOCTYPE``, the only place an
entity can be declared) or an ``<!ENTITY`` is refused with its line and column before anything is
parsed, so no entity is ever expanded and no external DTD or entity is fetched; undefined entity
references are parse errors. UTF-16 files are refused (convert to UTF-8). Files larger than
``MAX_LIST_BYTES`` (32 MiB; ``read_list(max_bytes=...)`` to change it) are refused from their
size, without being read.

Unknown anime (an id not in the run's item vocabulary, a name matching nothing, or one matching
several anime) are never dropped silently: ``map_list`` returns them with their line and reason
(an ambiguous name lists its first candidates with ids, most members first; an unmatched one gets
a fuzzy did-you-mean), and the CLI prints their count and the first few. Names are matched by
``AnimeNames`` (tiers exact > exact ignoring punctuation > prefix > substring; romaji ``Name`` and,
when the item table has them, English and Japanese names), the resolver of ``similar-anime`` too.
"""
from __future__ import annotations

import csv
import html
import io
import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from research.data import validate as V
from research.errors import ConfigError, DataError

#: files larger than this are refused unread
MAX_LIST_BYTES = 32 << 20

WATCHING, COMPLETED, ON_HOLD, DROPPED, PLAN_TO_WATCH = 1, 2, 3, 4, V.PLAN_TO_WATCH
STATUS_NAMES = {WATCHING: "watching", COMPLETED: "completed", ON_HOLD: "on hold", DROPPED: "dropped",
                PLAN_TO_WATCH: "plan to watch"}
#: status text (lower case, spaces / hyphens / underscores removed) -> code
_STATUS_TEXT = {"watching": WATCHING, "currentlywatching": WATCHING, "completed": COMPLETED,
                "onhold": ON_HOLD, "dropped": DROPPED, "plantowatch": PLAN_TO_WATCH}

_ID_COLUMNS = ("anime_id",)
_NAME_COLUMNS = ("name",)
_SCORE_COLUMNS = ("score", "rating")
_STATUS_COLUMNS = ("watching_status", "status")


@dataclass(frozen=True)
class ListRow:
    """One entry of a list: ``line`` is the physical line it starts on (XML: of its ``<anime>``);
    ``anime_id`` or ``name`` says which anime; ``score`` is NaN when not scored; ``status`` is
    a watching_status code or None (not given)."""

    line: int
    anime_id: int | None
    name: str | None
    score: float
    status: int | None


@dataclass
class UserList:
    path: Path
    format: str  # "csv" | "xml"
    rows: list[ListRow]

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class Unknown:
    """An entry that names no anime of the run: ``what`` is as written (``id 123`` / ``'name'``)."""

    line: int
    what: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.what} {self.reason}"


@dataclass
class MappedList:
    """A list over the run's item index.

    ``items`` / ``ratings`` are the rows folded in (watched, or plan-to-watch with a score; NaN
    = no score), one per anime; ``exclude`` every anime of the list the run knows (``items`` plus
    unscored plan-to-watch), never recommended back; ``unknown`` the entries naming no anime of the
    run, in file order; ``counts`` rows per outcome (``watched_scored``, ``watched_unscored``,
    ``plan_to_watch`` (unscored, not folded in), ``plan_to_watch_scored``, ``duplicate``,
    ``unknown``) summing to the rows of the list."""

    path: Path
    items: np.ndarray
    ratings: np.ndarray
    exclude: np.ndarray
    unknown: list[Unknown]
    counts: Counter = field(default_factory=Counter)

    def history(self, n_items: int):
        """The list as a one-row ``History`` (``History.from_lists``)."""
        from research.models.base import History

        return History.from_lists([self.items], [self.ratings], n_items=n_items)

    def exclude_matrix(self, n_items: int):
        """``exclude`` as the (1, n_items) sparse matrix ``recommend_history`` takes."""
        import scipy.sparse as sp

        return sp.csr_matrix((np.ones(len(self.exclude), np.float32),
                              (np.zeros(len(self.exclude), np.int64), self.exclude)), shape=(1, n_items))

    def summary(self) -> str:
        c = self.counts
        parts = [f"{c['watched_scored']} watched with a score", f"{c['watched_unscored']} watched without one"]
        if c["plan_to_watch_scored"]:
            parts.append(f"{c['plan_to_watch_scored']} plan-to-watch with a score (folded in)")
        parts.append(f"{c['plan_to_watch']} plan-to-watch (not folded in, not recommended back)")
        if c["duplicate"]:
            parts.append(f"{c['duplicate']} duplicate(s) (the last row of an anime kept)")
        parts.append(f"{c['unknown']} unknown")
        return f"{sum(c.values())} rows: " + ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Reading

def read_list(path, max_bytes: int = MAX_LIST_BYTES) -> UserList:
    """Read a CSV list or a MyAnimeList XML export (see the module docstring)."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise DataError(path, f"the file is {size:,} bytes, more than the {max_bytes:,} bytes a list may have: "
                              f"is it a whole data set rather than one user's list?")
    with open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew while reading, or a device
        raise DataError(path, f"the file is more than the {max_bytes:,} bytes a list may have")
    if not data.strip():
        raise DataError(path, "the file is empty", line=1)
    for mark, enc in V.BOMS.items():
        if data.startswith(mark) and enc.startswith("utf-16"):
            raise DataError(path, f"the file is {enc.upper()} (byte-order mark); convert it to UTF-8", line=1)
    if b"\x00" in data[:4096]:
        raise DataError(path, "the file holds NUL bytes (UTF-16 or binary?); a list is UTF-8 text", line=1)
    body = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    if body.lstrip().startswith(b"<"):
        return UserList(path, "xml", _read_xml(path, data))
    return UserList(path, "csv", _read_csv(path, data))


def _score(path, raw: str, line: int, column: str) -> float:
    t = raw.strip()
    if not t:
        return math.nan
    try:
        v = float(t)
    except ValueError:
        raise DataError(path, f"score {V.short(raw)} is not a number (0-10, 0 = not scored)",
                        line=line, column=column) from None
    if not (math.isfinite(v) and v == int(v) and 0 <= v <= 10):
        raise DataError(path, f"score {V.short(raw)} is not a whole number from 0 to 10 (0 = not scored)",
                        line=line, column=column)
    return math.nan if v == 0 else float(v)


def _status(path, raw: str, line: int, column: str) -> int | None:
    t = raw.strip()
    if not t:
        return None
    if V.looks_like_int(t) and int(t) in STATUS_NAMES:
        return int(t)
    key = "".join(ch for ch in t.lower() if ch not in " -_")
    if key in _STATUS_TEXT:
        return _STATUS_TEXT[key]
    raise DataError(path, f"unknown watching status {V.short(raw)} (known: 1 Currently Watching, 2 Completed, "
                          f"3 On Hold, 4 Dropped, 6 Plan to Watch, or those words)", line=line, column=column)


def _anime_id(path, raw: str, line: int, column: str) -> int:
    try:
        n = V._exact_int(raw, 0)
    except V.BadValue as exc:
        raise DataError(path, exc.message, line=line, column=column) from None
    if n < 0:
        raise DataError(path, f"{n} is negative (MyAnimeList ids are >= 1)", line=line, column=column)
    return n


def _read_csv(path: Path, data: bytes) -> list[ListRow]:
    text = V.decode_text(path, data, V.FileStats(path.name))
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(path, "the file is empty", line=1) from None
    except csv.Error as exc:
        raise DataError(path, f"unreadable header ({exc})", line=1) from None
    names = [h.strip().lower() for h in header]
    if names and names[0].startswith("\ufeff"):
        names[0] = names[0][1:]
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n and n in seen:
            name = header[i].strip()
            raise DataError(path, f"the header names column {name!r} twice", line=1, column=name)
        seen[n] = i

    def col(options):
        for o in options:
            if o in seen:
                return o, seen[o]
        return None, None

    id_name, id_at = col(_ID_COLUMNS)
    name_name, name_at = col(_NAME_COLUMNS)
    score_name, score_at = col(_SCORE_COLUMNS)
    status_name, status_at = col(_STATUS_COLUMNS)
    user_at = seen.get("user_id")
    if id_at is None and name_at is None:
        import difflib

        near = difflib.get_close_matches("anime_id", names, n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise DataError(path, f"a list needs an 'anime_id' or a 'name' column (the header has {names}){hint}"
                              f"{V.delimiter_hint(','.join(header), ',')}", line=1, column="anime_id")
    rows: list[ListRow] = []
    user, user_line = None, None
    last = reader.line_num
    while True:
        start = last + 1
        try:
            rec = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(path, f"unreadable CSV ({exc})", line=start) from None
        last = reader.line_num
        if not rec or (len(rec) == 1 and not rec[0].strip()):
            continue  # a blank line
        if len(rec) != len(header):
            raise DataError(path, f"expected {len(header)} fields, found {len(rec)}", line=start)
        if user_at is not None:
            u = rec[user_at].strip()
            if user is None:
                user, user_line = u, start
            elif u != user:
                raise DataError(path, f"a second user ({V.short(u)}; line {user_line} has {V.short(user)}): "
                                      f"a list is one user's rows", line=start, column="user_id")
        anime_id = name = None
        if id_at is not None and rec[id_at].strip():
            anime_id = _anime_id(path, rec[id_at], start, id_name)
        elif name_at is not None and rec[name_at].strip():
            name = rec[name_at].strip()
        else:
            raise DataError(path, "no anime: " + " and ".join(f"{c!r}" for c in (id_name, name_name) if c)
                            + " empty", line=start, column=id_name or name_name)
        score = _score(path, rec[score_at], start, score_name) if score_at is not None else math.nan
        status = _status(path, rec[status_at], start, status_name) if status_at is not None else None
        rows.append(ListRow(start, anime_id, name, score, status))
    if not rows:
        raise DataError(path, "no data rows (the file has only a header)", line=2)
    return rows


def _position(data: bytes, offset: int) -> tuple[int, int]:
    """1-based (line, column) of byte ``offset``."""
    before = data[:offset]
    line = before.count(b"\n") + 1
    return line, offset - (before.rfind(b"\n") + 1) + 1


def _read_xml(path: Path, data: bytes) -> list[ListRow]:
    import xml.etree.ElementTree as ET

    for decl in (b"<!DOCTYPE", b"<!ENTITY"):
        at = data.find(decl)
        if at >= 0:
            line, column = _position(data, at)
            raise DataError(path, f"{decl.decode()} declaration refused: a MyAnimeList export has none, "
                                  f"and no entity is ever expanded or fetched here", line=line, column=column)
    parser = ET.XMLPullParser(events=("start", "end"))
    starts: dict[int, int] = {}  # id(element) -> line of its start tag
    rows: list[ListRow] = []
    root = None
    line = 0
    chunks = data.splitlines(keepends=True)
    for line, chunk in enumerate(chunks + [b""], start=1):
        try:
            if chunk:
                parser.feed(chunk)
            else:
                parser.close()
            events = list(parser.read_events())
        except ET.ParseError as exc:
            at_line, at_col = exc.position
            raise DataError(path, f"not well-formed XML ({str(exc).split(':')[0]})",
                            line=at_line, column=at_col + 1) from None
        for event, elem in events:
            if event == "start":
                starts[id(elem)] = min(line, len(chunks))
                if root is None:
                    root = elem
                    if elem.tag != "myanimelist":
                        raise DataError(path, f"not a MyAnimeList export: the root element is <{V.short(elem.tag)}>, "
                                              f"not <myanimelist>", line=starts[id(elem)], column=elem.tag)
            elif elem.tag == "anime" and root is not None and elem in list(root):
                rows.append(_xml_row(path, elem, starts))
                root.remove(elem)  # keep memory flat
                starts = {k: v for k, v in starts.items() if k == id(root)}
    if root is None:
        raise DataError(path, "no XML element found", line=1)
    if not rows:
        raise DataError(path, "no <anime> entries in the export", line=starts.get(id(root), 1), column="anime")
    return rows


def _xml_row(path: Path, elem, starts: dict) -> ListRow:
    line = starts.get(id(elem), 1)

    def child(tag):
        c = elem.find(tag)
        if c is None:
            return None, line
        return (c.text or ""), starts.get(id(c), line)

    raw_id, id_line = child("series_animedb_id")
    title, _ = child("series_title")
    anime_id = name = None
    if raw_id is not None and raw_id.strip():
        anime_id = _anime_id(path, raw_id, id_line, "series_animedb_id")
    elif title is not None and title.strip():
        name = title.strip()
    else:
        raise DataError(path, "an <anime> entry without <series_animedb_id> or <series_title>",
                        line=line, column="series_animedb_id")
    raw_score, score_line = child("my_score")
    score = math.nan if raw_score is None else _score(path, raw_score, score_line, "my_score")
    raw_status, status_line = child("my_status")
    status = None if raw_status is None else _status(path, raw_status, status_line, "my_status")
    return ListRow(line, anime_id, name, score, status)


# ---------------------------------------------------------------------------------------------
# Names and ids -> the run's item index

#: item-table columns holding other names of an anime (used when the catalogue adapter keeps them)
ALT_NAME_COLUMNS = ("english_name", "japanese_name")
#: how many candidates an ambiguous name lists, and how many did-you-mean suggestions are given
SHOW_CANDIDATES, SHOW_SUGGESTIONS = 8, 5


def _plain(text: str) -> str:
    """Lower case, HTML entities unescaped, NFKC (full-width forms), blanks collapsed."""
    t = unicodedata.normalize("NFKC", html.unescape(str(text))).lower()
    return " ".join(t.split())


def _loose(text: str) -> str:
    """``_plain`` with punctuation as blanks ("Fullmetal Alchemist:Brotherhood" = "...: Brotherhood")."""
    return " ".join(re.sub(r"[\W_]+", " ", _plain(text)).split())


class AmbiguousName(ConfigError):
    """A name that resolves to several anime (``candidates``) or to none (``suggestions``)."""

    def __init__(self, message: str, candidates=(), suggestions=()):
        super().__init__(message)
        self.candidates, self.suggestions = list(candidates), list(suggestions)


class AnimeNames:
    """Anime names of a run's catalogue, for ``similar-anime --anime`` and the ``name`` of a list.

    Titles: ``meta.item_table["name"]`` (MAL's romaji ``Name``, HTML entities unescaped by the
    adapter), plus the ``english_name`` / ``japanese_name`` columns when the item table has them,
    plus ``extra`` ({anime id: [names]}, e.g. ``catalogue_names(anime.csv)``).

    ``match_name(text)`` ranks the anime a text names, by tier then by ``members`` (most first; the
    item index breaks ties):

    1. **exact**: a title equal to the text (case-insensitive, HTML entities unescaped, blanks
       collapsed; punctuation counts, so "Gintama" is not "Gintama'");
    2. **exact, punctuation ignored** ("fullmetal alchemist brotherhood");
    3. **prefix**: a title starting with the text (punctuation ignored);
    4. **substring**: a title containing it.

    Only the first non-empty tier is returned. One anime = resolved; several = ambiguous (listed,
    never picked); none = unknown, with ``suggest(text)``'s fuzzy did-you-mean."""

    def __init__(self, meta, extra: dict | None = None):
        table = meta.item_table
        n = meta.n_items
        titles: list[tuple[int, str]] = []
        if table is not None:
            for col in ("name", *ALT_NAME_COLUMNS):
                if col in table:
                    titles += [(i, v) for i, v in enumerate(table[col].tolist())
                               if isinstance(v, str) and v.strip() and v.strip().lower() != "unknown"]
        if extra:
            idx = meta.items.index(np.fromiter(extra, dtype=np.int64, count=len(extra)), missing="mask")
            for i, names in zip(idx, extra.values()):
                if i >= 0:
                    titles += [(int(i), v) for v in names if isinstance(v, str) and v.strip()]
        self.meta = meta
        self.available = bool(titles)
        self.title_index = np.array([i for i, _ in titles], dtype=np.int64)
        self.plain = [_plain(t) for _, t in titles]
        self.loose = [_loose(t) for _, t in titles]
        self.by_plain: dict[str, set] = {}
        self.by_loose: dict[str, set] = {}
        for i, p, q in zip(self.title_index.tolist(), self.plain, self.loose):
            self.by_plain.setdefault(p, set()).add(i)
            self.by_loose.setdefault(q, set()).add(i)
        members = table["members"].to_numpy(np.float64) if table is not None and "members" in table else np.zeros(n)
        self.members = np.nan_to_num(members, nan=-1.0)

    def _ranked(self, found) -> list[int]:
        found = np.fromiter(set(found), dtype=np.int64)
        return found[np.lexsort((found, -self.members[found]))].tolist()

    def lookup(self, text: str) -> tuple[str | None, list[int]]:
        """(tier, ranked item indices) of the first tier that matches, (None, []) if none does."""
        p, q = _plain(text), _loose(text)
        if not p or not self.available:
            return None, []
        if p in self.by_plain:
            return "exact", self._ranked(self.by_plain[p])
        if q and q in self.by_loose:
            return "exact", self._ranked(self.by_loose[q])
        if not q:
            return None, []
        pre = [i for i, t in zip(self.title_index.tolist(), self.loose) if t.startswith(q)]
        if pre:
            return "prefix", self._ranked(pre)
        sub = [i for i, t in zip(self.title_index.tolist(), self.loose) if q in t]
        if sub:
            return "substring", self._ranked(sub)
        return None, []

    def match_name(self, text: str) -> list[int]:
        """The item indices ``text`` names, best first (see the class docstring)."""
        return self.lookup(text)[1]

    def suggest(self, text: str, n: int = SHOW_SUGGESTIONS) -> list[int]:
        """Did-you-mean: up to ``n`` anime whose title (or the title's start, for a short text) is
        close to ``text`` by ``difflib``'s ratio (>= 0.75 whole title, >= 0.8 its start), closest
        first, then most members."""
        import difflib

        q = _loose(text)
        if not q or not self.available:
            return []
        scored: dict[int, float] = {}
        whole = difflib.get_close_matches(q, list(self.by_loose), n=4 * n, cutoff=0.75)
        for t in whole:
            r = difflib.SequenceMatcher(None, q, t).ratio()
            for i in self.by_loose[t]:
                scored[i] = max(scored.get(i, 0.0), r)
        if not scored:
            heads: dict[str, set] = {}
            for i, t in zip(self.title_index.tolist(), self.loose):
                if len(t) > len(q):
                    heads.setdefault(t[:len(q)], set()).add(i)
            for t in difflib.get_close_matches(q, list(heads), n=4 * n, cutoff=0.8):
                r = difflib.SequenceMatcher(None, q, t).ratio()
                for i in heads[t]:
                    scored[i] = max(scored.get(i, 0.0), r)
        order = sorted(scored, key=lambda i: (-round(scored[i], 6), -self.members[i], i))
        return order[:n]

    def describe(self, items) -> str:
        """"Name (id N), ..." for item indices."""
        items = list(items)
        return ", ".join(f"{nm} (id {self.meta.items.ids(i)})" for nm, i in zip(self.meta.item_names(items), items))

    def resolve(self, text: str, what: str = "name") -> int:
        """The one anime ``text`` names, else ``AmbiguousName`` listing the candidates (most members
        first) or the did-you-mean suggestions."""
        tier, found = self.lookup(text)
        if len(found) == 1:
            return found[0]
        shown = text.strip()
        if found:
            more = f", and {len(found) - SHOW_CANDIDATES} more" if len(found) > SHOW_CANDIDATES else ""
            raise AmbiguousName(
                f"{what} {shown!r} is ambiguous: {len(found)} anime match ({tier} match, most members first): "
                f"{self.describe(found[:SHOW_CANDIDATES])}{more}; give the anime id or the full name", candidates=found)
        near = self.suggest(text)
        hint = f"; did you mean {self.describe(near)}?" if near else ""
        if not self.available:
            hint = " (this run's catalogue has no names: give an anime id)"
        raise AmbiguousName(f"no anime with {what} {shown!r} in this run's catalogue{hint}", suggestions=near)


def catalogue_names(path, columns=("English name", "Japanese name")) -> dict[int, list[str]]:
    """{MAL_ID: [other names]} from a mal2020 ``anime.csv`` (``Unknown`` and empty cells left out),
    for ``AnimeNames(meta, extra=...)`` while the item table keeps only ``Name``."""
    import pandas as pd

    head = pd.read_csv(path, nrows=0).columns
    use = [c for c in columns if c in head]
    t = pd.read_csv(path, usecols=["MAL_ID", *use], dtype=str, keep_default_na=False)
    out: dict[int, list[str]] = {}
    for row in t.itertuples(index=False):
        names = [html.unescape(v.strip()) for v in row[1:] if v.strip() and v.strip().lower() != "unknown"]
        if names and row[0].strip().isdigit():
            out[int(row[0])] = names
    return out


def resolve_anime(meta, text: str, names: AnimeNames | None = None) -> list[int]:
    """``similar-anime --anime``: a MyAnimeList id of the run, else the one anime ``text`` names
    (``AnimeNames.resolve``): ``[index]``. An ambiguous name raises ``AmbiguousName`` (a
    ``ConfigError``: one line, exit 2) listing the candidates, most members first; an unknown one
    raises it with a did-you-mean. A number that is no id of the run is tried as a name (titles
    such as "86" exist)."""
    if text.strip().lstrip("-").isdigit():
        try:
            idx = int(meta.items.index(int(text), missing="mask"))
        except OverflowError:
            idx = -1
        if idx >= 0:
            return [idx]
    return [(names or AnimeNames(meta)).resolve(text, "id or name" if text.strip().lstrip("-").isdigit() else "name")]


def map_list(ul: UserList, meta, first: int = 3) -> MappedList:
    """Map a list's rows to the run's item index (see ``MappedList``); ``first`` is how many
    matches an ambiguous name's reason shows."""
    names = AnimeNames(meta) if any(r.name is not None for r in ul.rows) else None
    counts: Counter = Counter()
    unknown: list[Unknown] = []
    known: list[tuple[int, ListRow]] = []
    ids = np.array([r.anime_id if r.anime_id is not None and r.anime_id <= np.iinfo(np.int64).max else -1
                    for r in ul.rows], dtype=np.int64)
    by_id = meta.items.index(ids, missing="mask")
    for r, idx in zip(ul.rows, by_id):
        if r.anime_id is not None:
            if idx < 0:
                unknown.append(Unknown(r.line, f"anime_id {r.anime_id}", "is not in this run's catalogue"))
                continue
            known.append((int(idx), r))
            continue
        found = names.match_name(r.name)
        if len(found) == 1:
            known.append((found[0], r))
        elif not found:
            near = names.suggest(r.name, first)
            hint = f" (did you mean {names.describe(near)}?)" if near else ""
            unknown.append(Unknown(r.line, f"name {V.short(r.name)}", f"matches no anime of this run{hint}"))
        else:
            shown = names.describe(found[:first])
            unknown.append(Unknown(r.line, f"name {V.short(r.name)}",
                                   f"is ambiguous ({len(found)} anime: {shown}{', ...' if len(found) > first else ''}; "
                                   f"give the exact name or the anime_id)"))
    counts["unknown"] = len(unknown)
    last: dict[int, ListRow] = {}
    for idx, r in known:
        if idx in last:
            counts["duplicate"] += 1
        last[idx] = r
    items, ratings, exclude = [], [], []
    for idx, r in last.items():
        exclude.append(idx)
        scored = not math.isnan(r.score)
        if r.status == PLAN_TO_WATCH and not scored:
            counts["plan_to_watch"] += 1
            continue
        counts["plan_to_watch_scored" if r.status == PLAN_TO_WATCH else
               "watched_scored" if scored else "watched_unscored"] += 1
        items.append(idx)
        ratings.append(r.score)
    order = np.argsort(np.asarray(items, dtype=np.int64), kind="stable")
    return MappedList(ul.path, np.asarray(items, dtype=np.int64)[order], np.asarray(ratings, np.float64)[order],
                      np.sort(np.asarray(exclude, dtype=np.int64)), unknown, counts)
