"""Local pose search for the 3D EM (:mod:`.em3d`): subtomograms seen with corrected poses, and an E-step that
marginalises each particle's pose over a local grid around its current estimate (the 2D EM's search,
:mod:`.local_pose`, on the subtomogram likelihood; RELION's local searches, Scheres 2012, J. Struct. Biol.
180:519).

A correction is the one of :mod:`tomohet.data.poses`: a rotation ``D_i`` in the reference frame and an offset
``u_i`` (pixels; the particle's centre is the reference point ``u_i``). A subtomogram written with rotation ``R_i``
(``subtomo_i(x) = V(R_i^T x)``; the identity for the reference-frame subtomograms made from 2D stacks) is seen
with ``R_i D_i``, and its content is moved by ``-R_i D_i u_i`` (a phase factor) so the corrected centre sits at
the box centre (:class:`CorrectedSpectra`).

One search iteration evaluates, for every particle, class ``k``, grid rotation ``d_l`` and grid offset ``o_s``,
the subtomogram log-likelihood of :mod:`.em3d`, ``sum m (Re(conj(d phi_s) V_k(d_l^T D^T R^T q)) - W |V_k|^2 / 2) /
sigma2`` (``phi_s`` moves the data by ``-R D o_s``): the class maps of all rotations of a few particles are sampled
in one call (:class:`~.subtomo_spectra.ClassReferences`), the offsets only change the data's phases, so the cross
terms of every (class, rotation) with every offset are one batched complex matrix product, and ``W |V|^2`` does not
depend on the offset. The prior, the class posteriors and each particle's best pose are those of the 2D search
(:func:`~.local_pose.pose_posteriors`). The M-step then runs at each particle's best pose (the data resampled
into the reference frame there), which the 2D search refines to the top poses instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..physics.bands import VolumeBand
from .em3d import EM3DClassifier, EM3DOptions, prepared_of
from .local_pose import PoseSearch, PoseTrack, pose_posteriors
from .subtomo_spectra import ClassReferences, SpectraChunk, shift_phase_3d

SAMPLES_PER_STEP = 4_000_000  # class-map coefficients (rotations x classes x band) sampled at once: bounds memory


def resample_band(
    d: torch.Tensor, w: torch.Tensor, rotations: torch.Tensor, band: VolumeBand
) -> tuple[torch.Tensor, torch.Tensor]:
    """In-band spectra ``d [B, P]`` (complex) and weights ``w [B, P]`` of subtomograms seen with ``rotations
    [B, 3, 3]`` (``subtomo(x) = V(R^T x)``) -> the reference frame, ``(d(R q), W(R q))`` at the band's points
    ``q``: the band is completed by its Friedel mates on a centred ``(D+1)^3`` grid and sampled with the trilinear
    operator of :func:`~.subtomo_spectra.resample_to_reference` (data and weights alike, so ``d = W V`` holds
    after resampling). Coefficients outside the band read as zero."""
    b, dim = d.shape[0], band.d
    g = dim + 1  # frequencies -D/2 .. D/2
    f = band.freq.long()
    pos = (f[:, 2] + dim // 2) * g * g + (f[:, 1] + dim // 2) * g + (f[:, 0] + dim // 2)
    neg = (-f[:, 2] + dim // 2) * g * g + (-f[:, 1] + dim // 2) * g + (-f[:, 0] + dim // 2)
    cube = torch.zeros(b, 3, g**3)
    for idx, conj in ((neg, -1.0), (pos, 1.0)):
        cube[:, 0, idx] = d.real.float()
        cube[:, 1, idx] = conj * d.imag.float()
        cube[:, 2, idx] = w.float()
    rq = torch.einsum("bij,pj->bpi", rotations.float(), band.freq.float())  # R q, (x, y, z)
    grid = ((rq + dim // 2) * (2.0 / (g - 1)) - 1.0)[:, None, None]  # [B, 1, 1, P, 3]
    s = torch.nn.functional.grid_sample(cube.view(b, 3, g, g, g), grid, mode="bilinear", align_corners=True)
    s = s[:, :, 0, 0]  # [B, 3, P]
    return torch.complex(s[:, 0], s[:, 1]), s[:, 2].clamp_min(0)


def corrected_chunk(c: SpectraChunk, band: VolumeBand, rotation: torch.Tensor, offset: torch.Tensor) -> SpectraChunk:
    """``c`` seen with corrections ``rotation [B, 3, 3]``, ``offset [B, 3]`` (pixels): rotation ``R D``, data
    moved by ``-R D u`` (particle frame), and the reference-frame data and weights resampled at ``R D``."""
    r = (c.rot if c.rot is not None else torch.eye(3, dtype=torch.float64)).double() @ rotation.double()
    disp = torch.einsum("bij,bj->bi", r, offset.double())
    d = c.d * shift_phase_3d(band, -disp).to(c.d.dtype)
    d_ref, w_ref = resample_band(d, c.w, r, band)
    return SpectraChunk(c.particles, d, c.w, r, d_ref.to(c.d.dtype), w_ref)


class CorrectedSpectra:
    """Prepared spectra (:class:`~.subtomo_spectra.PreparedSpectra` or a band view of them) seen with every
    particle's pose correction (:func:`corrected_chunk`); the corrected chunks are kept when the source keeps its
    own (it caches), so a pass at fixed poses costs what the uncorrected one does."""

    def __init__(self, source, rotation: torch.Tensor, offset: torch.Tensor):
        self.source, self.rotation, self.offset = source, rotation, offset
        self.ds, self.band, self.opt = source.ds, source.band, source.opt
        base = getattr(source, "source", source)  # a band view keeps its prepared spectra as .source
        self.cache: dict[int, SpectraChunk] | None = {} if getattr(base, "cache", None) is not None else None

    def __iter__(self):
        for c in self.source:
            key = int(c.particles[0])
            item = self.cache.get(key) if self.cache is not None else None
            if item is None:
                idx = torch.from_numpy(np.asarray(c.particles))
                item = corrected_chunk(c, self.band, self.rotation[idx], self.offset[idx])
                if self.cache is not None:
                    self.cache[key] = item
            yield item


def search_chunk(
    c: SpectraChunk,
    refs: ClassReferences,
    inv_s2: torch.Tensor,
    noise_model: str,
    grid,
) -> torch.Tensor:
    """Log-likelihoods ``[B, K, L, S]`` (float64, up to a per-particle constant) of the corrected chunk ``c`` at
    every class, grid rotation and grid offset (module docstring); ``inv_s2 [P]`` = m / sigma2 per coefficient."""
    b, n_rot, n_off = len(c.particles), len(grid.rotations), len(grid.offsets)
    k_cls, n_p = refs.vols.shape
    d, w = c.d.to(torch.complex64), c.w.float()
    if noise_model == "white":
        d, w = d * w, w * w
    out = torch.empty(b, k_cls, n_rot, n_off, dtype=torch.float64)
    step = max(1, SAMPLES_PER_STEP // (n_rot * k_cls * n_p))
    inv = inv_s2.float()
    for lo in range(0, b, step):
        sl = slice(lo, min(b, lo + step))
        rot = c.rot[sl].double()  # [s, 3, 3] = R D
        s = rot.shape[0]
        vr = refs.sample_single((rot[:, None] @ grid.rotations[None]).reshape(-1, 3, 3))
        vr = vr.reshape(s, n_rot * k_cls, n_p)  # [s, L K, P]
        disp = torch.einsum("bij,sj->bsi", rot, grid.offsets).reshape(-1, 3)  # particle frame, pixels
        phase = shift_phase_3d(refs.band, -disp).to(torch.complex64).view(s, n_off, n_p)
        z = (d[sl, None] * phase).conj() * inv  # [s, S, P]
        cross = torch.bmm(vr, z.transpose(1, 2)).real  # [s, L K, S]
        energy = ((vr.real.square() + vr.imag.square()) * (w[sl] * inv)[:, None]).sum(-1)  # [s, L K]
        ll = cross - 0.5 * energy[..., None]
        out[sl] = ll.view(s, n_rot, k_cls, n_off).permute(0, 2, 1, 3).double()
    return out


def search_pass(
    source: CorrectedSpectra,
    vols: torch.Tensor,
    sigma2: torch.Tensor,
    noise_model: str,
    track: PoseTrack,
    assign: Callable,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """One search E-step over all particles at the class spectra ``vols [K, P]`` and noise power ``sigma2 [S]``:
    returns, in particle order, the pose-marginal ``log_likelihood [N, K]``, ``posteriors [N, K]``, the best
    ``rotation [N, 3, 3]`` / ``offset [N, 3]`` corrections and the posterior moments (``angle2``, ``offset2``),
    and the ``grid`` searched."""
    band = source.band
    grid = track.grid()
    refs = ClassReferences(band, vols)
    inv_s2 = band.mult / sigma2[band.shell]
    n, k = source.ds.n_particles, vols.shape[0]
    out = {"log_likelihood": np.zeros((n, k)), "posteriors": np.zeros((n, k)), "angle2": np.zeros(n),
           "offset2": np.zeros(n), "rotation": track.rotation.clone(), "offset": track.offset.clone()}  # fmt: skip
    sig_rad = math.radians(track.sigma_deg)
    for c in source:
        idx = np.asarray(c.particles)
        ll = search_chunk(c, refs, inv_s2, noise_model, grid)
        ti = torch.from_numpy(idx)
        pp = pose_posteriors(ll, idx, assign, track.rotation[ti], track.offset[ti], grid, sig_rad, track.sigma_px)
        out["log_likelihood"][idx] = pp.log_likelihood.numpy()
        out["posteriors"][idx] = pp.posteriors
        out["angle2"][idx], out["offset2"][idx] = pp.angle2, pp.offset2
        out["rotation"][ti], out["offset"][ti] = pp.rotation, pp.offset
        if progress:
            progress(len(idx))
    out["grid"] = grid
    return out


class LocalPoseEM3D(EM3DClassifier):
    """:class:`~.em3d.EM3DClassifier` that reads its subtomograms with pose corrections (:class:`CorrectedSpectra`)
    and searches them locally in its first ``search.n_iterations`` iterations (:func:`search_pass`), then runs at
    the poses found. ``rotation`` / ``offset`` / ``widths``: corrections and prior widths to start from
    (:class:`~.local_pose.PoseTrack`); ``search_poses`` False pauses the search (while the starts are compared)."""

    def __init__(self, dataset, options: EM3DOptions, prepared, search: PoseSearch, rotation=None, offset=None,
                 widths=None):  # fmt: skip
        super().__init__(dataset, options, prepared)
        self.base = self.source
        self.poses = PoseTrack(dataset.n_particles, search, rotation, offset, widths)
        self.search_poses = True
        self.source = CorrectedSpectra(self.base, self.poses.rotation, self.poses.offset)

    def _expectation(self, assign: Callable, progress: Callable[[int], None] | None = None):
        if not (self.search_poses and self.poses.searching):
            return super()._expectation(assign, progress)
        found = search_pass(self.source, self.volumes, self.sigma2, self.opt.noise_model, self.poses, assign,
                            progress)  # fmt: skip
        extra = self.poses.update(found["grid"], found["rotation"], found["offset"], found["angle2"], found["offset2"])
        self.source = CorrectedSpectra(self.base, self.poses.rotation, self.poses.offset)
        post = found["posteriors"]
        # M-step sums and noise power at the poses found, with the search's posteriors
        sums, _, _, sigma2 = self._pass(lambda particles, ll: post[particles])
        return sums, found["log_likelihood"], post, sigma2, extra

    def prepared_source(self):
        return prepared_of(self.base)

    def pose_corrections(self) -> dict:
        return self.poses.corrections()

    def state(self, iteration: int, finished: bool = False) -> dict:
        return {**super().state(iteration, finished), **self.poses.state()}

    def restore(self, state: dict) -> int:
        done = super().restore(state)
        if "pose_rotation" in state:
            same = torch.equal(state["pose_rotation"], self.poses.rotation) and torch.equal(
                state["pose_offset"], self.poses.offset
            )
            self.poses.restore(state)
            if not same:  # keep the corrected spectra (and their cache) where the poses did not move
                self.source = CorrectedSpectra(self.base, self.poses.rotation, self.poses.offset)
        return done


__all__ = ["CorrectedSpectra", "LocalPoseEM3D", "corrected_chunk", "resample_band", "search_chunk", "search_pass"]
