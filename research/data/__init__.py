"""Data layer: raw sources, validation, preparation, synthetic data, interactions and splits."""
