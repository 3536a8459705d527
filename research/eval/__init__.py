"""Metrics and the one evaluation harness every model goes through."""
