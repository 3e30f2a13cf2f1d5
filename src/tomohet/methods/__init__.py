"""Heterogeneity methods on one engine.

Shared: ``engine`` (iterate/stop loop, starts, map/reduce over partitions), ``checkpoint`` (atomic, fingerprinted),
``registry`` (every method by name; ``builtin`` and ``landscape`` register them), ``result`` (the ``Result`` every
method returns), ``difference_pca`` (the wedge-masked difference PCA start), ``iteration`` (annealing, progress).
Discrete: ``em2d``, ``em3d`` (+ ``subtomo_spectra``), ``hillclimb`` (+ ``consistency``).
Continuous: ``ppca`` (+ ``ppca_pass``), ``wmd_pca``, ``msvd``. See ARCHITECTURE.md.
"""

__all__ = [
    "builtin",
    "checkpoint",
    "consistency",
    "difference_pca",
    "em2d",
    "em3d",
    "engine",
    "hillclimb",
    "iteration",
    "landscape",
    "msvd",
    "ppca",
    "ppca_pass",
    "registry",
    "result",
    "subtomo_spectra",
    "wmd_pca",
]
