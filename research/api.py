"""The Python API in a few names: load a config, run it, open a run folder and recommend.

    from research import api
    cfg = api.load_config("experiments/configs/quickstart.toml")
    (run_dir,) = api.run(cfg)
    run = api.load_run(run_dir)
    model = run.model("item_knn")

``Run`` holds what a run folder says (``meta``, ``metrics``, ``config``, ``seen``, ``candidates``)
and maps MyAnimeList ids and names to the model's indices. Everything else is the library's
own: ``History`` and ``Recommender.recommend`` / ``recommend_history`` (research/models/base.py),
``research.explain`` for reasons. Nothing here fits or writes anything but ``run``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from research.config import load as load_config
from research.experiment import run
from research.models.base import History

__all__ = ["History", "Run", "load_config", "load_run", "run"]


@dataclass
class Run:
    """An opened run folder (``load_run``)."""

    path: Path
    meta: object
    metrics: dict
    config: dict
    allow_pickle: bool = False
    _models: dict = field(default_factory=dict, repr=False)
    _seen: object = field(default=None, repr=False)

    @property
    def models(self) -> list[str]:
        """The names of the run's models (as in the config)."""
        return list(self.config.get("models", {}))

    def model(self, name: str):
        """Model ``name`` reloaded from the folder (cached)."""
        if name not in self._models:
            from research.experiment import load_model

            self._models[name] = load_model(self.path, name, self.meta, allow_pickle=self.allow_pickle)
        return self._models[name]

    @property
    def seen(self):
        """users x items sparse matrix of each training user's train + validation anime (what
        ``recommend`` should exclude, as the harness does)."""
        if self._seen is None:
            from research.experiment import load_seen

            self._seen = load_seen(self.path)
        return self._seen

    @property
    def candidates(self) -> np.ndarray:
        """Boolean mask of the anime with a training row (the harness's candidates)."""
        return np.asarray(self.seen.getnnz(axis=0) > 0).ravel()

    def user_index(self, user_ids) -> np.ndarray:
        """The model's user indices of MyAnimeList ``user_id`` values (KeyError if unknown)."""
        return np.atleast_1d(self.meta.users.index(np.atleast_1d(user_ids)))

    def item_index(self, anime) -> np.ndarray:
        """The model's item indices of MyAnimeList anime ids or names (a name must name one anime:
        ``research.data.userlist.resolve_anime``; an ambiguous one raises, listing candidates)."""
        from research.data.userlist import AnimeNames, resolve_anime

        names = None
        out = []
        for a in np.atleast_1d(np.asarray(anime, dtype=object)):
            if isinstance(a, (int, np.integer)):
                out.append(int(self.meta.items.index(int(a))))
            else:
                names = names or AnimeNames(self.meta)
                out.append(resolve_anime(self.meta, str(a), names)[0])
        return np.asarray(out, dtype=np.int64)

    def names(self, items) -> list[str]:
        """Anime names of item indices (``-1`` padding left out)."""
        items = [int(i) for i in np.ravel(items) if i >= 0]
        return self.meta.item_names(items) if items else []


def load_run(path, allow_pickle: bool = False) -> Run:
    """Open a run folder (``results/runs/<experiment>/<id>-seed<s>/``): its meta, metrics and
    config now, models and ``seen`` when first asked for."""
    from research.experiment import load_run as _load

    path = Path(path)
    meta, metrics, config = _load(path)
    return Run(path, meta, metrics, config, allow_pickle)
