"""The oracle: the Bayes-optimal classifier / regressor that is given the true maps, poses and noise level.

For each particle and each candidate state map ``V_k`` the log-likelihood of its whole tilt series under the
real noise model is ``sum_j sum_k w_k |X_jk - mu_jk|^2 / (2 M^2 sigma^2)`` (negated), where ``mu`` is the
forward model's image of ``V_k`` (same projector, CTF and exposure as the simulator), ``M^2`` the pixel count
(unnormalised FFT) and ``w_k`` the multiplicity of a half-spectrum coefficient in the full spectrum, over the
whole spectrum; CTF-premultiplied images are divided by their CTF (``physics.likelihood``), which makes their
CTF-coloured noise white again. Posteriors use
the true abundances as priors. It is the physical limit every method is reported against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..physics.fourier import half_spectrum_multiplicity
from ..physics.likelihood import gaussian_log_likelihood, prepare_images, squared_residuals
from ..physics.projector import VolumeProjector


@dataclass
class OracleResult:
    log_likelihood: np.ndarray  # [N, K]
    posterior: np.ndarray  # [N, K]
    labels: np.ndarray  # [N] MAP state
    coordinate: np.ndarray | None  # [N] posterior mean of the state coordinate (continuous phantoms)


def oracle(
    dataset,
    volumes: torch.Tensor,
    noise_sigma: float,
    priors: np.ndarray | None = None,
    coordinates: np.ndarray | None = None,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> OracleResult:
    """Score every particle of ``dataset`` against the true state maps ``[K, D, D, D]``.

    The dataset's geometry is used as read: give it the true one (:func:`tomohet.data.truth.true_geometry`) when
    the written poses or tilt alignment carry errors. ``noise_sigma`` is the real-space noise standard deviation
    per pixel (before any premultiplication).
    """
    k = volumes.shape[0]
    d = dataset.box
    proj = VolumeProjector(volumes, oversampling=2)
    wmult = half_spectrum_multiplicity(d)
    ll = np.zeros((dataset.n_particles, k))
    inv_sigma2 = torch.tensor(1.0 / (d * d * noise_sigma**2))  # per coefficient of an unnormalised FFT
    for chunk in dataset.chunks(batch_size):
        # premultiplied images: divided by the CTF, masked where |CTF| <= 0.01 (physics.likelihood)
        p = prepare_images(dataset, chunk, min_ctf=0.01)
        resid2 = squared_residuals(p, proj.project_ft(p.rotations), overwrite=True)  # [K, BT, D, Dh]
        ll[chunk] = gaussian_log_likelihood(p, resid2, wmult, inv_sigma2).numpy()
        if progress:
            progress(len(chunk))
    logp = ll + (np.log(np.asarray(priors, dtype=np.float64)) if priors is not None else 0.0)
    logp = logp - logp.max(1, keepdims=True)
    post = np.exp(logp)
    post /= post.sum(1, keepdims=True)
    coord = post @ np.asarray(coordinates, dtype=np.float64) if coordinates is not None else None
    return OracleResult(log_likelihood=ll, posterior=post, labels=post.argmax(1), coordinate=coord)
