"""Raw files -> parquet shards + ``manifest.json``, streaming, in memory bounded by the chunk size.

``prepare(source, raw_dir, out_dir)`` writes::

    out_dir/ratings/part-00000.parquet ...   user int64, item int64, rating float32 (NaN = unrated)
                                             [, status int8][, timestamp int64]
    out_dir/anime.parquet                    the item table (anime_id + its columns), if any
    out_dir/manifest.json                    {"source", "created", "raw", "data_config", "chunk_rows",
                                              "buckets", "outputs", "files": {...}} (``sources`` schema)

How it stays bounded on the 109M-row animelist.csv: the ratings are read ``chunk_rows`` rows at a
time and validated exactly as ``sources.load`` does (same code); each chunk's rows are appended, in
file order, to one of B binary bucket files chosen by a hash of the user id, B = estimated rows /
``chunk_rows``. Every row of a user is thus in one bucket, in file order, so the per-user filters
(duplicates keep the last row; unrated; ``min_user_ratings``) run one bucket at a time with the same
result as on the whole file, whatever the order of the file. This does not rely on the MAL files
being grouped by user (they are, on the samples: see tests/test_prepare.py) and costs one extra
write and read of 20-29 bytes per row. Peak memory ~ one chunk of pandas parsing + one bucket
(measured: 274 MiB peak RSS for 8M and for 16M rows at chunk_rows=1M, 173 MiB at 250k; 112 MiB of
that is the interpreter with pandas and pyarrow imported).

Rows in the shards are grouped by bucket and, within a user, in file order; ``load_processed``
therefore returns the same rows as ``sources.load`` in a different order.

The filters of ``data_cfg`` (``unrated``, ``max_rows``, ``min_user_ratings``; default
``DataConfig()``: unrated rows dropped) are applied here and recorded under ``data_config``.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from research.data import sources
from research.data import validate as V
from research.errors import ConfigError, DataError, ResourceError

MAX_BUCKETS = 512  # open files at once; above this buckets grow beyond chunk_rows rows
PROCESSED_BYTES_PER_ROW = 40  # peak per row of load_processed: 27 B/row measured (8M rows, 1M-row shards)

_DTYPES = {"user": "<i8", "item": "<i8", "rating": "<f4", "status": "i1", "timestamp": "<i8"}


def _bucket_of(user: np.ndarray, n: int) -> np.ndarray:
    # Fibonacci hashing: spreads consecutive ids evenly; deterministic across runs and machines
    h = (user.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
    return (h % np.uint64(n)).astype(np.int64)


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (on this machine, in this pid namespace)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except OverflowError:
        return False
    return True


def remove_stale_buckets(out_dir: Path) -> list[Path]:
    """Remove the ``.buckets-<pid>`` folders of ``out_dir`` whose prepare is no longer running (it
    was killed before its ``finally`` ran), saying so on stderr. A live pid's folder is left
    alone: another prepare may be writing it. Returns the folders removed."""
    import sys

    removed = []
    for d in sorted(Path(out_dir).glob(".buckets-*")):
        pid = d.name.removeprefix(".buckets-")
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)) or not d.is_dir() or d.is_symlink():
            continue
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file() and not f.is_symlink())
        shutil.rmtree(d, ignore_errors=True)
        print(f"[animerec] removed {d} ({sources.human_bytes(size)}), left by a prepare (pid {pid}) that "
              f"is no longer running", file=sys.stderr)
        removed.append(d)
    return removed


def _arrow_table(cols: dict, roles):
    import pyarrow as pa

    return pa.table({r: pa.array(cols[r]) for r in roles})


def prepare(source: str, raw_dir, out_dir, data_cfg=None, chunk_rows: int = 1_000_000) -> dict:
    """Validate and convert a raw data set to parquet shards plus ``manifest.json``.

    Args:
        source: one of ``sources.ADAPTERS`` (the raw formats).
        raw_dir: folder with the raw files.
        out_dir: output folder (created; earlier ``ratings/part-*.parquet`` there are replaced).
        data_cfg: a ``research.config.DataConfig`` (files, columns, filters); default ``DataConfig()``.
        chunk_rows: rows parsed at once; bounds peak memory (about 150-250 B per chunk row).

    Returns:
        The manifest (also written to ``out_dir/manifest.json``).
    """
    import pyarrow.parquet as pq

    from research.config import DataConfig

    if source not in sources.ADAPTERS:
        raise ConfigError(f"prepare --source must be one of {', '.join(sources.ADAPTERS)}, not {source!r}")
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows must be >= 1, not {chunk_rows}")
    data_cfg = data_cfg if data_cfg is not None else DataConfig(source=source)
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    plan = sources.plan_files(source, raw_dir, data_cfg)
    rf = plan.ratings
    item_table, cat_files = sources.read_item_table(plan)
    status_codes, status_stats = sources.read_status_codes(plan.status)
    catalogue_ids = None if item_table is None else item_table.index.to_numpy()

    out_dir.mkdir(parents=True, exist_ok=True)
    shard_dir = out_dir / "ratings"
    shard_dir.mkdir(exist_ok=True)
    for old in shard_dir.glob("part-*.parquet"):
        old.unlink()
    (out_dir / "manifest.json").unlink(missing_ok=True)  # a half-written folder must not look done
    remove_stale_buckets(out_dir)
    tmp = out_dir / f".buckets-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()

    est = sources.estimate_rows(rf.path)
    if data_cfg.max_rows and data_cfg.max_rows > 0:
        est = min(est, data_cfg.max_rows)
    n_buckets = int(min(MAX_BUCKETS, max(1, -(-est // chunk_rows))))
    roles = list(rf.roles)
    rec_dtype = np.dtype([(r, _DTYPES[r]) for r in roles])
    stats = sources.new_stats(rf)
    try:
        handles = [open(tmp / f"b{k:04d}.bin", "wb") for k in range(n_buckets)]
        try:
            for cols in sources.iter_chunks(rf, stats, chunk_rows, data_cfg.max_rows):
                n = len(cols["user"])
                if n == 0:
                    continue
                rec = np.empty(n, dtype=rec_dtype)
                for r in roles:
                    rec[r] = cols[r]
                if n_buckets == 1:
                    rec.tofile(handles[0])
                    continue
                b = _bucket_of(cols["user"], n_buckets)
                order = np.argsort(b, kind="stable")  # stable: file order within a bucket
                rec = rec[order]
                bounds = np.searchsorted(b[order], np.arange(n_buckets + 1))
                for k in range(n_buckets):
                    if bounds[k + 1] > bounds[k]:
                        rec[bounds[k]:bounds[k + 1]].tofile(handles[k])
        finally:
            for h in handles:
                h.close()

        shards, rows_out, biggest, n_users = [], 0, 0, 0
        for k in range(n_buckets):
            path = tmp / f"b{k:04d}.bin"
            rec = np.fromfile(path, dtype=rec_dtype)
            path.unlink()
            if len(rec) == 0:
                continue
            biggest = max(biggest, len(rec))
            n_users += len(np.unique(rec["user"]))  # a user's rows are all in one bucket
            cols = {r: np.ascontiguousarray(rec[r]) for r in roles}
            del rec
            cols = V.apply_row_filters(cols, stats, data_cfg.unrated, data_cfg.min_user_ratings)
            V.flag_references(cols, stats, catalogue_ids, status_codes)
            if len(cols["user"]) == 0:
                continue
            name = f"part-{len(shards):05d}.parquet"
            pq.write_table(_arrow_table(cols, roles), shard_dir / name, compression="zstd")
            shards.append(name)
            rows_out += len(cols["user"])
        sources.note_grouping(stats, n_users)
        if not shards:  # every row dropped: one empty shard keeps the schema
            empty = {r: np.empty(0, _DTYPES[r]) for r in roles}
            pq.write_table(_arrow_table(empty, roles), shard_dir / "part-00000.parquet", compression="zstd")
            shards.append("part-00000.parquet")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    outputs = {"ratings": {"shards": shards, "rows": rows_out, "largest_bucket_rows": biggest}}
    if item_table is not None:
        table = item_table.reset_index()
        table.to_parquet(out_dir / "anime.parquet", index=False)
        outputs["anime"] = {"file": "anime.parquet", "rows": len(table)}
    else:
        (out_dir / "anime.parquet").unlink(missing_ok=True)

    files = {rf.path.name: stats.to_dict(), **{n: s.to_dict() for n, s in cat_files.items()}}
    if status_stats is not None:
        files[status_stats.name] = status_stats.to_dict()
    manifest = {
        "source": source,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "raw": str(raw_dir.resolve()),
        "data_config": dataclasses.asdict(data_cfg),
        "chunk_rows": int(chunk_rows),
        "buckets": n_buckets,
        "outputs": outputs,
        "files": files,
    }
    V.check_balance(manifest)
    if stats.rows_kept != rows_out:
        raise AssertionError(f"manifest says {stats.rows_kept} rows kept, the shards hold {rows_out}")
    _write_json_atomic(out_dir / "manifest.json", manifest)
    return manifest


def load_processed(out_dir, memory_limit: int | None = None):
    """Read the output of ``prepare`` back as ``(frame, item_table, manifest)``, the same triple as
    ``sources.load`` (rows in shard order, see the module docstring).

    Args:
        out_dir: the folder ``prepare`` wrote.
        memory_limit: bytes the load may use; default ``ANIMEREC_MEMORY_LIMIT`` or MemAvailable.
    """
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    mpath = out_dir / "manifest.json"
    if not mpath.is_file():
        raise DataError(mpath, "not a prepared data folder (no manifest.json): run "
                               "`animerec prepare --source NAME --raw DIR --out " + str(out_dir) + "` first")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(mpath, f"invalid JSON: {exc.msg}", line=exc.lineno) from None
    shards = [out_dir / "ratings" / s for s in manifest.get("outputs", {}).get("ratings", {}).get("shards", [])]
    missing = [s for s in shards if not s.is_file()]
    if not shards or missing:
        raise DataError(out_dir / "ratings", f"shards listed in manifest.json are missing: "
                                             f"{[s.name for s in missing] or 'none listed'}")
    rows = sum(pq.ParquetFile(s).metadata.num_rows for s in shards)
    limit = memory_limit if memory_limit is not None else sources.available_memory()
    if rows * PROCESSED_BYTES_PER_ROW > limit:
        raise ResourceError(f"{out_dir}: {rows:,} prepared rows need about "
                            f"{sources.human_bytes(rows * PROCESSED_BYTES_PER_ROW)}, more than the "
                            f"{sources.human_bytes(limit)} available; lower data.max_rows and prepare again")
    # fill preallocated columns shard by shard: peak ~ the final frame plus one shard
    schema = pq.ParquetFile(shards[0]).schema_arrow
    cols = {name: np.empty(rows, dtype=_DTYPES[name]) for name in schema.names}
    at = 0
    for s in shards:
        part = pq.read_table(s)
        n = part.num_rows
        for name in cols:
            cols[name][at:at + n] = part.column(name).to_numpy()
        at += n
        del part
    frame = sources.frame_of(cols)
    kept = sum(f["rows_kept"] for n, f in manifest["files"].items() if "layout" in f.get("format", {}))
    if kept != len(frame):
        raise DataError(mpath, f"manifest.json says {kept} rating rows kept, the shards hold {len(frame)}")
    item_table = None
    apath = out_dir / "anime.parquet"
    if apath.is_file():
        item_table = pd.read_parquet(apath).set_index("anime_id")
        item_table.index = item_table.index.astype(np.int64)
        for col in ("genres", "studios"):
            if col in item_table:
                item_table[col] = [list(v) if v is not None else [] for v in item_table[col]]
    return frame, item_table, manifest
