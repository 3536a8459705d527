"""animerec: anime recommendation research on TensorFlow Recommenders, Keras and scikit-learn.

TFRS 0.7.7 only works with Keras 2, so ``TF_USE_LEGACY_KERAS=1`` must be set before anything
imports ``tf.keras``. Importing this package sets it (without importing TensorFlow, which costs
about five seconds and is only needed by the Keras models).
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
