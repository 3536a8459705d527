"""Seeded MyAnimeList-shaped synthetic data with planted ground truth, at any size.

Size: one module because planting, the later snapshot and the chunked list writer share the
planted ``truth`` and its child-seed streams; a sixth is this docstring, the model's specification
(the catalogue, which only reads ``truth``, is ``research.data.synth_catalogue``).

``generate`` writes the five raw files of the "Anime Recommendation Database 2020" (mal2020)
with the real files' headers, quoting and quirks (``Unknown`` in many columns, sparse MAL ids,
the misspelt ``sypnopsis`` column, score 0 = "watched, not scored", CRLF line endings in
``rating_complete.csv`` as in the real file), so the same ``mal2020`` adapter reads real and
synthetic data. Beside them, ``truth.npz`` holds everything that was planted.

The generative model (all constants in ``PARAMS``; ``z`` is on a latent scale, sd about 1):

- **Genres**: the 40 most common real MAL genres. Each anime has 1-4 of them, drawn by the real
  genre frequencies (flattened); 0.4% have none (``Genres = Unknown``, as in the real file).
  ``m_i`` is the item's multi-hot genre row divided by sqrt(number of genres).
- **Segments**: ``segments`` taste segments. Segment ``s`` has a genre-taste row ``T[s]``: small
  noise, +``fav_boost`` on its ``fav_genres`` favourite genres (disjoint across segments while
  genres last) and -``dislike`` on a couple of others. A user in segment ``s`` has taste
  ``t_u = T[s] + N(0, user_taste_sd)``; their genre affinity for anime ``i`` is ``a_ui = t_u . m_i``.
- **Factors and biases**: ``p_u, q_i`` (``factors`` dims) with ``p_u . q_i`` of sd ``pq_sd``;
  user bias ``b_u`` and item bias ``b_i``.
- **What users watch**: each user watches ``n_u`` anime (log-normal across users with mean
  ``ratings_per_user`` rated ones, at least ``min(5, ratings_per_user)``), drawn without replacement
  with weights ``exp(log_pop_i + choice_taste * a_ui + choice_pq * p_u . q_i)`` (Gumbel top-k).
  ``log_pop_i`` is log-normal "exposure" correlated with ``b_i`` (good anime are popular, as on
  MAL where Score and log Members correlate at 0.7), so a few anime take most of the ratings.
- **How they rate**: ``z = b_u + b_i + p_u . q_i + rating_taste * a_ui + N(0, noise_sd)``, cut at
  fixed thresholds placed so that the ratings follow MyAnimeList's skewed 1-10 distribution
  (mode 8, few 1-3): an ordinal-probit model, so "higher z, higher rating" holds exactly.
- **The anime list**: the rated rows (status 2, completed, as ``rating_complete.csv`` holds exactly
  these), plus score-0 rows (watched, not scored; ``unrated_fraction`` of the watched rows, with
  statuses completed / watching / on hold / dropped), plus a few plan-to-watch rows (status 6,
  score 0, 0 episodes) taken from the items the user would have picked next.
- **Catalogue statistics** (Score, Members, Score-10..Score-1, ...) describe a large "MAL
  community" simulated from the planted item parameters, not the sampled ratings, so a model that
  uses ``Score`` as a side feature does not read the test ratings through it.

**A later snapshot** (``generate(..., later=DIR)``, ``animerec synth ... --later DIR``): a
second data set in the same five files (and its own ``truth.npz``) from the same planted world a
"year" on, for out-of-time verification (issue 12.5). Its knobs are ``LaterParams``:

- **Anime**: every anime of the first catalogue keeps its MAL id, genres, bias, factors and
  catalogue row (``anime.csv`` / ``anime_with_synopsis.csv`` lines copied; ``Popularity`` and
  ``Ranked`` recomputed over the larger catalogue); its exposure drifts by
  ``N(0, pop_drift_sd)``. ``new_items`` new anime (default a fifth of ``items``) get ids above the
  first catalogue's largest (MAL numbers new entries upwards), parameters drawn as the first ones
  were, ``+ new_exposure`` log exposure (this season's anime are being watched), names kept
  unique across both catalogues.
- **Taste drift**: each segment's genre-taste row moves by ``N(0, taste_drift_sd)`` per genre.
- **Users**: ``new_users`` new users (default half of ``users``; ids above the first set's
  largest) drawn from the drifted segments as the first users were; plus a ``returning`` share of
  the first users (same ``user_id``, segment and bias) whose taste follows their segment's drift
  plus ``N(0, user_drift_sd)``, whose factors are ``sqrt(1 - d^2) p_u + d * fresh`` with
  ``d = factor_drift``, and who rate about ``growth * ratings_per_user`` more anime. A returning
  user's later list is redrawn from their drifted taste (not the first list plus additions).
- The rating thresholds (the 1-10 scale) are the first set's; every draw comes from child streams
  of ``seed`` under ``synth/later``, so the first set is byte-identical with or without ``later``
  and the same arguments give the same later files.

Scale: users are generated in fixed-size chunks (a deterministic function of ``items``), each
vectorised in numpy over a (chunk users x items) matrix and appended to the CSVs with pyarrow, so
memory is bounded by the chunk and the per-user / per-item parameters, never by the rating count.
Every random draw comes from a named child stream of ``seed`` (``research.seeding``): the same
arguments give byte-identical files, and the global RNG is never touched.
"""
from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd

from research.data.synth_catalogue import (
    AGE_RATINGS,
    ENGLISH_WORDS,
    FILLER_WORDS,
    GENRE_COUNTS,
    GENRE_WORDS,
    GENRES,
    KANJI,
    KATAKANA,
    LICENSORS,
    MONTHS,
    NAME_SUFFIX,
    NAME_WORDS,
    NO_SYNOPSIS,
    PRODUCERS,
    SEASONS,
    SOURCES,
    STUDIOS,
    TYPES,
    catalogue,
    catalogue_core,
    genre_rows,
)
from research.errors import ConfigError
from research.seeding import child_seed
from research.seeding import rng as child_rng

#: The real 1-10 rating shares of rating_complete.csv (first 100k rows), the ordinal thresholds'
#: target marginal.
MAL_RATING_SHARES = (.006, .007, .011, .024, .057, .110, .219, .258, .178, .130)

ANIME_COLUMNS = (
    "MAL_ID", "Name", "Score", "Genres", "English name", "Japanese name", "Type", "Episodes", "Aired",
    "Premiered", "Producers", "Licensors", "Studios", "Source", "Duration", "Rating", "Ranked",
    "Popularity", "Members", "Favorites", "Watching", "Completed", "On-Hold", "Dropped",
    "Plan to Watch", "Score-10", "Score-9", "Score-8", "Score-7", "Score-6", "Score-5", "Score-4",
    "Score-3", "Score-2", "Score-1",
)
SYNOPSIS_COLUMNS = ("MAL_ID", "Name", "Score", "Genres", "sypnopsis")
RATING_COLUMNS = ("user_id", "anime_id", "rating")
ANIMELIST_COLUMNS = ("user_id", "anime_id", "score", "watching_status", "watched_episodes")
#: watching_status.csv, byte for byte as the real file (space in the header, no final newline).
WATCHING_STATUS = b"status, description\n1,Currently Watching\n2,Completed\n3,On Hold\n4,Dropped\n6,Plan to Watch"

FILES = ("anime.csv", "anime_with_synopsis.csv", "rating_complete.csv", "animelist.csv",
         "watching_status.csv", "truth.npz")


@dataclass(frozen=True)
class SynthParams:
    """Constants of the generative model (see the module docstring). Changing one changes the data."""

    user_bias_sd: float = 0.45
    item_bias_sd: float = 0.5
    pq_sd: float = 0.7  # sd of p_u . q_i
    rating_taste: float = 0.5  # weight of the genre affinity a_ui in the latent rating z
    noise_sd: float = 0.5  # rating noise on the latent scale
    rating_shift: float = 1.0  # shifts the thresholds up: chosen anime have high z (selection bias)
    fav_genres: int = 3  # favourite genres per segment
    fav_boost: float = 1.6
    dislike: float = 0.8  # taste for the two disliked genres of a segment
    n_disliked: int = 2
    segment_taste_sd: float = 0.25  # noise in the segment taste rows
    user_taste_sd: float = 0.35  # per-user deviation from the segment taste
    pop_sd: float = 2.2  # sd of log exposure
    pop_bias_corr: float = 0.5  # correlation of log exposure with the item bias
    choice_taste: float = 3.0  # weight of a_ui in what a user watches
    choice_pq: float = 1.5  # weight of p_u . q_i in what a user watches
    count_sigma: float = 0.87  # log-normal sd of ratings per user (real: CV ~1.07)
    plan_to_watch: float = 0.08  # plan-to-watch rows per rated row
    no_genre: float = 0.004  # share of anime with Genres = Unknown
    community: float = 2000.0  # members of an anime of median exposure in the simulated MAL community
    min_scorers: int = 100  # fewer scoring members -> Score "Unknown" (as MAL hides them)


PARAMS = SynthParams()


@dataclass(frozen=True)
class LaterParams:
    """Knobs of the later snapshot (see the module docstring). ``new_users`` / ``new_items`` of
    -1 mean the defaults: half of the first set's users, a fifth of its anime (at least 1 each)."""

    new_users: int = -1
    new_items: int = -1
    returning: float = 0.1  # share of the first set's users who appear again
    taste_drift_sd: float = 0.3  # per-genre drift of each segment's taste row
    user_drift_sd: float = 0.15  # a returning user's own taste drift, on top of the segment's
    factor_drift: float = 0.3  # d: a returning user's factors become sqrt(1 - d^2) p_u + d * fresh
    growth: float = 0.25  # a returning user rates about growth * ratings_per_user more anime
    pop_drift_sd: float = 0.3  # drift of the old anime's log exposure
    new_exposure: float = 0.5  # extra log exposure of the new anime


LATER = LaterParams()

#: the public names; the vocabularies are synth_catalogue's, re-exported (tests and benchmarks
#: read them as synth.GENRES, ...)
__all__ = ["MAL_RATING_SHARES", "ANIME_COLUMNS", "SYNOPSIS_COLUMNS", "RATING_COLUMNS",
           "ANIMELIST_COLUMNS", "WATCHING_STATUS", "FILES", "SynthParams", "PARAMS", "LaterParams",
           "LATER", "generate", "load_truth", "latent_rating", "AGE_RATINGS", "ENGLISH_WORDS",
           "FILLER_WORDS", "GENRE_COUNTS", "GENRE_WORDS", "GENRES", "KANJI", "KATAKANA",
           "LICENSORS", "MONTHS", "NAME_SUFFIX", "NAME_WORDS", "NO_SYNOPSIS", "PRODUCERS",
           "SEASONS", "SOURCES", "STUDIOS", "TYPES"]

# cells of the (chunk users x items) matrices; fixes the chunk size as a function of items only
_CHUNK_CELLS = 1 << 22


# ---------------------------------------------------------------------------------------------
# Public API

def generate(out_dir, users: int = 600, items: int = 800, ratings_per_user: int = 60, segments: int = 5,
             factors: int = 8, unrated_fraction: float = 0.1, seed: int = 0, later=None,
             later_params: LaterParams = LATER) -> dict:
    """Write a synthetic data set in the mal2020 raw schema, with its planted truth.

    Args:
        out_dir: folder to write into (created; existing files of the same names are replaced).
        users: number of users.
        items: number of anime in the catalogue.
        ratings_per_user: mean number of rated anime per user (log-normal across users).
        segments: number of planted genre-taste segments of users.
        factors: dimension of the planted user / item latent factors.
        unrated_fraction: share of the watched ``animelist.csv`` rows with score 0.
        seed: seed of every random draw.
        later: a folder for the later snapshot of the same world (see the module docstring), or
            None for none. Must not be ``out_dir``.
        later_params: the later snapshot's knobs (``LaterParams``).

    Returns:
        ``{"out_dir", "files": {name: path}, "rows": {name: rows written}, "users", "items",
        "params"}``; ``rows`` counts data rows (header excluded). With ``later``, also
        ``"later"``: the same keys for the later folder plus ``"new_users"``, ``"returning_users"``,
        ``"new_items"``.

    Raises:
        ConfigError: on arguments out of range.
    """
    _check(users, items, ratings_per_user, segments, factors, unrated_fraction)
    if later is not None:
        _check_later(Path(out_dir), Path(later), later_params)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    P = PARAMS
    truth = _plant(users, items, ratings_per_user, segments, factors, seed, P)
    cat = catalogue(truth, seed, P)

    anime = cat.loc[:, list(ANIME_COLUMNS)]
    anime.to_csv(out / "anime.csv", index=False, lineterminator="\n")
    syn = cat.loc[~cat["_hentai"], list(SYNOPSIS_COLUMNS)]
    syn.to_csv(out / "anime_with_synopsis.csv", index=False, lineterminator="\n")
    (out / "watching_status.csv").write_bytes(WATCHING_STATUS)

    n_rated, n_list = _write_interactions(out, truth, unrated_fraction, seed, P)
    truth["item_episodes"] = cat["_episodes"].to_numpy(np.int32)
    _write_npz(out / "truth.npz", truth, params={
        "users": users, "items": items, "ratings_per_user": ratings_per_user, "segments": segments,
        "factors": factors, "unrated_fraction": unrated_fraction, "seed": seed, **asdict(P)})
    files = {name: str(out / name) for name in FILES}
    rows = {"anime.csv": len(anime), "anime_with_synopsis.csv": len(syn), "rating_complete.csv": n_rated,
            "animelist.csv": n_list, "watching_status.csv": 5}
    info = {"out_dir": str(out), "files": files, "rows": rows, "users": users, "items": items,
            "params": asdict(P)}
    if later is not None:
        info["later"] = _generate_later(Path(later), truth, cat, ratings_per_user, unrated_fraction, seed, P,
                                        later_params, first_params={
                                            "users": users, "items": items, "ratings_per_user": ratings_per_user,
                                            "segments": segments, "factors": factors,
                                            "unrated_fraction": unrated_fraction, "seed": seed})
    return info


def load_truth(out_dir) -> dict:
    """The planted truth of a generated folder: a dict of numpy arrays (and ``params``, a dict).

    Keys: ``user_ids``, ``item_ids`` (MAL ids, in the order of every per-user / per-item array),
    ``genres`` (names), ``item_genres`` (items x genres, bool), ``user_segment``, ``segment_taste``
    (segments x genres), ``segment_favourites`` (segments x fav_genres, genre indices),
    ``user_taste`` (users x genres), ``user_bias``, ``item_bias``, ``user_factors``,
    ``item_factors``, ``item_log_popularity``, ``item_episodes``, ``rating_thresholds`` (9 cut
    points of z), ``n_rated`` (rated rows per user).
    """
    with np.load(Path(out_dir) / "truth.npz", allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    out["params"] = json.loads(out.pop("params_json").item())
    return out


def latent_rating(truth: dict, user_index, item_index) -> np.ndarray:
    """The noiseless latent ``z`` of (user index, item index) pairs (indices into ``truth`` arrays).

    ``rating = 1 + number of rating_thresholds below z + noise``: the oracle a model can approach.
    """
    u, i = np.asarray(user_index), np.asarray(item_index)
    p = truth["params"]
    m = genre_rows(truth["item_genres"])
    a = np.einsum("ng,ng->n", truth["user_taste"][u].astype(np.float64), m[i])
    return (truth["user_bias"][u] + truth["item_bias"][i]
            + np.einsum("nf,nf->n", truth["user_factors"][u], truth["item_factors"][i])
            + p["rating_taste"] * a)


# ---------------------------------------------------------------------------------------------
# The planted parameters

def _check(users, items, ratings_per_user, segments, factors, unrated_fraction) -> None:
    def whole(name, v, lo):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ConfigError(f"synth.{name} must be an integer >= {lo}, got {v!r}")
    whole("users", users, 1)
    whole("items", items, 10)
    whole("ratings_per_user", ratings_per_user, 1)
    whole("segments", segments, 1)
    whole("factors", factors, 1)
    if ratings_per_user > items // 2:
        raise ConfigError(f"synth.ratings_per_user ({ratings_per_user}) must be at most half of "
                          f"synth.items ({items})")
    if segments > users:
        raise ConfigError(f"synth.segments ({segments}) must be at most synth.users ({users})")
    if not (isinstance(unrated_fraction, (int, float)) and 0.0 <= unrated_fraction < 1.0):
        raise ConfigError(f"synth.unrated_fraction must be in [0, 1), got {unrated_fraction!r}")



def _plant_items(r: np.random.Generator, n_items: int, n_fac: int, P: SynthParams):
    """Genres (items x genres, bool), bias, factors and log exposure of ``n_items`` anime."""
    n_gen = len(GENRES)
    counts = np.array([c for _, c in GENRE_COUNTS], dtype=np.float64)
    k = r.choice(4, size=n_items, p=[.28, .3, .24, .18]) + 1
    k[r.random(n_items) < P.no_genre] = 0
    w = np.log(counts ** 0.75)  # flattened real frequencies: rare genres still get anime
    keys = w[None, :] - np.log(r.standard_exponential((n_items, n_gen)))
    rank = np.argsort(np.argsort(-keys, axis=1, kind="stable"), axis=1, kind="stable")
    item_genres = rank < k[:, None]
    quality = r.normal(size=n_items)
    item_bias = P.item_bias_sd * quality
    item_factors = r.normal(0.0, 1.0, (n_items, n_fac)) * math.sqrt(P.pq_sd / math.sqrt(n_fac))
    rho = P.pop_bias_corr
    log_pop = P.pop_sd * (rho * quality + math.sqrt(1 - rho * rho) * r.normal(size=n_items))
    return item_genres, item_bias, item_factors, log_pop


def _plant(n_users, n_items, ratings_per_user, n_seg, n_fac, seed, P: SynthParams) -> dict:
    n_gen = len(GENRES)
    counts = np.array([c for _, c in GENRE_COUNTS], dtype=np.float64)

    # items: ids, genres, biases, factors, exposure (independent of the number of users)
    r = child_rng(seed, "synth/items")
    span = max(48_492, 3 * n_items)  # real MAL ids run to 48,492 with gaps
    item_ids = np.sort(r.choice(span, size=n_items, replace=False) + 1).astype(np.int64)
    item_genres, item_bias, item_factors, log_pop = _plant_items(r, n_items, n_fac, P)

    # segments: favourite genres disjoint across segments while there are enough of them
    r = child_rng(seed, "synth/segments")
    eligible = np.array([g not in ("Hentai",) for g in GENRES])
    fav_w = np.where(eligible, np.sqrt(counts), 0.0)
    favs = np.zeros((n_seg, P.fav_genres), dtype=np.int64)
    taste = r.normal(0.0, P.segment_taste_sd, (n_seg, n_gen))
    pool: list[int] = []
    for s in range(n_seg):
        if len(pool) < P.fav_genres:  # a fresh weighted permutation of the eligible genres
            pool = list(np.argsort(np.log(fav_w + 1e-300) - np.log(r.standard_exponential(n_gen)))[::-1]
                        [:int(eligible.sum())])
        favs[s] = pool[:P.fav_genres]
        del pool[:P.fav_genres]
        taste[s, favs[s]] += P.fav_boost
        others = np.setdiff1d(np.arange(n_gen), favs[s])
        taste[s, r.choice(others, size=P.n_disliked, replace=False)] -= P.dislike
    seg_share = r.dirichlet(np.full(n_seg, 8.0))  # unequal but never tiny segments

    # users (O(users) arrays, drawn once so that the chunking never changes them)
    r = child_rng(seed, "synth/users")
    user_ids = np.cumsum(1 + (r.random(n_users) < 0.05)) - 1  # a few ids skipped, as in the real file
    user_segment = r.choice(n_seg, size=n_users, p=seg_share)
    user_segment[:n_seg] = np.arange(n_seg)  # every segment has at least one user
    user_taste = (taste[user_segment] + r.normal(0.0, P.user_taste_sd, (n_users, n_gen))).astype(np.float32)
    user_bias = r.normal(0.0, P.user_bias_sd, n_users)
    user_factors = r.normal(0.0, 1.0, (n_users, n_fac)) * math.sqrt(P.pq_sd / math.sqrt(n_fac))
    min_r = min(5, ratings_per_user)
    cap = max(min_r, int(0.6 * n_items))
    mu = math.log(ratings_per_user) - P.count_sigma ** 2 / 2
    n_rated = np.clip(np.rint(r.lognormal(mu, P.count_sigma, n_users)), min_r, cap).astype(np.int64)

    # ordinal thresholds: the real marginal under z ~ N(shift, sd of z)
    # (sd of a_ui from 1,000 pseudo-users of a separate stream, so that the thresholds, and with
    # them the catalogue's statistics, do not change with the number of users)
    r = child_rng(seed, "synth/calibration")
    pseudo = taste[r.choice(n_seg, size=1000, p=seg_share)] + r.normal(0.0, P.user_taste_sd, (1000, n_gen))
    m = genre_rows(item_genres)
    a_sd = float(np.std(pseudo @ m[: min(n_items, 2000)].T))
    z_sd = math.sqrt(P.user_bias_sd ** 2 + P.item_bias_sd ** 2 + P.pq_sd ** 2
                     + (P.rating_taste * a_sd) ** 2 + P.noise_sd ** 2)
    cum = np.cumsum(MAL_RATING_SHARES)[:-1]
    thresholds = np.array([P.rating_shift + z_sd * NormalDist().inv_cdf(float(c)) for c in cum])

    return {
        "user_ids": user_ids.astype(np.int64), "item_ids": item_ids, "genres": np.array(GENRES),
        "item_genres": item_genres, "user_segment": user_segment.astype(np.int64),
        "segment_taste": taste, "segment_favourites": favs, "segment_share": seg_share,
        "user_taste": user_taste, "user_bias": user_bias, "item_bias": item_bias,
        "user_factors": user_factors, "item_factors": item_factors, "item_log_popularity": log_pop,
        "rating_thresholds": thresholds, "n_rated": n_rated,
    }


# ---------------------------------------------------------------------------------------------
# The later snapshot

def _check_later(out: Path, later: Path, L: LaterParams) -> None:
    if out.resolve() == later.resolve():
        raise ConfigError(f"synth: the later snapshot needs its own folder, not {str(later)!r} (the first set's)")
    for name in ("new_users", "new_items"):
        v = getattr(L, name)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < -1:
            raise ConfigError(f"synth.later.{name} must be an integer >= 0 (or -1 for the default), got {v!r}")
    for name, hi in (("returning", 1.0), ("factor_drift", 1.0), ("taste_drift_sd", math.inf),
                     ("user_drift_sd", math.inf), ("growth", math.inf), ("pop_drift_sd", math.inf),
                     ("new_exposure", math.inf)):
        v = getattr(L, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 <= v <= hi) or math.isnan(v):
            raise ConfigError(f"synth.later.{name} must be a number in [0, {hi}], got {v!r}")
    if L.new_users == 0 and L.returning == 0:
        raise ConfigError("synth.later: no users (new_users = 0 and returning = 0)")


def _generate_later(out: Path, truth: dict, cat: pd.DataFrame, ratings_per_user: int, unrated_fraction: float,
                    seed: int, P: SynthParams, L: LaterParams, first_params: dict) -> dict:
    """Write the later snapshot of the world ``truth`` / ``cat`` describe (module docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    n_users0, n_items0 = len(truth["user_ids"]), len(truth["item_ids"])
    n_seg, n_gen = truth["segment_taste"].shape
    n_fac = truth["item_factors"].shape[1]
    n_new_u = L.new_users if L.new_users >= 0 else max(1, n_users0 // 2)
    n_new_i = L.new_items if L.new_items >= 0 else max(1, n_items0 // 5)
    later_seed = child_seed(seed, "synth/later")

    # anime: the old ones (same ids and parameters, drifted exposure) + new ones above the largest id
    r = child_rng(seed, "synth/later/items")
    new_ids = truth["item_ids"].max() + np.cumsum(1 + r.geometric(0.5, n_new_i)).astype(np.int64)
    g_new, b_new, f_new, pop_new = _plant_items(r, n_new_i, n_fac, P)
    pop_old = truth["item_log_popularity"] + r.normal(0.0, L.pop_drift_sd, n_items0)

    # taste drift of the segments
    r = child_rng(seed, "synth/later/segments")
    taste0 = truth["segment_taste"]
    taste1 = taste0 + r.normal(0.0, L.taste_drift_sd, taste0.shape)

    # users: returning (a share of the first ones, drifted) + new ones above the largest id
    r = child_rng(seed, "synth/later/users")
    n_items1 = n_items0 + n_new_i
    min_r = min(5, ratings_per_user)
    cap = max(min_r, int(0.6 * n_items1))
    scale = math.sqrt(P.pq_sd / math.sqrt(n_fac))
    n_ret = int(round(L.returning * n_users0))
    ret = np.sort(r.choice(n_users0, size=n_ret, replace=False)).astype(np.int64)
    seg_ret = truth["user_segment"][ret]
    taste_ret = (truth["user_taste"][ret] + (taste1 - taste0)[seg_ret]
                 + r.normal(0.0, L.user_drift_sd, (n_ret, n_gen)))
    d = L.factor_drift
    fac_ret = (math.sqrt(1.0 - d * d) * truth["user_factors"][ret]
               + d * r.normal(0.0, 1.0, (n_ret, n_fac)) * scale)
    nr_ret = np.clip(truth["n_rated"][ret] + r.poisson(L.growth * ratings_per_user, n_ret), min_r, cap)
    ids_new = truth["user_ids"].max() + np.cumsum(1 + (r.random(n_new_u) < 0.05)).astype(np.int64)
    seg_new = r.choice(n_seg, size=n_new_u, p=truth["segment_share"])
    taste_new = taste1[seg_new] + r.normal(0.0, P.user_taste_sd, (n_new_u, n_gen))
    bias_new = r.normal(0.0, P.user_bias_sd, n_new_u)
    fac_new = r.normal(0.0, 1.0, (n_new_u, n_fac)) * scale
    mu = math.log(ratings_per_user) - P.count_sigma ** 2 / 2
    nr_new = np.clip(np.rint(r.lognormal(mu, P.count_sigma, n_new_u)), min_r, cap)

    later = {
        "user_ids": np.concatenate([truth["user_ids"][ret], ids_new]).astype(np.int64),
        "item_ids": np.concatenate([truth["item_ids"], new_ids]), "genres": truth["genres"],
        "item_genres": np.vstack([truth["item_genres"], g_new]),
        "user_segment": np.concatenate([seg_ret, seg_new]).astype(np.int64),
        "segment_taste": taste1, "segment_favourites": truth["segment_favourites"],
        "segment_share": truth["segment_share"],
        "user_taste": np.vstack([taste_ret, taste_new]).astype(np.float32),
        "user_bias": np.concatenate([truth["user_bias"][ret], bias_new]),
        "user_factors": np.vstack([fac_ret, fac_new]),
        "item_bias": np.concatenate([truth["item_bias"], b_new]),
        "item_factors": np.vstack([truth["item_factors"], f_new]),
        "item_log_popularity": np.concatenate([pop_old, pop_new + L.new_exposure]),
        "rating_thresholds": truth["rating_thresholds"],
        "n_rated": np.concatenate([nr_ret, nr_new]).astype(np.int64),
        "item_new": np.r_[np.zeros(n_items0, bool), np.ones(n_new_i, bool)],
        "first_user_index": np.r_[ret, np.full(n_new_u, -1, np.int64)],
        "segment_drift": taste1 - taste0,
    }

    # catalogue: the first rows as they were, the new anime's rows drawn as the first ones were
    new_truth = {k: later[k][n_items0:] for k in ("item_ids", "item_genres", "item_bias", "item_log_popularity")}
    new_truth.update({k: later[k] for k in ("segment_share", "segment_taste", "rating_thresholds")})
    cat_new = catalogue(new_truth, later_seed, P) if n_new_i else cat.iloc[:0]
    cat_new = cat_new.assign(Name=_unique_names(cat["Name"].tolist(), cat_new["Name"].tolist()))
    both = pd.concat([cat, cat_new], ignore_index=True)
    _rerank(both)
    anime = both.loc[:, list(ANIME_COLUMNS)]
    anime.to_csv(out / "anime.csv", index=False, lineterminator="\n")
    syn = both.loc[~both["_hentai"].astype(bool), list(SYNOPSIS_COLUMNS)]
    syn.to_csv(out / "anime_with_synopsis.csv", index=False, lineterminator="\n")
    (out / "watching_status.csv").write_bytes(WATCHING_STATUS)
    episodes = both["_episodes"].to_numpy(np.int32)
    n_rated, n_list = _write_interactions(out, later, unrated_fraction, later_seed, P, episodes=episodes)
    later["item_episodes"] = episodes
    _write_npz(out / "truth.npz", later, params={**first_params, **asdict(P),
                                                  "later": asdict(L), "later_of": first_params})
    return {"out_dir": str(out), "files": {name: str(out / name) for name in FILES},
            "rows": {"anime.csv": len(anime), "anime_with_synopsis.csv": len(syn), "rating_complete.csv": n_rated,
                     "animelist.csv": n_list, "watching_status.csv": 5},
            "users": n_ret + n_new_u, "items": n_items1, "new_users": n_new_u, "returning_users": n_ret,
            "new_items": n_new_i, "later_params": asdict(L)}


def _unique_names(taken: list, names: list) -> list:
    """``names`` with a " (n)" suffix where one is already in ``taken`` (or earlier in ``names``),
    so that a name still finds one anime in the later catalogue."""
    used = set(taken)
    out = []
    for name in names:
        cand, n = name, 1
        while cand in used:
            n += 1
            cand = f"{name} ({n})"
        used.add(cand)
        out.append(cand)
    return out


def _rerank(frame: pd.DataFrame) -> None:
    """``Popularity`` (by Members) and ``Ranked`` (by Score, among the ranked) over the whole
    frame, in place, as the first catalogue computes them."""
    ids = frame["MAL_ID"].to_numpy()
    members = frame["Members"].to_numpy()
    pop = np.empty(len(frame), dtype=np.int64)
    pop[np.lexsort((ids, -members))] = np.arange(1, len(frame) + 1)
    frame["Popularity"] = pop
    score = pd.to_numeric(frame["Score"], errors="coerce").fillna(-np.inf).to_numpy()
    ranked = (frame["Ranked"] != "Unknown").to_numpy()
    order = np.lexsort((ids, -score))
    rank = np.empty(len(frame), dtype=np.int64)
    rank[order] = np.arange(1, len(frame) + 1)
    frame["Ranked"] = np.where(ranked, np.char.mod("%d.0", rank), "Unknown")


# ---------------------------------------------------------------------------------------------
# Users' lists and ratings, chunk by chunk

def _write_interactions(out: Path, truth: dict, unrated_fraction: float, seed: int,
                        P: SynthParams, episodes: np.ndarray | None = None,
                        stream: str = "synth/chunk") -> tuple[int, int]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    n_users, n_items = len(truth["user_ids"]), len(truth["item_ids"])
    m = genre_rows(truth["item_genres"]).astype(np.float32)
    q = truth["item_factors"].astype(np.float32)
    log_pop = truth["item_log_popularity"].astype(np.float32)
    if episodes is None:
        episodes = _episodes_internal(truth, seed)
    thresholds = truth["rating_thresholds"]
    odds = unrated_fraction / (1.0 - unrated_fraction)
    chunk = max(1, _CHUNK_CELLS // n_items)
    n_rated_rows = n_list_rows = 0
    opts = dict(include_header=False, quoting_style="none", batch_size=1 << 16)
    # the real rating_complete.csv has CRLF line endings; animelist.csv has LF
    with open(out / "rating_complete.csv", "wb") as f_rate, open(out / "animelist.csv", "wb") as f_list:
        f_rate.write((",".join(RATING_COLUMNS) + "\r\n").encode())
        f_list.write((",".join(ANIMELIST_COLUMNS) + "\n").encode())
        for c, start in enumerate(range(0, n_users, chunk)):
            u = np.arange(start, min(start + chunk, n_users))
            r = np.random.default_rng(child_seed(seed, f"{stream}/{c}"))
            rows = _chunk(u, truth, m, q, log_pop, episodes, thresholds, odds, r, P)
            rc = pa.table({"user_id": rows["user_id"][rows["rate_order"]],
                           "anime_id": rows["anime_id"][rows["rate_order"]],
                           "rating": rows["score"][rows["rate_order"]]})
            pacsv.write_csv(rc, f_rate, pacsv.WriteOptions(eol="\r\n", **opts))
            al = pa.table({name: rows[name] for name in ANIMELIST_COLUMNS})
            pacsv.write_csv(al, f_list, pacsv.WriteOptions(eol="\n", **opts))
            n_rated_rows += len(rc)
            n_list_rows += len(al)
    return n_rated_rows, n_list_rows


def _chunk(u, truth, m, q, log_pop, episodes, thresholds, odds, r: np.random.Generator,
           P: SynthParams) -> dict:
    """All anime-list rows of users ``u`` (indices), grouped by user in index order, plus
    ``rate_order``: the positions of the rated rows in ``rating_complete.csv`` order."""
    n_items = len(log_pop)
    n_rated = truth["n_rated"][u]
    n_unrated = r.poisson(n_rated * odds) if odds > 0 else np.zeros_like(n_rated)
    n_ptw = r.poisson(n_rated * P.plan_to_watch)
    cap = int(0.8 * n_items)
    n_unrated = np.minimum(n_unrated, cap - n_rated)
    n_watch = n_rated + n_unrated
    n_ptw = np.minimum(n_ptw, cap - n_watch)
    n_tot = n_watch + n_ptw

    # choice: Gumbel top-k over exp(log_pop + choice_taste * a_ui + choice_pq * p_u . q_i), i.e.
    # successive sampling without replacement; one (chunk x items) matrix, updated in place
    taste = truth["user_taste"][u]
    pu = truth["user_factors"][u].astype(np.float32)
    left = np.hstack([P.choice_taste * taste, P.choice_pq * pu]).astype(np.float32)
    key = left @ np.hstack([m, q]).T
    key += log_pop[None, :]
    noise = r.standard_exponential(key.shape, dtype=np.float32)
    with np.errstate(divide="ignore"):  # an exponential draw of exactly 0 gives +inf: picked first
        np.log(noise, out=noise)
    key -= noise
    del noise
    kmax = int(n_tot.max())
    np.negative(key, out=key)
    if 4 * kmax >= n_items:
        top = np.argsort(key, axis=1, kind="stable")[:, :kmax]
    else:
        top = np.argpartition(key, kmax - 1, axis=1)[:, :kmax]
        top = np.take_along_axis(top, np.argsort(np.take_along_axis(key, top, axis=1), axis=1,
                                                 kind="stable"), axis=1)
    del key
    n_rows = len(u)
    pos = np.arange(kmax)[None, :]
    valid = pos < n_tot[:, None]
    watched = pos < n_watch[:, None]
    # which watched anime go unscored: a random n_unrated of them, whatever their rank
    pick = np.argsort(np.where(watched, r.random(top.shape), 2.0), axis=1, kind="stable")
    unrated = np.zeros(top.shape, dtype=bool)
    np.put_along_axis(unrated, pick, pos < n_unrated[:, None], axis=1)
    rated = watched & ~unrated

    lu, li = np.nonzero(rated)
    li = top[lu, li]  # rated pairs, row-major: grouped by user
    gu = u[lu]
    a = np.einsum("ng,ng->n", taste[lu].astype(np.float64), m[li].astype(np.float64))
    z = (truth["user_bias"][gu] + truth["item_bias"][li]
         + np.einsum("nf,nf->n", truth["user_factors"][gu], truth["item_factors"][li])
         + P.rating_taste * a + r.normal(0.0, P.noise_sd, len(li)))
    score = np.zeros(top.shape, dtype=np.int8)
    score[rated] = (1 + np.searchsorted(thresholds, z)).astype(np.int8)

    status = np.full(top.shape, 6, dtype=np.int8)
    status[rated] = 2
    status[unrated] = r.choice(np.array([2, 1, 3, 4], np.int8), size=int(unrated.sum()),
                               p=[.55, .2, .1, .15])
    ep = episodes[top]
    partial = np.floor(r.random(top.shape) * ep).astype(np.int32)  # 0 .. episodes-1
    watched_ep = np.where(status == 2, ep, np.where(status == 6, 0, partial)).astype(np.int32)

    # output order within a user: by status, then at random (the real lists are grouped by status);
    # invalid slots sort last, so the first n_tot slots of each sorted row are the user's rows
    order = np.argsort(np.where(valid, status + r.random(top.shape), np.inf), axis=1, kind="stable")
    flat = (np.arange(n_rows)[:, None] * kmax + order)[valid]
    row_user = np.repeat(np.arange(n_rows), n_tot)
    rows = {
        "user_id": truth["user_ids"][u][row_user],
        "anime_id": truth["item_ids"][top.ravel()[flat]],
        "score": score.ravel()[flat], "watching_status": status.ravel()[flat],
        "watched_episodes": watched_ep.ravel()[flat],
    }
    # rating_complete.csv: the rated rows, in a random order within each user
    idx = np.flatnonzero(rated.ravel()[flat])
    rows["rate_order"] = idx[np.lexsort((r.random(len(idx)), row_user[idx]))]
    return rows


def _episodes_internal(truth: dict, seed: int) -> np.ndarray:
    return catalogue_core(truth, seed)["_episodes"]


# ---------------------------------------------------------------------------------------------
# truth.npz, written deterministically (np.savez stamps the zip entries with the current time)

def _write_npz(path: Path, truth: dict, params: dict) -> None:
    arrays = dict(truth)
    arrays["params_json"] = np.array(json.dumps(params, sort_keys=True))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            arr = np.asarray(arrays[name])
            if not arr.flags.c_contiguous:
                arr = np.ascontiguousarray(arr)
            np.lib.format.write_array(buf, arr, allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
