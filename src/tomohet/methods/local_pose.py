"""Local pose search inside the EM: each particle's pose is marginalised over a local grid around its current
estimate (RELION's local searches, Scheres 2012, J. Struct. Biol. 180:519, with a Gaussian prior on the
deviation from the pose the particle came with).

A pose is a correction of the written one (:mod:`tomohet.data.poses`): a rotation ``D_i`` in the reference frame
and an offset ``u_i`` (pixels; the particle's centre is the reference point ``u_i``). One iteration evaluates,
for every particle, class ``k``, grid rotation ``d_l`` and grid offset ``o_s``, the log-likelihood of its whole
tilt series with rotations ``A_ij D_i d_l`` and the images re-centred by ``(A_ij D_i (u_i + o_s))[:2]`` (the
same Gaussian likelihood with the per-shell noise power as the EM). All rotations of a chunk of particles and
all classes are projected in one projector call; the offsets only change the phases of the images, so each
image's cross term with every (class, rotation) and every offset is one batched complex matrix product:
``|X phi_s - H P|^2 = |X|^2 - 2 Re(sum X phi_s conj(H P)) + |H P|^2``.

The prior is ``exp(-|w|^2 / (2 sigma_ang^2) - |u|^2 / (2 sigma_px^2))`` on the total deviation from the pose
read (``w`` the rotation vector of ``D_i d_l``; per-axis widths), estimated from the posterior moments after each
iteration unless given. Class posteriors use the pose-marginal likelihood; the M-step inserts each particle
at its ``top_poses`` most probable poses per class (weights renormalised), and the particle's pose moves to the
best pose of its most probable class. Coarse to fine: the grid spacing halves for the first iterations
(half the search range, then a quarter, then an eighth), the grid always centred on the current estimate; after
``n_iterations`` searching iterations (default 4) the poses stay where they are and an iteration costs what the
EM's does (a search iteration costs ``rotations x classes`` projections per image: ~20-30x the EM's).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..physics.fourier import half_grid_2d
from ..physics.likelihood import ImageBand, SpectraCache
from ..physics.projector import VolumeProjector
from ..physics.rotations import rotation_angle, rotation_vector_to_matrix
from .em2d import (
    EMClassifier,
    EMOptions,
    HalfSetAccumulators,
    PartialSums,
    _prepared_chunk,
    in_half_set_a,
    working_size,
)
from .engine import map_partitions

IMAGES_PER_STEP = 20_000  # projections (images x rotations x classes) held at once: bounds the memory


@dataclass
class PoseGrid:
    """One iteration's search grid: rotations ``[L, 3, 3]`` (reference frame, float64; the identity first) and
    offsets ``[S, 3]`` (pixels, zero first), with their spacings."""

    rotations: torch.Tensor
    offsets: torch.Tensor
    step_deg: float
    step_px: float


def lattice_ball(radius2: int) -> torch.Tensor:
    """Integer points ``[n, 3]`` with squared norm at most ``radius2``, the origin first."""
    r = int(math.isqrt(radius2))
    ax = torch.arange(-r, r + 1, dtype=torch.float64)
    pts = torch.cartesian_prod(ax, ax, ax)
    pts = pts[(pts**2).sum(1) <= radius2]
    return pts[torch.argsort((pts**2).sum(1), stable=True)]


def pose_grid(range_deg: float, range_px: float, iteration: int) -> PoseGrid:
    """The grid of iteration ``iteration`` (0-based): rotation vectors on a cubic lattice of spacing
    ``range_deg / 2 / 2^min(iteration, 2)`` within two spacings of the centre (33 rotations), offsets on a lattice of
    spacing ``range_px / 2^min(iteration, 2)`` within sqrt(2) spacings (19 offsets); a zero range searches nothing."""
    f = 2.0 ** -min(iteration, 2)
    step_deg, step_px = range_deg / 2 * f, range_px * f
    rot = lattice_ball(4) if range_deg > 0 else torch.zeros(1, 3, dtype=torch.float64)
    off = lattice_ball(2) if range_px > 0 else torch.zeros(1, 3, dtype=torch.float64)
    return PoseGrid(rotation_vector_to_matrix(rot * math.radians(step_deg)), off * step_px, step_deg, step_px)


@dataclass
class LocalEStepState:
    """What one local-search E-step needs (picklable: sent to Dask workers). ``rotation`` ``[N, 3, 3]`` and
    ``offset`` ``[N, 3]`` are every particle's current corrections; widths in radians and pixels."""

    volumes: torch.Tensor
    sigma2: torch.Tensor
    options: EMOptions
    assign: Callable
    subtract: torch.Tensor | None
    grid: PoseGrid
    rotation: torch.Tensor
    offset: torch.Tensor
    sigma_rad: float
    sigma_px: float
    top_poses: int


@dataclass
class PosePartialSums(PartialSums):
    """:class:`~.em2d.PartialSums` plus each particle's best pose and its posterior moments."""

    rotation: torch.Tensor = None  # [n, 3, 3] best correction
    offset: torch.Tensor = None  # [n, 3] best offset, pixels
    angle2: np.ndarray = None  # [n] posterior mean of |w|^2 (radians^2)
    offset2: np.ndarray = None  # [n] posterior mean of |u|^2 (pixels^2)

    def merge(self, other: PosePartialSums) -> PosePartialSums:
        base = PartialSums.merge(self, other)
        return PosePartialSums(**vars(base), rotation=torch.cat([self.rotation, other.rotation]),
                               offset=torch.cat([self.offset, other.offset]),
                               angle2=np.concatenate([self.angle2, other.angle2]),
                               offset2=np.concatenate([self.offset2, other.offset2]))  # fmt: skip


@dataclass
class PosePosteriors:
    """What the grid's log-likelihoods of B particles give: the pose-marginal log-likelihood per class ``[B, K]``,
    the class posteriors ``[B, K]`` (numpy), the pose posteriors within each class ``[B, K, L S]``, the posterior
    means of the squared total deviation (``angle2`` radians^2, ``offset2`` pixels^2, ``[B]`` numpy) and each
    particle's best pose in its most probable class (``rotation [B, 3, 3]``, ``offset [B, 3]``: new corrections)."""

    log_likelihood: torch.Tensor
    posteriors: np.ndarray
    pose_posteriors: torch.Tensor
    angle2: np.ndarray
    offset2: np.ndarray
    rotation: torch.Tensor
    offset: torch.Tensor


def pose_posteriors(
    ll: torch.Tensor,
    particles: np.ndarray,
    assign: Callable,
    cur_rot: torch.Tensor,
    cur_off: torch.Tensor,
    grid: PoseGrid,
    sigma_rad: float,
    sigma_px: float,
) -> PosePosteriors:
    """Posteriors of a local search from the log-likelihoods ``ll [B, K, L, S]`` (float64) of particles
    ``particles`` at every class, grid rotation and grid offset around their corrections ``cur_rot [B, 3, 3]``,
    ``cur_off [B, 3]``, with the Gaussian prior on the total deviation from the pose read (module docstring),
    normalised over the grid; ``assign(particles, ll_class)`` gives the class posteriors (the EM's rule)."""
    b, k_cls, n_rot, n_off = ll.shape
    ang2 = rotation_angle(cur_rot[:, None] @ grid.rotations[None]) ** 2  # [b, L]
    off2 = ((cur_off[:, None] + grid.offsets[None]) ** 2).sum(-1)  # [b, S]
    lp = -ang2[:, :, None] / (2 * sigma_rad**2) - off2[:, None, :] / (2 * sigma_px**2)
    lp = lp - torch.logsumexp(lp.reshape(b, -1), 1)[:, None, None]
    joint = (ll + lp[:, None]).reshape(b, k_cls, n_rot * n_off)
    ll_class = torch.logsumexp(joint, -1)  # [b, K] pose-marginal log-likelihood
    post = assign(particles, ll_class.numpy())  # [b, K]
    pose_post = torch.softmax(joint, -1)  # [b, K, L S] within each class
    moment = (torch.from_numpy(post)[:, :, None] * pose_post).sum(1).reshape(b, n_rot, n_off)
    best_k = torch.from_numpy(post.argmax(1))
    best = pose_post[torch.arange(b), best_k].argmax(-1)
    return PosePosteriors(ll_class, post, pose_post, (moment.sum(2) * ang2).sum(1).numpy(),
                          (moment.sum(1) * off2).sum(1).numpy(), cur_rot @ grid.rotations[best // n_off],
                          cur_off + grid.offsets[best % n_off])  # fmt: skip


def local_e_step(
    ds,
    particles: np.ndarray,
    state: LocalEStepState,
    cache: SpectraCache | None = None,
    progress: Callable[[int], None] | None = None,
) -> PosePartialSums:
    """E-step over a local pose grid and M-step sums for one partition of particles (see the module docstring)."""
    opt, grid = state.options, state.grid
    d = ds.box
    m = working_size(d, ds.pixel_size, opt.resolution_limit_A)
    k_cls, n_rot, n_off = state.volumes.shape[0], len(grid.rotations), len(grid.offsets)
    band = ImageBand(d, ds.pixel_size, opt.resolution_limit_A, m)
    proj = VolumeProjector(state.volumes, oversampling=2, out_size=m)
    sub = VolumeProjector(state.subtract, oversampling=2, out_size=m) if state.subtract is not None else None
    accs = HalfSetAccumulators(k_cls, m)
    sig_sum = torch.zeros(band.n_shells, dtype=torch.float64)
    sig_cnt = torch.zeros(band.n_shells, dtype=torch.float64)
    inv_s2 = band.per_pixel(1.0 / state.sigma2)
    log_s2 = band.per_pixel(torch.log(state.sigma2))
    kx, ky = half_grid_2d(m)
    n_pix = m * (m // 2 + 1)
    grid_rot = grid.rotations.float()
    per_particle = ds.n_tilts * n_rot * k_cls
    out: dict[str, list] = {k: [] for k in ("ll", "post", "rot", "off", "a2", "o2")}
    for outer in ds.chunks(opt.batch_size, particles):
        for chunk in np.array_split(outer, max(1, math.ceil(len(outer) * per_particle / IMAGES_PER_STEP))):
            p = _prepared_chunk(ds, chunk, opt.max_dose, sub, cache, m)
            b, t = p.n_particles, p.n_tilts
            bt = b * t
            cur_rot = state.rotation[torch.from_numpy(chunk)]
            cur_off = state.offset[torch.from_numpy(chunk)]
            base = (p.rotations.view(b, t, 3, 3) @ cur_rot[:, None]).float()  # [b, t, 3, 3]
            # image displacement of the particle centre for each grid offset: (A D (u + o_s))[:2], pixels
            centre = (cur_off[:, None] + grid.offsets[None]).float()  # [b, S, 3]
            disp = torch.einsum("btij,bsj->btsi", base[..., :2, :], centre).reshape(bt, n_off, 2)
            phase = torch.polar(torch.ones(()), 2 * torch.pi / d * (kx * disp[..., 0, None, None]
                                                                    + ky * disp[..., 1, None, None]))  # fmt: skip
            w = band.weight * inv_s2 * p.valid  # [bt, M, Mh]
            x2 = (torch.view_as_real(p.x).square().sum(-1) * w).sum((-2, -1))  # [bt]
            rots = (base.reshape(bt, 1, 3, 3) @ grid_rot[None]).reshape(-1, 3, 3)  # [bt * L]
            pr = proj.project_ft(rots).view(k_cls, bt, n_rot, n_pix)  # projections P, not yet times H
            h2w = (p.h**2 * w).reshape(1, bt, 1, n_pix)
            e_hp = (torch.view_as_real(pr).square().sum(-1) * h2w).sum(-1)  # |H P|^2 w: [K, bt, L]
            # Re sum X phi_s conj(H P) w = Re sum conj(P) (X H w phi_s): the offsets multiply the images, not the
            # K x L projections
            z = (p.x * p.h * w).reshape(bt, 1, n_pix) * phase.reshape(bt, n_off, n_pix)  # [bt, S, P]
            pk = pr.permute(1, 0, 2, 3).reshape(bt, k_cls * n_rot, n_pix)
            cross = torch.bmm(pk.conj(), z.transpose(1, 2)).real  # [bt, K L, S]
            del pk, z
            r = x2[:, None, None, None] - 2 * cross.view(bt, k_cls, n_rot, n_off) + e_hp.permute(1, 0, 2)[..., None]
            ll = (-0.5 * r).view(b, t, k_cls, n_rot, n_off).sum(1).double()  # [b, K, L, S]
            norm = 0.5 * (p.valid * band.weight * log_s2).sum((-2, -1)).view(b, t).sum(1).double()
            ll = ll - norm[:, None, None, None]
            pp = pose_posteriors(ll, chunk, state.assign, cur_rot, cur_off, grid, state.sigma_rad, state.sigma_px)
            pose_post, post_t = pp.pose_posteriors, torch.from_numpy(pp.posteriors)
            for key, value in (("a2", pp.angle2), ("o2", pp.offset2), ("rot", pp.rotation), ("off", pp.offset),
                               ("ll", pp.log_likelihood.numpy()), ("post", pp.posteriors)):  # fmt: skip
                out[key].append(value)
            # M-step sums at each particle's most probable poses per class, and the noise power there
            top = pose_post.topk(min(state.top_poses, n_rot * n_off), dim=-1)
            g = post_t[:, :, None] * top.values / top.values.sum(-1, keepdim=True)  # [b, K, P]
            n_top = g.shape[-1]
            img = torch.arange(bt)[:, None]
            in_a = in_half_set_a(chunk, t)  # [bt] images of half-set A
            hw = p.h * p.valid * inv_s2 * band.inside
            rot_table = rots.view(bt, n_rot, 3, 3)
            phase = phase.view(bt, n_off, m, m // 2 + 1)
            for k in range(k_cls):
                idx = top.indices[:, k].repeat_interleave(t, dim=0)  # [bt, P]
                li, si = idx // n_off, idx % n_off
                gk = g[:, k].repeat_interleave(t, dim=0).float()  # [bt, P]
                xs = p.x[:, None] * phase[img, si]  # [bt, P, M, Mh] re-centred images
                hp = pr[k].view(bt, n_rot, m, m // 2 + 1)[img, li] * p.h[:, None]
                resid = torch.view_as_real(xs - hp).square().sum(-1) * p.valid[:, None]
                s_, _ = band.shell_sums((resid * gk[..., None, None]).sum(1), p.valid)
                sig_sum += s_
                sel = gk > 1e-4
                if sel.any():
                    gs = gk[sel][:, None, None]
                    hws = hw[:, None].expand(-1, n_top, -1, -1)[sel]
                    wts = (p.h[:, None] * hw[:, None]).expand(-1, n_top, -1, -1)[sel]
                    accs.insert(
                        k, in_a[:, None].expand(-1, n_top)[sel], xs[sel] * hws * gs, wts * gs, rot_table[img, li][sel]
                    )
            sig_cnt += band.shell_sums(p.valid, p.valid)[1]
            if progress:
                progress(len(chunk))
    data, weight, half_data, half_weight = accs.sums()
    return PosePartialSums(
        np.asarray(particles), np.concatenate(out["ll"]), np.concatenate(out["post"]), data, weight,
        sig_sum, sig_cnt, half_data, half_weight, rotation=torch.cat(out["rot"]), offset=torch.cat(out["off"]),
        angle2=np.concatenate(out["a2"]), offset2=np.concatenate(out["o2"]),
    )  # fmt: skip


@dataclass
class PoseSearch:
    """Local search options: ranges of the first grid (degrees, pixels), prior widths per axis (None: estimated
    from the data, starting at half the range), poses inserted per particle and class."""

    range_deg: float = 0.0
    range_px: float = 0.0
    sigma_deg: float | None = None
    sigma_px: float | None = None
    top_poses: int = 3
    n_iterations: int = 4  # iterations that search; later ones keep each particle's pose (the EM's cost)

    @property
    def active(self) -> bool:
        return self.range_deg > 0 or self.range_px > 0


class PoseTrack:
    """Every particle's current pose correction (``rotation [N, 3, 3]``, ``offset [N, 3]`` pixels, float64), the
    prior widths (degrees, pixels per axis) and the search's progress: what a local search keeps between
    iterations, for the 2D EM (:class:`LocalPoseEM`) and the 3D EM alike."""

    def __init__(self, n_particles: int, search: PoseSearch, rotation=None, offset=None, widths=None):
        """``rotation`` / ``offset``: corrections to start from (None: the poses as read); ``widths``: the prior
        widths (degrees, pixels) to start from where the search estimates them (default: half the ranges), e.g.
        those an earlier search of the same corrections ended with."""
        self.search = search
        eye = torch.eye(3, dtype=torch.float64).repeat(n_particles, 1, 1)
        self.rotation = eye if rotation is None else rotation.double().clone()
        self.offset = torch.zeros(n_particles, 3, dtype=torch.float64) if offset is None else offset.double().clone()
        start_deg, start_px = widths or (max(search.range_deg / 2, 1e-3), max(search.range_px / 2, 1e-3))
        self.sigma_deg = search.sigma_deg if search.sigma_deg is not None else start_deg
        self.sigma_px = search.sigma_px if search.sigma_px is not None else start_px
        self.pose_iteration = 0

    @property
    def searching(self) -> bool:
        return self.search.active and self.pose_iteration < self.search.n_iterations

    def grid(self) -> PoseGrid:
        """This iteration's grid (a single pose once the searching iterations are done)."""
        on = self.searching
        return pose_grid(self.search.range_deg if on else 0.0, self.search.range_px if on else 0.0,
                         self.pose_iteration)  # fmt: skip

    def update(self, grid: PoseGrid, rotation: torch.Tensor, offset: torch.Tensor, angle2: np.ndarray,
               offset2: np.ndarray) -> dict:  # fmt: skip
        """Take the iteration's best poses (particle order) and posterior moments (``angle2`` radians^2,
        ``offset2`` pixels^2); the prior widths are re-estimated per axis unless given, never below half the grid
        spacing. Returns the log entries (``pose_changes``: fraction of particles whose pose moved)."""
        moved = rotation_angle(self.rotation.transpose(-1, -2) @ rotation)
        shifted = (offset - self.offset).norm(dim=-1)
        self.rotation, self.offset = rotation, offset
        if self.search.sigma_deg is None and grid.step_deg > 0:
            self.sigma_deg = max(math.degrees(math.sqrt(float(np.mean(angle2)) / 3)), grid.step_deg / 2)
        if self.search.sigma_px is None and grid.step_px > 0:
            self.sigma_px = max(math.sqrt(float(np.mean(offset2)) / 3), grid.step_px / 2)
        self.pose_iteration += 1
        angle = torch.rad2deg(rotation_angle(self.rotation)).numpy()
        shift = self.offset.norm(dim=-1).numpy()
        return {"pose_step_deg": round(grid.step_deg, 3), "shift_step_px": round(grid.step_px, 3),
                "grid_poses": len(grid.rotations) * len(grid.offsets),
                "sigma_angles_deg": round(self.sigma_deg, 3), "sigma_shifts_px": round(self.sigma_px, 3),
                "median_correction_deg": round(float(np.median(angle)), 3),
                "median_offset_px": round(float(np.median(shift)), 3),
                "median_moved_deg": round(float(np.degrees(np.median(moved.numpy()))), 3),
                "pose_changes": float(((moved > 1e-9) | (shifted > 1e-9)).float().mean())}  # fmt: skip

    def state(self) -> dict:
        return {"pose_rotation": self.rotation, "pose_offset": self.offset, "sigma_angles_deg": self.sigma_deg,
                "sigma_shifts_px": self.sigma_px, "pose_iteration": self.pose_iteration}  # fmt: skip

    def restore(self, state: dict) -> None:
        self.rotation, self.offset = state["pose_rotation"], state["pose_offset"]
        self.sigma_deg, self.sigma_px = state["sigma_angles_deg"], state["sigma_shifts_px"]
        self.pose_iteration = state["pose_iteration"]

    def corrections(self) -> dict:
        """``pose_rotation`` ``[N, 3, 3]`` and ``pose_offset_px`` ``[N, 3]`` (:mod:`tomohet.data.poses`)."""
        return {"pose_rotation": self.rotation, "pose_offset_px": self.offset}


class LocalPoseEM(EMClassifier):
    """:class:`~.em2d.EMClassifier` whose E-step marginalises each particle's pose over a local grid."""

    def __init__(self, dataset, options: EMOptions, search: PoseSearch, executor=None, focus_mask=None):
        super().__init__(dataset, options, executor, focus_mask)
        self.search = search
        self.poses = PoseTrack(dataset.n_particles, search)

    def collect(self, assign: Callable, progress: Callable[[int], None] | None = None) -> PosePartialSums:
        self._grid = grid = self.poses.grid()
        pt = self.poses
        state = LocalEStepState(self.volumes, self.sigma2, self.opt, assign, self.subtract, grid, pt.rotation,
                                pt.offset, math.radians(pt.sigma_deg), pt.sigma_px, self.search.top_poses)  # fmt: skip
        return map_partitions(local_e_step, self.ds, state, self.opt.partition_size, self.executor, self._cache,
                              progress)  # fmt: skip

    def absorb(self, sums: PosePartialSums, order: np.ndarray) -> dict:
        return self.poses.update(self._grid, sums.rotation[order], sums.offset[order], sums.angle2, sums.offset2)

    def state(self, iteration: int, finished: bool = False) -> dict:
        return {**super().state(iteration, finished), **self.poses.state()}

    def restore(self, state: dict) -> None:
        self.poses.restore(state)

    def pose_corrections(self) -> dict:
        return self.poses.corrections()


def compose_corrections(
    d1: torch.Tensor, u1: torch.Tensor, d2: torch.Tensor, u2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One correction equal to ``(d1, u1)`` followed by ``(d2, u2)`` (the second refined on the dataset already
    corrected by the first, :mod:`tomohet.data.poses`): rotations ``A d1 d2``, centre ``A d1 u1 + A d1 d2 u2``, so
    ``D = d1 d2`` and ``u = d2^T u1 + u2``."""
    return d1 @ d2, torch.einsum("nji,nj->ni", d2, u1) + u2
