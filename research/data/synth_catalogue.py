"""The catalogue side of ``research.data.synth``: the fixed vocabularies taken from the real
mal2020 files (genres and their counts, name and synopsis words, studios, types, ...) and the rows
of ``anime.csv`` / ``anime_with_synopsis.csv`` built from the planted item parameters.

``catalogue(truth, seed, P)`` reads only the planted truth and its own child streams of ``seed``
(``synth/catalogue``, ``synth/catalogue/core``, ``synth/synopsis``), so the catalogue is the same
whatever the users' lists are; ``synth`` writes the files. ``synth`` re-exports the vocabularies.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from research.seeding import rng as child_rng

if TYPE_CHECKING:
    from research.data.synth import SynthParams

# ---------------------------------------------------------------------------------------------
# Fixed vocabularies (taken from the real mal2020 files)

#: The 40 most common genres of the real anime.csv with their counts there (2020 catalogue).
GENRE_COUNTS = (
    ("Comedy", 6029), ("Action", 3888), ("Fantasy", 3285), ("Adventure", 2957), ("Kids", 2665),
    ("Drama", 2619), ("Sci-Fi", 2583), ("Music", 2244), ("Shounen", 2003), ("Slice of Life", 1914),
    ("Romance", 1899), ("School", 1642), ("Supernatural", 1479), ("Hentai", 1348),
    ("Historical", 1144), ("Mecha", 1101), ("Magic", 1081), ("Seinen", 830), ("Ecchi", 767),
    ("Mystery", 727), ("Sports", 713), ("Shoujo", 688), ("Parody", 660), ("Super Power", 632),
    ("Military", 576), ("Dementia", 512), ("Demons", 501), ("Space", 495), ("Horror", 462),
    ("Martial Arts", 425), ("Harem", 399), ("Game", 386), ("Psychological", 345), ("Police", 247),
    ("Samurai", 202), ("Vampire", 136), ("Cars", 133), ("Thriller", 131), ("Shounen Ai", 100),
    ("Josei", 97),
)
GENRES = tuple(g for g, _ in GENRE_COUNTS)

#: Words a synopsis of each genre tends to use (the content models' signal).
GENRE_WORDS = {
    "Comedy": "hilarious antics misadventures gags prank awkward silly laughs",
    "Action": "battle fight explosive enemy combat weapons clash showdown",
    "Fantasy": "kingdom sword elf dragon realm quest sorcery legendary",
    "Adventure": "journey explore treasure voyage map expedition uncharted wander",
    "Kids": "friends fun lesson puppy colorful playful cheerful little",
    "Drama": "tragedy grief family loss tears struggle sacrifice betrayal",
    "Sci-Fi": "future technology android experiment laboratory dimension cyber scientist",
    "Music": "song band concert idol melody stage singer guitar",
    "Shounen": "rival training stronger tournament determination dream champion power",
    "Slice of Life": "everyday cafe ordinary routine neighborhood quiet seasons chores",
    "Romance": "love confession heart crush date kiss feelings couple",
    "School": "classmates student council classroom teacher club exam campus",
    "Supernatural": "spirit ghost curse shrine youkai otherworldly haunted yokai",
    "Hentai": "seduction lust desire erotic intimate forbidden pleasure affair",
    "Historical": "era shogun feudal dynasty edo ancient meiji century",
    "Mecha": "robot pilot mech cockpit giant armored mobile suit",
    "Magic": "spell wizard witch wand magical mage incantation sorcerer",
    "Seinen": "salaryman adult gritty underworld corporate cynical moral harsh",
    "Ecchi": "fanservice bath swimsuit panties embarrassing perverted beach springs",
    "Mystery": "detective clue murder case secret investigate culprit riddle",
    "Sports": "team match coach baseball basketball soccer volleyball court",
    "Shoujo": "princess sparkling prince blush admirer graceful maiden fairytale",
    "Parody": "spoof satire references mockery absurd lampoon tropes send-up",
    "Super Power": "ability superhuman powers awakened telekinesis esper gifted quirk",
    "Military": "army soldier war squadron general frontline tactics platoon",
    "Dementia": "surreal dreamlike abstract hallucination distorted fragmented bizarre void",
    "Demons": "demon hell devil oni exorcist contract underworld fiend",
    "Space": "spaceship galaxy planet asteroid fleet orbit starship cosmos",
    "Horror": "blood terror monster nightmare gore scream zombie dread",
    "Martial Arts": "kung dojo fist master technique sensei kick discipline",
    "Harem": "girls suitors rivals affection household popular competing hearts",
    "Game": "player virtual online level guild mmo boss console",
    "Psychological": "mind sanity manipulation trauma paranoia consciousness obsession psyche",
    "Police": "officer crime arrest precinct criminal patrol cop law",
    "Samurai": "katana ronin swordsman bushido clan duel honor blade",
    "Vampire": "vampires fangs immortal night bite coffin crimson undead",
    "Cars": "race racing drift engine driver speed circuit highway",
    "Thriller": "conspiracy chase deadly hostage countdown suspense escape hunted",
    "Shounen Ai": "boys bond tender longing gentle closeness devotion friendship",
    "Josei": "career woman office marriage independent relationship mature thirties",
}
FILLER_WORDS = (
    "the a an of to and in his her their when after must one young world story life new "
    "finds himself herself who with that this is was but as they everything begins day time "
    "soon only way can never true people town city own old school year secret known"
).split()

NAME_WORDS = (
    "Kaze Hoshi Sora Tenshi Yume Kokoro Hikari Tsubasa Mahou Senki Gakuen Monogatari Densetsu "
    "Kimi Boku Sekai Ai Hana Tsuki Yoru Asa Umi Mori Kami Oni Ken Tamashii Shinobi Koi Natsu Fuyu "
    "Haru Aki Kiseki Mirai Kage Honoo Mizu Ryuu Tora Neko Inu Yuusha Maou Majo Hime Ouji Kishi "
    "Hoshizora Hanabi Sakura Ginga Uchuu Shoujo Shounen Kaizoku Tantei Senshi Kaidan Nichijou"
).split()
NAME_SUFFIX = ("", "", "", "", "", " 2nd Season", " (TV)", " Movie", " OVA", " Specials", " Recap",
               ": The Movie", " Zero", " II", " Final")
ENGLISH_WORDS = (
    "Star Wind Dream Heart Light Wings Magic Legend World Sky Sea Moon Night Flower Blade Spirit "
    "Ghost Knight Princess Hero Demon Shadow Fire Water Dragon Tiger Cat Dog Pirate Detective "
    "Soldier Tale Miracle Future Galaxy Summer Winter Spring Autumn Academy Chronicles Saga"
).split()
KATAKANA = list("アイウエオカキクケコサシスセソタチツテトナニヌネノ"
                "ハヒフヘホマミムメモヤユヨラリルレロワン")
KANJI = list("星空風夢心光翼魔法戦記学園物語伝説君僕世界愛花月夜朝海森神鬼剣魂"
             "忍恋夏冬春秋奇跡未来影炎水竜虎猫犬勇者王女姫騎士")

STUDIOS = ("Toei Animation", "Sunrise", "J.C.Staff", "Madhouse", "Production I.G", "TMS Entertainment",
           "Studio Deen", "Pierrot", "OLM", "A-1 Pictures", "Shin-Ei Animation", "Tatsunoko Production",
           "Nippon Animation", "Xebec", "Bones", "Kyoto Animation", "Shaft", "Gonzo", "Brain's Base",
           "Doga Kobo", "Silver Link.", "Lerche", "MAPPA", "Wit Studio", "Ufotable", "LIDENFILMS")
PRODUCERS = ("NHK", "Aniplex", "TV Tokyo", "Bandai Visual", "Lantis", "Pony Canyon", "Dentsu",
             "Movic", "Kadokawa Shoten", "Fuji TV", "Shueisha", "Kodansha", "Sotsu", "Genco",
             "Frontier Works", "AT-X", "Sanrio", "Pink Pineapple", "Victor Entertainment", "Avex Pictures")
LICENSORS = ("Funimation", "Sentai Filmworks", "VIZ Media", "Aniplex of America", "Media Blasters",
             "Discotek Media", "Bandai Entertainment", "NIS America, Inc.", "Geneon Entertainment USA")
SOURCES = (("Original", .297), ("Manga", .218), ("Unknown", .203), ("Visual novel", .057),
           ("Game", .05), ("Light novel", .044), ("Other", .034), ("Novel", .029), ("Music", .018),
           ("4-koma manga", .016), ("Web manga", .014), ("Picture book", .008), ("Book", .006),
           ("Card game", .004), ("Digital manga", .001), ("Radio", .001))
TYPES = (("TV", .284), ("OVA", .222), ("Movie", .173), ("Special", .126), ("ONA", .109),
         ("Music", .084), ("Unknown", .002))
AGE_RATINGS = ("PG-13 - Teens 13 or older", "G - All Ages", "PG - Children",
               "R - 17+ (violence & profanity)", "R+ - Mild Nudity")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
SEASONS = ("Winter", "Winter", "Winter", "Spring", "Spring", "Spring", "Summer", "Summer", "Summer",
           "Fall", "Fall", "Fall")
NO_SYNOPSIS = ("No synopsis information has been added to this title. Help improve our database by "
               "adding a synopsis here .")



def genre_rows(item_genres: np.ndarray) -> np.ndarray:
    """m_i: multi-hot genre rows scaled to unit length (zero rows for anime without genres)."""
    g = item_genres.astype(np.float64)
    k = g.sum(axis=1, keepdims=True)
    return g / np.sqrt(np.maximum(k, 1.0))



# ---------------------------------------------------------------------------------------------
# The catalogue: anime.csv and anime_with_synopsis.csv

def catalogue_core(truth: dict, seed: int) -> dict:
    """Types and episode counts (needed by the anime list as well as the catalogue)."""
    r = child_rng(seed, "synth/catalogue/core")
    n = len(truth["item_ids"])
    gi = {g: j for j, g in enumerate(GENRES)}
    ig = truth["item_genres"]
    types = np.array([t for t, _ in TYPES])[r.choice(len(TYPES), size=n, p=_norm([p for _, p in TYPES]))]
    types = np.where(ig[:, gi["Music"]] & (r.random(n) < 0.5), "Music", types)
    types = np.where(ig[:, gi["Hentai"]] & (types != "Music"), "OVA", types)
    tv = r.choice([12, 13, 24, 26, 25, 11, 10, 51, 52, 39, 50, 64, 100, 148],
                  size=n, p=_norm([30, 16, 6, 14, 4, 4, 3, 3, 5, 2, 3, 1, 1, 1]))
    few = r.geometric(0.55, size=n)  # OVA / special / short ONA: 1, 2, 3 ... episodes
    episodes = np.where(types == "TV", tv, np.where(np.isin(types, ["Movie", "Music"]), 1,
                                                    np.where(types == "ONA", np.where(r.random(n) < .4, tv, few), few)))
    return {"_types": types, "_episodes": episodes.astype(np.int32)}


def _norm(p) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    return p / p.sum()


def catalogue(truth: dict, seed: int, P: SynthParams) -> pd.DataFrame:
    from scipy.special import ndtr

    core = catalogue_core(truth, seed)
    r = child_rng(seed, "synth/catalogue")
    ids = truth["item_ids"]
    n = len(ids)
    ig = truth["item_genres"]
    gi = {g: j for j, g in enumerate(GENRES)}
    hentai = ig[:, gi["Hentai"]]
    types, episodes = core["_types"], core["_episodes"]

    # the community's view of each anime: population rating distribution from the planted model
    m = genre_rows(ig)
    mean_taste = truth["segment_share"] @ truth["segment_taste"]
    mu = truth["item_bias"] + P.rating_taste * (m @ mean_taste)
    sd = math.sqrt(P.user_bias_sd ** 2 + P.pq_sd ** 2 + (P.rating_taste * P.user_taste_sd) ** 2
                   + P.noise_sd ** 2 + 0.1)
    edges = np.concatenate([[-np.inf], truth["rating_thresholds"], [np.inf]])
    cdf = ndtr((edges[None, :] - mu[:, None]) / sd)
    p_score = np.clip(np.diff(cdf, axis=1), 0.0, None)
    p_score /= p_score.sum(axis=1, keepdims=True)  # p(rating = 1..10)
    members = np.maximum(1, r.poisson(P.community * np.exp(truth["item_log_popularity"])))
    share = r.dirichlet([6.0, 58.0, 5.0, 5.0, 26.0], size=n)  # watching, completed, hold, dropped, ptw
    status = r.multinomial(members, share)
    scorers = r.binomial(status[:, 1] + status[:, 3] + status[:, 0] // 2, 0.85)
    hist = r.multinomial(scorers, p_score)  # columns: rating 1..10
    n_sc = hist.sum(axis=1)
    mean = (hist * np.arange(1, 11)).sum(axis=1) / np.maximum(n_sc, 1)
    known = n_sc >= P.min_scorers
    score_txt = np.array([repr(round(float(x), 2)) if k else "Unknown" for x, k in zip(mean, known)])
    # Ranked: by Score among scored anime; MAL does not rank hentai
    order = np.lexsort((ids, -np.where(known, mean, mu / 10.0 - 100.0)))
    ranked = np.empty(n, dtype=np.int64)
    ranked[order] = np.arange(1, n + 1)
    ranked_unknown = hentai | (~known & (r.random(n) < 0.35))
    ranked_txt = np.where(ranked_unknown, "Unknown", np.char.mod("%d.0", ranked))
    popularity = np.empty(n, dtype=np.int64)
    popularity[np.lexsort((ids, -members))] = np.arange(1, n + 1)
    favorites = r.binomial(hist[:, 9], np.clip(0.02 * np.exp(2.0 * (mean - 7.5)) , 0, 0.5))
    score_cols = {f"Score-{s}": np.where(hist[:, s - 1] > 0, np.char.mod("%d.0", hist[:, s - 1]), "Unknown")
                  for s in range(10, 0, -1)}

    names = _names(r, n)
    genres_txt = ["Unknown" if not row.any() else ", ".join(np.array(GENRES)[row]) for row in ig]
    year = np.clip(np.rint(2020 - r.gamma(1.6, 6.0, n)), 1917, 2020).astype(int)
    month = r.integers(0, 12, n)
    day = r.integers(1, 29, n)
    weeks = np.maximum(episodes - 1, 0) * 7
    aired, premiered, duration = [], [], []
    unk = r.random((n, 8))
    minutes = r.integers(20, 27, n)
    short = r.integers(2, 16, n)
    movie_min = r.integers(45, 130, n)
    for j in range(n):
        t = types[j]
        start = f"{MONTHS[month[j]]} {day[j]}, {year[j]}"
        if unk[j, 0] < 0.018:
            aired.append("Unknown")
        elif unk[j, 0] < 0.04:
            aired.append(str(year[j]))
        elif episodes[j] > 1:
            end = np.datetime64(f"{year[j]:04d}-{month[j] + 1:02d}-{day[j]:02d}") + np.timedelta64(int(weeks[j]), "D")
            ey, em, ed = str(end).split("-")
            aired.append(f"{start} to {MONTHS[int(em) - 1]} {int(ed)}, {int(ey)}")
        else:
            aired.append(start)
        premiered.append(f"{SEASONS[month[j]]} {year[j]}" if t == "TV" and unk[j, 1] > 0.05 else "Unknown")
        if unk[j, 2] < 0.032:
            duration.append("Unknown")
        elif t == "Movie":
            h, mm = divmod(int(movie_min[j]), 60)
            duration.append(f"{h} hr. {mm} min." if h else f"{mm} min.")
        elif t == "Music":
            duration.append(f"{int(short[j]) % 6 + 2} min.")
        elif t in ("TV", "ONA", "OVA", "Special") and episodes[j] > 1:
            duration.append(f"{int(minutes[j] if t != 'ONA' else short[j])} min. per ep.")
        else:
            duration.append(f"{int(minutes[j])} min.")
    kids = ig[:, gi["Kids"]]
    age = np.array(AGE_RATINGS)[r.choice(len(AGE_RATINGS), size=n, p=_norm([.38, .30, .08, .07, .06]))]
    age = np.where(kids, np.where(r.random(n) < .6, "G - All Ages", "PG - Children"), age)
    age = np.where(ig[:, gi["Ecchi"]] & (r.random(n) < .5), "R+ - Mild Nudity", age)
    age = np.where(hentai, "Rx - Hentai", np.where(unk[:, 3] < 0.04, "Unknown", age))

    def listing(names_pool, p_unknown, col, max_k):
        out = []
        kk = r.integers(1, max_k + 1, n)
        pick = r.random((n, len(names_pool))).argsort(axis=1)
        for j in range(n):
            if unk[j, col] < p_unknown:
                out.append("Unknown")
            else:
                out.append(", ".join(names_pool[i] for i in pick[j, :kk[j]]))
        return out

    src = np.array([s for s, _ in SOURCES])[r.choice(len(SOURCES), size=n, p=_norm([p for _, p in SOURCES]))]
    ep_txt = np.where((unk[:, 5] < 0.03) | ((types == "ONA") & (unk[:, 5] < 0.2)), "Unknown",
                      episodes.astype(str))
    frame = pd.DataFrame({
        "MAL_ID": ids, "Name": names[0], "Score": score_txt, "Genres": genres_txt,
        "English name": names[1], "Japanese name": names[2], "Type": types, "Episodes": ep_txt,
        "Aired": aired, "Premiered": premiered, "Producers": listing(PRODUCERS, .444, 4, 4),
        "Licensors": listing(LICENSORS, .775, 6, 2), "Studios": listing(STUDIOS, .403, 7, 2),
        "Source": src, "Duration": duration, "Rating": age, "Ranked": ranked_txt,
        "Popularity": popularity, "Members": members, "Favorites": favorites,
        "Watching": status[:, 0], "Completed": status[:, 1], "On-Hold": status[:, 2],
        "Dropped": status[:, 3], "Plan to Watch": status[:, 4], **score_cols,
    })
    frame["sypnopsis"] = _synopses(truth, seed)
    frame["_hentai"] = hentai
    frame["_episodes"] = episodes
    return frame


def _names(r: np.random.Generator, n: int) -> tuple[list, list, list]:
    words = np.array(NAME_WORDS)
    w = r.integers(0, len(words), (n, 3))
    form = r.integers(0, 4, n)
    suf = r.integers(0, len(NAME_SUFFIX), n)
    eng = np.array(ENGLISH_WORDS)
    ew = r.integers(0, len(eng), (n, 2))
    eng_unknown = r.random(n) < 0.602
    jp_unknown = r.random(n) < 0.003
    jl = r.integers(3, 8, n)
    jchars = r.integers(0, 1 << 30, (n, 8))
    romaji, english, japanese, seen = [], [], [], {}
    for j in range(n):
        a, b, c = words[w[j]]
        base = (f"{a} no {b}", f"{a} {b}", f"{a} {b}: {c} no {a}", f"{a}{b.lower()}")[form[j]]
        name = base + NAME_SUFFIX[suf[j]]
        if name in seen:  # keep names unique so that a name finds one anime
            seen[name] += 1
            name = f"{name} ({seen[name]})"
        seen.setdefault(name, 1)
        romaji.append(name)
        english.append("Unknown" if eng_unknown[j] else f"The {eng[ew[j, 0]]} of {eng[ew[j, 1]]}")
        pool = KANJI if form[j] % 2 else KATAKANA
        japanese.append("Unknown" if jp_unknown[j] else "".join(pool[x % len(pool)] for x in jchars[j, :jl[j]]))
    return romaji, english, japanese


def _synopses(truth: dict, seed: int) -> list[str]:
    """Synopses mixing the words of each anime's genres with filler (about 40% genre words).

    Vectorised over all words of all synopses; only the final per-anime join is a Python loop.
    """
    r = child_rng(seed, "synth/synopsis")
    ig = truth["item_genres"]
    n = len(ig)
    vocab = [GENRE_WORDS[g].split() for g in GENRES]
    pool = np.array([w for ws in vocab for w in ws] + FILLER_WORDS)
    g_start = np.cumsum([0] + [len(ws) for ws in vocab])
    n_filler = len(FILLER_WORDS)
    n_words = r.integers(25, 110, n)
    missing = r.random(n) < 0.04
    item = np.repeat(np.arange(n), n_words)
    n_total = len(item)
    # a genre word: one of the anime's genres at random, then one of its words
    k = ig.sum(axis=1)
    from_genre = (r.random(n_total) < 0.4) & (k[item] > 0)
    ranks = r.random(n_total)
    which = np.minimum((ranks * k[item]).astype(np.int64), np.maximum(k[item] - 1, 0))
    genre_of = np.argsort(~ig, axis=1, kind="stable")  # each row: its genres first
    g = genre_of[item, which]
    gw = g_start[g] + (r.random(n_total) * (g_start[g + 1] - g_start[g])).astype(np.int64)
    fw = g_start[-1] + r.integers(0, n_filler, n_total)
    words = pool[np.where(from_genre, gw, fw)].astype(object)
    # sentences of 7-15 words (per anime): capitalise the first word, end the last with a period
    start_item = np.repeat(np.r_[0, np.cumsum(n_words)[:-1]], n_words)
    pos = np.arange(n_total) - start_item
    sent_len = r.integers(7, 16, n)[item]
    first = pos % sent_len == 0
    last = np.r_[first[1:], True]
    words[first] = [w.capitalize() for w in words[first]]
    words[last] = [w + "." for w in words[last]]
    bounds = np.r_[0, np.cumsum(n_words)]
    return [NO_SYNOPSIS if missing[j] else " ".join(words[bounds[j]:bounds[j + 1]]) for j in range(n)]
