"""Finding an anime by name (research/data/userlist.py: AnimeNames, resolve_anime): tiers exact >
exact ignoring punctuation > prefix > substring, most members first; ambiguous names listed, never
picked; a fuzzy did-you-mean; English / Japanese names; ids first. On a small table, then on the
real mal2020 catalogue (skipped without ANIMEREC_DATA)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from research.data import userlist
from research.data.interactions import Meta, Vocab
from research.errors import ConfigError


@pytest.fixture
def meta():
    ids = [1, 5, 20, 121, 918, 5114, 9969]
    table = pd.DataFrame({
        "name": ["Cowboy Bebop", "Cowboy Bebop: Tengoku no Tobira", "Naruto", "Fullmetal Alchemist",
                 "Gintama", "Fullmetal Alchemist: Brotherhood", "Gintama'"],
        "english_name": ["Cowboy Bebop", "Cowboy Bebop:The Movie", "Naruto", "Fullmetal Alchemist",
                         "Gintama", "Fullmetal Alchemist:Brotherhood", np.nan],
        "japanese_name": ["カウボーイビバップ", "カウボーイビバップ 天国の扉", "ナルト", "鋼の錬金術師", "銀魂",
                          "鋼の錬金術師 FULLMETAL ALCHEMIST", "銀魂'"],
        "members": [1_251_960, 273_145, 1_830_000, 1_151_621, 500_000, 2_248_456, 200_000]})
    return Meta(users=Vocab([1]), items=Vocab(ids), item_table=table)


def test_tiers_and_members_order(meta):
    names = userlist.AnimeNames(meta)
    assert names.lookup("cowboy bebop") == ("exact", [0])
    assert names.lookup("Gintama") == ("exact", [4])  # punctuation counts for an exact title
    assert names.lookup("gintama'") == ("exact", [6])
    assert names.lookup("fullmetal alchemist brotherhood") == ("exact", [5])  # punctuation ignored
    assert names.lookup("Cowboy Bebop The Movie") == ("exact", [1])  # an English name
    assert names.lookup("fullmetal") == ("prefix", [5, 3])  # Brotherhood has more members
    assert names.lookup("Tobira") == ("substring", [1])
    assert names.lookup("銀魂") == ("exact", [4])
    assert names.lookup("ｶｳﾎﾞｰｲﾋﾞﾊﾞｯﾌﾟ") == ("exact", [0])  # half-width katakana (NFKC)
    assert names.lookup("錬金術師") == ("substring", [5, 3])  # Japanese names
    assert names.lookup("") == (None, []) and names.lookup("zzz") == (None, [])


def test_resolve_lists_the_candidates_and_suggests(meta):
    assert userlist.resolve_anime(meta, "1") == [0]  # an id first
    assert userlist.resolve_anime(meta, "Brotherhood") == [5]
    with pytest.raises(userlist.AmbiguousName) as e:
        userlist.resolve_anime(meta, "fullmetal")
    msg = str(e.value)
    assert isinstance(e.value, ConfigError) and e.value.candidates == [5, 3]
    assert ("'fullmetal' is ambiguous: 2 anime match (prefix match, most members first): "
            "Fullmetal Alchemist: Brotherhood (id 5114), Fullmetal Alchemist (id 121)") in msg
    with pytest.raises(userlist.AmbiguousName, match=r"did you mean Cowboy Bebop \(id 1\)"):
        userlist.resolve_anime(meta, "cowboy bebob")
    with pytest.raises(userlist.AmbiguousName, match="no anime with name 'qqqqqq'"):
        userlist.resolve_anime(meta, "qqqqqq")
    assert userlist.AnimeNames(meta).suggest("fulmetal alchemist")[0] == 3


def test_a_list_gets_the_did_you_mean_too(tmp_path, meta):
    p = tmp_path / "l.csv"
    p.write_text("name,score\ncowboy bebob,9\nFullmetal,8\n銀魂,10\n")
    m = userlist.map_list(userlist.read_list(p), meta)
    assert m.items.tolist() == [4]
    assert "did you mean Cowboy Bebop (id 1)" in m.unknown[0].reason
    assert "ambiguous (2 anime: Fullmetal Alchemist: Brotherhood (id 5114), Fullmetal Alchemist (id 121)" \
        in m.unknown[1].reason


_REAL: dict = {}


@pytest.fixture
def real(shared_data):
    """A Meta over the whole real catalogue, as the mal2020 adapter reads it (read once)."""
    from research.data.sources import read_catalogue

    path = shared_data / "mal2020" / "anime.csv"
    if path not in _REAL:
        table, _ = read_catalogue(path, "mal2020")
        items = Vocab(table.index.to_numpy())
        _REAL[path] = Meta(users=Vocab([1]), items=items,
                           item_table=table.reindex(items.values).reset_index(drop=True))
    return _REAL[path], path


def test_real_catalogue_did_you_mean_and_ambiguity(real):
    meta, path = real
    names = userlist.AnimeNames(meta)
    with pytest.raises(userlist.AmbiguousName) as e:
        userlist.resolve_anime(meta, "cowboy bebob", names)
    assert e.value.suggestions and meta.items.ids(e.value.suggestions[0]) == 1
    assert "did you mean Cowboy Bebop (id 1)" in str(e.value)
    with pytest.raises(userlist.AmbiguousName) as e:
        userlist.resolve_anime(meta, "fullmetal", names)
    ids = [int(meta.items.ids(i)) for i in e.value.candidates]
    assert ids[:2] == [5114, 121] and len(ids) > 2  # Brotherhood first (most members), then 121
    assert "Fullmetal Alchemist: Brotherhood (id 5114), Fullmetal Alchemist (id 121)" in str(e.value)
    assert meta.items.ids(userlist.resolve_anime(meta, "Cowboy Bebop", names)[0]) == 1
    assert meta.items.ids(userlist.resolve_anime(meta, "1", names)[0]) == 1


def test_real_catalogue_english_and_japanese_names(real):
    meta, path = real
    # the item table carries MAL's English and Japanese names beside Name (the loader reads them)
    assert {"english_name", "japanese_name"} <= set(meta.item_table.columns)
    names = userlist.AnimeNames(meta)
    assert meta.items.ids(names.resolve("Attack on Titan")) == 16498  # English: Shingeki no Kyojin
    names = userlist.AnimeNames(meta, extra=userlist.catalogue_names(path))
    assert meta.items.ids(names.resolve("Attack on Titan")) == 16498  # English: Shingeki no Kyojin
    assert meta.items.ids(names.resolve("進撃の巨人")) == 16498  # Japanese
    assert meta.items.ids(names.resolve("Fullmetal Alchemist:Brotherhood")) == 5114
