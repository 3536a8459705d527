"""Test set-up: Keras 2 for TFRS before anything imports TensorFlow, quiet TF logs, and the
location of the shared real data (``ANIMEREC_DATA``, else ``../shared/data`` beside the repo)."""
import os
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
_default = REPO.parent / "shared" / "data"
if not os.environ.get("ANIMEREC_DATA") and _default.is_dir():
    os.environ["ANIMEREC_DATA"] = str(_default)

SHARED = Path(os.environ["ANIMEREC_DATA"]) if os.environ.get("ANIMEREC_DATA") else None


def pytest_configure(config):
    # here rather than in setup.cfg's list, beside which it reads the same
    config.addinivalue_line("markers", "distributed: multi-worker training on loopback worker processes "
                            "(tf.distribute; about 1-2 minutes on 2 cores)")


@pytest.fixture
def shared_data() -> Path:
    """The real data folder; the test is skipped (never faked) when it is absent."""
    if SHARED is None or not (SHARED / "mal2020").is_dir():
        pytest.skip("real MAL data not available (set ANIMEREC_DATA)")
    return SHARED
