"""What the trials and the refit share: the search's config, table, folder, objective and seeds,
the harness call, the per-trial records (``keras_tuner/trial_<id>/animerec.json``) and the
progress line."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Callable

from research import results as R
from research.config import Config, ModelSpec
from research.eval import metrics as M


@dataclasses.dataclass
class Context:
    cfg: Config
    spec: ModelSpec
    out: Path
    objective: str
    direction: str
    seed: int
    model_seed: int
    meta: dict
    trial_hook: Callable | None = None
    quiet: bool = False
    defaults: dict | None = None  # the untuned configuration as a point of the space, if it is one
    archive: Path | None = None  # the search's committed copy (research.tuning.archive), saved after each trial

    @property
    def project(self) -> Path:
        return self.out / "keras_tuner"

    @property
    def metric_names(self) -> list[str]:
        return M.harness_keys(self.cfg.eval.k)

    def evaluate(self, model, split, part: str, ranking: bool = True):
        from research.eval.harness import evaluate

        e = self.cfg.eval
        return evaluate(model, split, k=e.k, part=part, batch_users=e.batch_users,
                        relevance_threshold=e.relevance_threshold, ranking=ranking)

    def _record_path(self, tid: str) -> Path:
        return self.project / f"trial_{tid}" / "animerec.json"

    def write_record(self, tid: str, record: dict) -> None:
        R.write_json(self._record_path(tid), record)

    def read_record(self, tid: str) -> dict:
        p = self._record_path(tid)
        return R.read_json(p) if p.is_file() else {}

    def progress(self, rec: dict) -> None:
        if self.quiet:
            return
        hp = ", ".join(f"{k}={short(v)}" for k, v in rec["hyperparameters"].items())
        rss = f", rss {rec['rss_mb']:.0f} MB" if rec.get("rss_mb") else ""
        print(f"[animerec] tune {self.spec.name} trial {rec['trial_id']}: {hp} -> val {self.objective} = "
              f"{rec['objective']:.4f} ({rec['seconds']:.1f} s{rss})", file=sys.stderr, flush=True)


def short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
