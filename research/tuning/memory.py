"""What a finished trial or refit leaves in memory: the process's RSS (recorded per trial in
tuning.json) and ``release_memory`` (Keras graph state, then Python garbage). No TensorFlow import:
``release_memory`` clears Keras only when TensorFlow is already loaded."""
from __future__ import annotations

import gc
import sys


def rss_mb() -> float | None:
    """Resident memory of this process in MB (Linux /proc), or None where unavailable."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def release_memory() -> None:
    """Drop what the finished trial left behind: Keras graph state, then Python garbage."""
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        tf.keras.backend.clear_session()
    gc.collect()
