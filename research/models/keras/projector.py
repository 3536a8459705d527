"""The item embeddings of a fitted Keras model for TensorBoard's projector, labelled with anime
names: ``metadata.tsv``, ``embedding.tsv``, ``projector_config.pbtxt`` and the same vectors as a TF
checkpoint (``embedding.ckpt-1*``), in a folder marked as a TensorBoard run of its own
(``KerasRecommender.export_projector``, after every fit with a ``log_dir``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

import research  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from research.data.interactions import Meta


def write_projector(log_dir: Path, vecs: np.ndarray, items: np.ndarray, meta: Meta) -> Path:
    """Write rows ``items`` of ``vecs`` (item index -> vector), named from ``meta``, to ``log_dir``
    (created) for the projector; returns ``log_dir``."""
    from tensorboard.plugins import projector

    from research import tb

    log_dir.mkdir(parents=True, exist_ok=True)
    items = np.asarray(items, dtype=np.int64)
    names = meta.item_names(items)
    ids = meta.items.ids(items)
    clean = lambda s: str(s).replace("\t", " ").replace("\n", " ").replace("\r", " ")  # noqa: E731
    with open(log_dir / "metadata.tsv", "w", encoding="utf-8") as fh:
        fh.write("name\tanime_id\n")
        for name, i in zip(names, ids):
            fh.write(f"{clean(name)}\t{i}\n")
    table = np.asarray(vecs)[items].astype(np.float32)
    # The projector reads the vectors from embedding.tsv, named relative to the config, so the
    # folder can move. No checkpoint state file ("checkpoint"): with one, the projector would also
    # attach these vectors, without names, to the train/ and validation/ runs below (it looks for a
    # checkpoint in a run's parent folder). The same vectors as a TF checkpoint: embedding.ckpt-1.
    np.savetxt(log_dir / "embedding.tsv", table, delimiter="\t", fmt="%.7g")
    (log_dir / "checkpoint").unlink(missing_ok=True)  # an older export's state file
    tf.train.Checkpoint(embedding=tf.Variable(table, name="item_embedding")).write(
        str(log_dir / "embedding.ckpt-1"))
    config = projector.ProjectorConfig()
    emb = config.embeddings.add()
    emb.tensor_name = "item_embedding"
    emb.tensor_path = "embedding.tsv"
    emb.tensor_shape.extend(table.shape)
    emb.metadata_path = "metadata.tsv"
    projector.visualize_embeddings(str(log_dir), config)
    tb.mark_run(log_dir)  # the projector only reads configs in the folders of runs
    return log_dir
