"""Recommenders. Import them through ``research.models.registry`` (lazy: no TensorFlow for
scikit-learn models)."""
