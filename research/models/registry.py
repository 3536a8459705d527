"""Model names -> "module:Class", imported only when a model is built, so that running the
scikit-learn models never imports TensorFlow (about five seconds) or the peers' packages."""
from __future__ import annotations

import difflib
import importlib

from research.errors import ConfigError

MODELS: dict[str, str] = {
    # trivial reference points, in every table
    "global_mean": "research.models.baselines:GlobalMean",
    "bias": "research.models.baselines:Bias",
    "popularity": "research.models.baselines:Popularity",
    # classical collaborative filtering, content and clustering
    "user_knn": "research.models.neighbors:UserKNN",
    "item_knn": "research.models.neighbors:ItemKNN",
    "content": "research.models.content:ContentBased",
    "kmeans": "research.models.clustering:KMeansUsers",
    "ease": "research.models.ease:EASE",
    "blend": "research.models.blend:Blend",
    # Keras / TensorFlow Recommenders
    "embedding_dot": "research.models.keras.embedding_dot:EmbeddingDot",
    "svdpp": "research.models.keras.embedding_dot:SVDpp",
    "recommendernet": "research.models.keras.recommendernet:RecommenderNet",
    "two_tower": "research.models.keras.two_tower:TwoTower",
    "dnn": "research.models.keras.dnn:DNN",
    "multvae": "research.models.keras.multvae:MultVAE",
    "autorec": "research.models.keras.autorec:AutoRec",
    # peers (extra "peers")
    "surprise_svd": "research.models.peers:SurpriseSVD",
    "surprise_svdpp": "research.models.peers:SurpriseSVDpp",
    "surprise_knnbaseline": "research.models.peers:SurpriseKNNBaseline",
    "implicit_als": "research.models.peers:ImplicitALS",
    "implicit_bpr": "research.models.peers:ImplicitBPR",
}

KERAS_MODELS = {"embedding_dot", "svdpp", "recommendernet", "two_tower", "dnn", "multvae", "autorec"}
#: the peers' models (extra "peers"): absent from the contract suite, which needs no extra
PEER_MODELS = {name for name, where in MODELS.items() if where.startswith("research.models.peers:")}


def model_class(name: str):
    """The class registered under ``name`` (imports its module)."""
    if name not in MODELS:
        near = difflib.get_close_matches(name, MODELS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else f" (known: {', '.join(MODELS)})"
        raise ConfigError(f"unknown model {name!r}{hint}")
    module, cls = MODELS[name].split(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"model {name!r} needs a package that is not installed: {exc.name} "
                          f"(pip install -e '.[peers]' for the peers)") from None
    return getattr(mod, cls)


def build(name: str, params: dict, seed: int, where: str = ""):
    """Instantiate model ``name`` with ``params`` (checked against its constructor) and ``seed``."""
    cls = model_class(name)
    valid = list(cls.param_defaults())
    for key in params:
        if key not in valid:
            near = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f" (valid: {', '.join(valid)})"
            raise ConfigError(f"unknown parameter {key!r} for model {name!r}{where}{hint}")
    try:
        return cls(seed=seed, **params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {name!r}{where}: {exc}") from None
