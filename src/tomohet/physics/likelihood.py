"""The data term every method shares: tilt images prepared on a working grid, and their Gaussian likelihood
under the forward model with a per-shell noise power.

Conventions: spectra are centred half spectra ``[M, M//2+1]`` of unnormalised FFTs (see ``physics``), so a
real-space white noise of variance ``s^2`` has power ``D^2 s^2`` per coefficient. A pixel of the half spectrum
stands for ``multiplicity`` coefficients of the full one (:func:`~.fourier.half_spectrum_multiplicity`).

CTF-premultiplied images (WarpTools) hold ``C (C E P + N) = C^2 E P + C N``: their noise is CTF-coloured
(variance ``C^2 s^2``). Dividing by ``C`` gives ``H P + N`` with ``H = C E`` and white noise again, so every
method sees the same model ``X = H P + N``; where ``|C|`` is below ``min_ctf`` the pixel carries almost no
signal and is masked (``valid = 0``). This is the one place that rule lives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .bands import ImageBand  # noqa: F401  (re-exported: the band of the likelihood)
from .forward import batch_transfer_functions
from .fourier import radial_index_3d, rfft2_centered, shift_phase_2d
from .projector import VolumeProjector

PREMULTIPLIED_MIN_CTF = 0.1  # |CTF| below which a premultiplied pixel is masked rather than divided


@dataclass
class PreparedImages:
    """One batch of particles' tilt images on the working grid, ready to compare with projections.

    ``x`` ``[B*T, M, M//2+1]`` complex: centred (particle shift removed), CTF-divided when premultiplied;
    ``h`` ``[B*T, M, M//2+1]`` real: ``CTF x E``; ``valid`` same shape, 0/1: visible frame, dose below the
    cut-off and (premultiplied) ``|CTF| >= min_ctf``; ``rotations`` ``[B*T, 3, 3]``; images are particle-major
    (``index = particle * T + tilt``)."""

    x: torch.Tensor
    h: torch.Tensor
    valid: torch.Tensor
    rotations: torch.Tensor
    n_particles: int
    n_tilts: int

    @property
    def size(self) -> int:
        return int(self.x.shape[-2])

    def compact(self) -> CompactImages:
        """The same images in 7 bytes per pixel instead of 16, to keep in memory (:class:`CompactImages`)."""
        return CompactImages(torch.view_as_real(self.x).bfloat16(), self.h.bfloat16(), self.valid.to(torch.uint8),
                             self.rotations, self.n_particles, self.n_tilts)  # fmt: skip


@dataclass
class CompactImages:
    """:class:`PreparedImages` stored compactly: spectra and ``H`` as bfloat16 (8 exponent bits: any data scale;
    a relative rounding of 2^-9, far below the noise of any cryo-ET image), ``valid`` as bytes."""

    x: torch.Tensor  # [B*T, M, M//2+1, 2] bfloat16 (real, imaginary)
    h: torch.Tensor  # [B*T, M, M//2+1] bfloat16
    valid: torch.Tensor  # [B*T, M, M//2+1] uint8
    rotations: torch.Tensor
    n_particles: int
    n_tilts: int

    def expand(self) -> PreparedImages:
        return PreparedImages(torch.view_as_complex(self.x.float()), self.h.float(), self.valid.float(),
                              self.rotations, self.n_particles, self.n_tilts)  # fmt: skip

    @staticmethod
    def bytes_per_pixel() -> int:
        return 7


def prepare_images(
    dataset,
    particles: np.ndarray,
    *,
    size: int | None = None,
    max_dose: float | None = None,
    subtract: VolumeProjector | None = None,
    min_ctf: float = PREMULTIPLIED_MIN_CTF,
) -> PreparedImages:
    """Read and prepare the tilt images of ``particles`` (0-based indices) of a 2D-stack dataset.

    ``size`` (<= D, default D) Fourier-crops to the frequencies below ``size/2`` of the D grid (the working
    grid of a band-limited method); ``max_dose`` (e/A^2) masks images with more pre-exposure; ``subtract``
    (a projector of the working grid) removes its projection (x H) from the images, e.g. the consensus outside
    a focus mask (signal subtraction)."""
    d = dataset.box
    batch = dataset.batch(particles)
    b, t = batch.dose.shape
    vis = batch.visible.clone()
    if max_dose is not None:
        vis &= batch.dose <= max_dose
    ctf, expo = batch_transfer_functions(batch, d, dataset.pixel_size)
    x = rfft2_centered(batch.images.reshape(-1, d, d)) * shift_phase_2d(d, -batch.shifts.reshape(-1, 2))
    valid = torch.ones_like(ctf)
    if dataset.ctf_premultiplied:
        valid = (ctf.abs() > min_ctf).float()
        x = torch.where(valid > 0, x / torch.where(valid > 0, ctf, torch.ones_like(ctf)), torch.zeros_like(x))
    m = d if size is None else size
    lo = d // 2 - m // 2
    # copies, not views: a cached batch must not keep the full-grid spectra alive
    x, ctf, expo, valid = (a[:, lo : lo + m, : m // 2 + 1].contiguous() for a in (x, ctf, expo, valid))
    h = ctf * expo
    valid = valid * vis.reshape(-1, 1, 1)
    rot = batch.rotations.reshape(-1, 3, 3)
    if subtract is not None:
        x = x - subtract.project_ft(rot) * h * valid
    return PreparedImages(x=x, h=h, valid=valid, rotations=rot, n_particles=b, n_tilts=t)


class SpectraCache:
    """Prepared spectra of a dataset's particles, kept across the iterations of a run in one preallocated block
    per array (:class:`CompactImages` layout, row ``particle * n_tilts + tilt``), filled as particles are first
    prepared. One block rather than an entry per batch: long-lived entries scattered among each batch's
    temporaries fragmented the heap (the resident memory grew by ~300 MB over the cache's own size)."""

    def __init__(self, n_particles: int, n_tilts: int):
        self.n_particles, self.n_tilts = n_particles, n_tilts
        self.filled = np.zeros(n_particles, dtype=bool)
        self._arrays: CompactImages | None = None

    @classmethod
    def if_it_fits(cls, dataset, size: int, budget_gb: float) -> SpectraCache | None:
        """A cache for ``dataset``'s images on a working grid ``size`` when they all fit in ``budget_gb``
        (:func:`cache_bytes_per_particle`), else None (the images are prepared again at every pass)."""
        fits = cache_bytes_per_particle(dataset.n_tilts, size) * dataset.n_particles < budget_gb * 1e9
        return cls(dataset.n_particles, dataset.n_tilts) if fits else None

    def __len__(self) -> int:
        return int(self.filled.sum())

    def _rows(self, particles: np.ndarray) -> torch.Tensor:
        p = torch.from_numpy(np.asarray(particles, dtype=np.int64))
        return (p[:, None] * self.n_tilts + torch.arange(self.n_tilts)).reshape(-1)

    def get(self, particles: np.ndarray) -> CompactImages | None:
        """The particles' images (in the order given), or None unless all of them are held."""
        if self._arrays is None or not self.filled[particles].all():
            return None
        a, rows = self._arrays, self._rows(particles)
        return CompactImages(a.x[rows], a.h[rows], a.valid[rows], a.rotations[rows], len(particles), self.n_tilts)

    def put(self, particles: np.ndarray, images: CompactImages) -> None:
        """Keep the particles' images (a batch of another tilt count is not kept)."""
        if images.n_tilts != self.n_tilts:
            return
        if self._arrays is None:
            rows = self.n_particles * self.n_tilts
            self._arrays = CompactImages(
                *(torch.empty((rows, *t.shape[1:]), dtype=t.dtype) for t in (images.x, images.h, images.valid,
                                                                              images.rotations)),
                self.n_particles, self.n_tilts,
            )  # fmt: skip
        a, rows = self._arrays, self._rows(particles)
        for store, new in ((a.x, images.x), (a.h, images.h), (a.valid, images.valid), (a.rotations, images.rotations)):
            store[rows] = new
        self.filled[particles] = True


def prepare_images_cached(dataset, particles: np.ndarray, cache: SpectraCache | None, **options) -> PreparedImages:
    """:func:`prepare_images` (same ``options``) served from ``cache`` (kept across the iterations of a run) when
    it holds the particles. Images pass through the compact form whether cached or not, so a run gives the same
    result with and without the cache."""
    c = cache.get(particles) if cache is not None else None
    if c is None:
        c = prepare_images(dataset, particles, **options).compact()
        if cache is not None:
            cache.put(particles, c)
    return c.expand()


def cache_bytes_per_particle(n_tilts: int, size: int) -> int:
    """Memory one particle's images take in a :class:`SpectraCache` on a working grid ``size``."""
    return n_tilts * (size * (size // 2 + 1) * CompactImages.bytes_per_pixel() + 36)


def squared_residuals(prepared: PreparedImages, model_ft: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
    """``|X - H P|^2 x valid`` ``[K, B*T, M, M//2+1]`` for projections ``model_ft`` ``[K, B*T, M, M//2+1]``
    (not yet multiplied by H). ``overwrite``: ``model_ft`` is a temporary the residuals may be computed in (one
    complex copy fewer; the E-step's largest arrays)."""
    resid = model_ft.mul_(prepared.h) if overwrite else model_ft * prepared.h
    resid = resid.sub_(prepared.x).abs()  # real; the complex workspace is released here
    return resid.square_().mul_(prepared.valid)


def gaussian_log_likelihood(
    prepared: PreparedImages,
    resid2: torch.Tensor,
    pixel_weight: torch.Tensor,
    inv_sigma2: torch.Tensor,
    log_sigma2: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-particle log-likelihood ``[B, K]`` (float64) of its whole tilt series under each of K models:
    ``-sum_j sum_k w_k (|X - H P|^2 / (2 sigma2_k) + log(sigma2_k) / 2)`` over valid pixels.

    ``resid2`` from :func:`squared_residuals`; ``pixel_weight`` ``[M, M//2+1]`` (band multiplicity);
    ``inv_sigma2`` ``[M, M//2+1]`` per-pixel inverse noise power; ``log_sigma2`` per pixel (the Gaussian
    normaliser; it does not change posteriors, only the total log-likelihood)."""
    k, b, t = resid2.shape[0], prepared.n_particles, prepared.n_tilts
    r2 = (resid2 * (pixel_weight * inv_sigma2)).sum(dim=(-2, -1))  # [K, BT]
    ll = (-0.5 * r2).reshape(k, b, t).sum(-1).T.double()
    if log_sigma2 is not None:
        log_norm = 0.5 * (pixel_weight * log_sigma2)
        ll = ll - (prepared.valid * log_norm).sum(dim=(-2, -1)).reshape(b, t).sum(-1).double()[:, None]
    return ll


def shell_power(ft: torch.Tensor, box: int) -> torch.Tensor:
    """Mean ``|V(k)|^2`` per shell ``[D//2+1]`` of a full centred box-D spectrum (e.g. the signal power tau2)."""
    shells = radial_index_3d(box).reshape(-1).clamp(max=box // 2)
    p = torch.zeros(box // 2 + 1, dtype=torch.float64).index_add_(0, shells, (ft.abs() ** 2).reshape(-1).double())
    c = torch.zeros(box // 2 + 1, dtype=torch.float64).index_add_(
        0, shells, torch.ones_like(shells, dtype=torch.float64)
    )
    return (p / c.clamp_min(1)).float()
