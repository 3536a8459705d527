"""animerec: anime recommendation research on TensorFlow Recommenders, Keras and scikit-learn.

TFRS 0.7.7 only works with Keras 2, so ``TF_USE_LEGACY_KERAS=1`` must be set before anything
imports ``tf.keras``. Importing this package sets it (without importing TensorFlow, which costs
about five seconds and is only needed by the Keras models).

TensorFlow's start-up logs: ``TF_CPP_MIN_LOG_LEVEL`` defaults to 2 here (a value in the user's own
environment wins). TensorFlow 2.21 writes its oneDNN / CUDA / "absl::InitializeLog" lines before
absl's logging is initialised, where that variable does not reach; so while ``tensorflow`` is first
imported (and its devices listed), file descriptor 2 goes to a temporary file and every line but
those is written back. ``TF_CPP_MIN_LOG_LEVEL`` 0 or 1 turns this filter off (all lines shown).
"""
import importlib.abc
import os
import re
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

_TF_NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|[IWE]\d{4} [\d:.]+ +\d+ (port|cudart_stub|cpu_feature_guard|cuda_platform|cuda_executor|gpu_device"
    rb"|gpu_timer|dso_loader)\.cc:\d+\]"
    rb"|To enable the following instructions:)")


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        import tempfile

        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                self.loader.exec_module(module)
                try:
                    module.config.list_physical_devices()  # CUDA's "cuInit" line comes here
                except Exception:
                    pass
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                tmp.seek(0)
                kept = [ln for ln in tmp.read().splitlines(keepends=True) if not _TF_NOISE.match(ln)]
                if kept:
                    os.write(2, b"".join(kept))


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Wraps the first import of ``tensorflow`` in the stderr filter described above."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once, and not for the lookup below
        try:
            if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0").strip() not in ("2", "3"):
                return None
            import importlib.util

            spec = importlib.util.find_spec(name)
        except Exception:
            return None
        if spec is None or spec.loader is None:
            return None
        spec.loader = _QuietLoader(spec.loader)
        return spec


if "tensorflow" not in sys.modules:
    sys.meta_path.insert(0, _QuietTensorFlowImport())
