"""Benchmark datasets with ground truth: phantoms (``phantoms``), acquisition (``acquisition``: tilt schemes, dose,
defocus, noise at a stated SNR) and whole datasets with their ground truth (``datasets``)."""

__all__ = ["acquisition", "datasets", "phantoms"]  # phantoms re-exports its modules (density, lobes, ...)
