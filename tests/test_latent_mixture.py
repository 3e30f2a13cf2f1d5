"""Deconvolved clusters of latents with per-particle uncertainty (extreme deconvolution, information form)."""

from __future__ import annotations

import numpy as np
import pytest

from tomohet.benchmark.metrics import discrete_report
from tomohet.methods.landscape import cluster_latents
from tomohet.methods.latent_mixture import fit_latent_mixture, information_form


def measured_clusters(n=600, seed=0):
    """Two tight clusters (sd 0.15) at (0, 0) and (2.5, 0), 40 / 60 %, each particle measured with its own
    precision per axis (0.3 to 30, log-uniform): ``(truth, b, G, posterior means under N(0, I))``."""
    rng = np.random.default_rng(seed)
    truth = (rng.random(n) < 0.4).astype(int)
    z = np.array([[0.0, 0.0], [2.5, 0.0]])[truth] + 0.15 * rng.standard_normal((n, 2))
    prec = np.exp(rng.uniform(np.log(0.3), np.log(30.0), (n, 2)))
    g = np.zeros((n, 2, 2))
    g[:, 0, 0], g[:, 1, 1] = prec[:, 0], prec[:, 1]
    b = prec * (z + rng.standard_normal((n, 2)) / np.sqrt(prec))
    return truth, b, g, b / (prec + 1)


def test_deconvolved_mixture_scores_each_particle_by_its_own_precision():
    truth, b, g, post = measured_clusters()
    fit = fit_latent_mixture(b, g, 2)
    xd = discrete_report(truth, fit.labels)["ari"]
    km = discrete_report(truth, cluster_latents(post, 2, "kmeans", 0))["ari"]
    assert xd > km + 0.04, (xd, km)  # k-means on the shrunk means mixes up the poorly measured particles
    order = np.argsort(fit.means[:, 0])
    assert np.allclose(fit.means[order], [[0, 0], [2.5, 0]], atol=0.15)
    sd = np.sqrt(np.diagonal(fit.covariances, axis1=1, axis2=2))
    assert (sd > 0.08).all() and (sd < 0.3).all(), sd  # the members' spread, not their measurement noise
    assert np.allclose(np.sort(fit.weights), [0.4, 0.6], atol=0.06)
    again = fit_latent_mixture(b, g, 2)
    assert (again.labels == fit.labels).all() and again.log_likelihood == fit.log_likelihood


def test_information_form_round_trip():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((5, 3, 3))
    g = a @ np.swapaxes(a, 1, 2)  # positive semi-definite
    b = rng.standard_normal((5, 3))
    cov = np.linalg.inv(g + np.eye(3))
    mean = np.einsum("nlm,nm->nl", cov, b)
    b2, g2 = information_form(mean, cov)
    assert np.allclose(b2, b) and np.allclose(g2, g, atol=1e-9)


def test_xd_clustering_needs_the_likelihood():
    from tomohet.errors import InputError

    with pytest.raises(InputError, match="xd clustering needs"):
        cluster_latents(np.zeros((10, 2)), 2, "xd")
