"""Data model and file formats: RELION 5 / WarpTools, Warp v1 image-series, RELION 3.1/4 subtomograms.

``read_particles(path)`` recognises the input by content and returns a dataset object.
"""

__all__ = ["annotate", "images", "io", "model", "mrc", "relion5", "star", "subtomo", "validate", "warp_v1"]
