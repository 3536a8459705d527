"""``animerec bench verify --quick``: a synthetic run verified on its later snapshot; the JSON has
verify's per-stage seconds, consistent with each other, and the summary renders them. Nothing here
asserts on how long anything took."""
import json

from research.bench import main


def test_verify_bench_quick(tmp_path, monkeypatch):
    monkeypatch.setenv("ANIMEREC_BENCH_DIR", str(tmp_path))
    main("verify", quick=True)
    res = json.loads((tmp_path / "quick" / "verify.json").read_text())
    assert res["status"] == "ok", res.get("notes")
    (r,) = res["runs"]
    t = r["timing"]
    assert set(t["models"]) == {"global_mean", "popularity", "item_knn", "ease", "embedding_dot"}
    assert set(r["ndcg@10"]) == set(t["models"]) and r["skipped"] == {}  # every one folds in
    assert r["ndcg@10"]["global_mean"] is None and r["ndcg@10"]["ease"] > 0  # absent, not 0
    loading = sum(s["load"] for s in t["models"].values())
    assert abs(t["beyond_model_loading"] + loading - r["verify_seconds"]) < 1e-9
    assert t["before_models"] >= t["read_later_file"] > 0
    assert r["rows_in"] == r["history"] + r["targets"] + sum(r["dropped"].values())
    summary = (tmp_path / "quick" / "SUMMARY.md").read_text()
    assert "## verify" in summary and "Beyond model loading" in summary and "summary failed" not in summary
    assert "| global_mean |" in summary


def test_user_prefix_keeps_whole_users_within_the_rows(tmp_path):
    from research.bench.verify import _user_prefix

    src = tmp_path / "r.csv"
    src.write_text("user_id,anime_id,rating\n" + "".join(f"{u},{i},-1\n" for u, n in ((1, 3), (2, 2), (3, 4))
                                                         for i in range(n)))
    for limit, want in ((4, 3), (5, 5), (8, 5), (9, 9), (100, 9)):
        n = _user_prefix(src, tmp_path / "out" / f"{limit}.csv", limit)
        lines = (tmp_path / "out" / f"{limit}.csv").read_text().splitlines()
        assert n == want and len(lines) == want + 1 and lines[0] == "user_id,anime_id,rating"
        assert lines[1:] == src.read_text().splitlines()[1:want + 1]


def test_user_prefix_refuses_split_users_and_an_empty_prefix(tmp_path):
    import pytest

    from research.bench.verify import _user_prefix

    src = tmp_path / "r.csv"
    src.write_text("user_id,anime_id,rating\n" + "".join(f"{u},{i},-1\n" for u, n in ((1, 3), (2, 2), (3, 4))
                                                         for i in range(n)))
    with pytest.raises(ValueError, match="no whole user fits"):
        _user_prefix(src, tmp_path / "out" / "2.csv", 2)  # the first user alone has 3 rows
    split = tmp_path / "split.csv"
    split.write_text("user_id,anime_id,rating\n1,1,5\n2,1,5\n1,2,5\n")
    with pytest.raises(ValueError, match="line 4: user 1's rows are not contiguous"):
        _user_prefix(split, tmp_path / "out" / "split.csv", 100)
