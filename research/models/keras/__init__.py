"""Keras / TensorFlow Recommenders models, each wrapped as a ``Recommender`` (import TensorFlow)."""
