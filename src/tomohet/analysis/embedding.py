"""2D embeddings of a landscape's latents for pictures: PCA (linear, distances mean something) and UMAP
(McInnes, Healy & Melville 2018, arXiv:1802.03426; ``umap-learn``: neighbourhoods kept, distances between
clusters not), the two views cryoDRGN-style tools show."""

from __future__ import annotations

import warnings

import numpy as np

UMAP_MIN_PARTICLES = 20  # fewer points than this: no neighbourhood graph worth drawing


def pca_2d(z: np.ndarray) -> np.ndarray:
    """The first two principal components ``[N, 2]`` of latents ``[N, L]`` (the latents themselves for L <= 2, a
    zero second column for L = 1)."""
    z = np.asarray(z, dtype=np.float64)
    if z.shape[1] == 1:
        return np.stack([z[:, 0], np.zeros(len(z))], 1)
    if z.shape[1] == 2:
        return z
    from sklearn.decomposition import PCA

    return PCA(2, random_state=0).fit_transform(z)


def umap_2d(z: np.ndarray, seed: int = 0, n_neighbors: int = 15) -> np.ndarray | None:
    """UMAP embedding ``[N, 2]`` of latents ``[N, L]`` (deterministic with ``seed``; single-threaded then), or None
    when it says nothing a scatter of the latents does not (L <= 2, fewer than :data:`UMAP_MIN_PARTICLES`
    particles) or ``umap-learn`` is not installed. The first call in a process compiles (~10-25 s)."""
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] <= 2 or len(z) < UMAP_MIN_PARTICLES:
        return None
    try:
        import umap
    except ImportError:
        return None
    with warnings.catch_warnings():  # "n_jobs overridden by random_state": determinism is what we want
        warnings.simplefilter("ignore")
        model = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(z) - 1), random_state=seed)
        return np.asarray(model.fit_transform(z), dtype=np.float64)
