"""Benchmarks against ground truth: the field's metrics (``metrics``) and the Bayes-optimal oracle that is given
the true maps (``oracle``)."""

__all__ = ["metrics", "oracle"]
