"""Simulated tilt-series acquisition written in the RELION 5 / WarpTools 2D-stack layout.

The geometry and optics are written first as STAR tables (the same columns WarpTools writes, see
``../shared/data/warptools_relion5``) and read back with tomohet's own RELION 5 reader; the images are then
made from that dataset with the one forward model (``physics.projector`` + ``physics.forward``). So the
simulator, the reader and every method share one geometry by construction.

Per-image SNR (DESIGN.md): mean over images of var(noise-free image in the whole box, after CTF, exposure
filter and tilt scaling) / noise variance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.model import ImageBatch
from ..data.mrc import write_stack
from ..data.poses import apply_pose_corrections, relion5_corrections
from ..data.relion5 import particle_matrices, read_relion5
from ..data.star import format_vector, write_star
from ..physics.forward import batch_transfer_functions
from ..physics.fourier import half_grid_2d, irfft2_centered, rfft2_centered, shift_phase_2d
from ..physics.projector import VolumeProjector
from ..physics.rotations import matrix_to_euler, random_rotations, rotation_about_y, rotation_vector_to_matrix


@dataclass
class Acquisition:
    """How the simulated tilt series are recorded. Lengths in Angstrom, angles in degrees, dose in e/A^2."""

    box: int = 32
    pixel_size: float = 12.0
    tilt_max: float = 60.0
    tilt_step: float = 3.0
    scheme: str = "dose-symmetric"  # or "bidirectional", "unidirectional"
    tilts: list[float] | None = None  # custom tilt list (overrides max/step)
    dose_per_tilt: float = 3.0
    n_tomograms: int = 4
    defocus_range: tuple[float, float] = (25000.0, 40000.0)  # per tomogram, at the tomogram centre
    astigmatism: float = 600.0  # |U - V|
    voltage: float = 300.0
    spherical_aberration: float = 2.7
    amplitude_contrast: float = 0.07
    snr: float = 0.05
    tomogram_size_A: tuple[float, float, float] = (6000.0, 6000.0, 1500.0)  # x, y, z (slab thickness)
    binning: float = 4.0  # image pixel / tilt-series pixel
    hand: float = -1.0
    pose_error_deg: float = 0.0  # written pose = true pose rotated by N(0, this) degrees about a random axis
    shift_error_px: float = 0.0  # written centre = true centre + N(0, this) pixels per axis (tomogram frame)
    tilt_shift_error_px: float = 0.0  # each tilt image's alignment is off by N(0, this) pixels in x and y
    shift_jitter_A: float = 0.0  # 3D offset of the true centre, correctly written to rlnOriginX/Y/ZAngst
    missing_high_tilt_fraction: float = 0.0  # fraction of particles that lose their highest tilts
    ctf_premultiplied: bool = False
    float16: bool = True  # MRC mode 12 stacks as WarpTools writes
    tilt_axis_jitter_deg: float = 1.0  # per-tilt alignment residual (small in-plane rotation)
    structured_noise: float = 0.0  # fraction of the noise variance with a 1/|k| spectrum (ice, crowding)

    def tilt_angles(self) -> np.ndarray:
        if self.tilts is not None:
            return np.sort(np.asarray(self.tilts, dtype=np.float64))
        n = int(round(self.tilt_max / self.tilt_step))
        return np.arange(-n, n + 1) * self.tilt_step

    def pre_exposure(self, tilts: np.ndarray) -> np.ndarray:
        """Cumulative dose before each tilt (same order as ``tilts``) for the acquisition scheme."""
        order = acquisition_order(tilts, self.scheme)
        rank = np.empty(len(tilts), dtype=np.int64)
        rank[order] = np.arange(len(tilts))
        return rank * self.dose_per_tilt


SCHEMES = ("dose-symmetric", "bidirectional", "unidirectional")


def acquisition_order(tilts: np.ndarray, scheme: str) -> np.ndarray:
    """Indices of ``tilts`` in the order recorded. Dose-symmetric (Hagen et al. 2017): 0, then pairs
    alternating sides (+1, -1, -2, +2, +3, ...); bidirectional: 0 up to +max, then -1 down to -max;
    unidirectional: -max up to +max in one sweep (the high tilts on one side get the least dose, on the other
    the most)."""
    idx0 = int(np.argmin(np.abs(tilts)))
    pos = [i for i in np.argsort(tilts) if tilts[i] > tilts[idx0]]
    neg = [i for i in np.argsort(-tilts) if tilts[i] < tilts[idx0]]
    if scheme == "bidirectional":
        return np.array([idx0] + pos + neg)
    if scheme == "unidirectional":
        return np.argsort(tilts, kind="stable")
    if scheme != "dose-symmetric":
        raise ValueError(f"unknown tilt scheme {scheme!r} (dose-symmetric, bidirectional, unidirectional)")
    order, side, p, q = [idx0], 0, 0, 0
    while p < len(pos) or q < len(neg):
        for _ in range(2):
            if side == 0 and p < len(pos):
                order.append(pos[p])
                p += 1
            elif side == 1 and q < len(neg):
                order.append(neg[q])
                q += 1
        side ^= 1
    return np.array(order)


@dataclass
class SimulatedLayout:
    """Where a simulated dataset went."""

    optimisation_set: Path
    particles_star: Path
    tomograms_star: Path
    names: list[str]
    noise_sigma: float
    measured_snr: float
    acquisition: dict = field(default_factory=dict)
    true_poses: dict = field(default_factory=dict)  # per particle: true Euler angles (deg) and origins (A)
    true_tilt_shifts: pd.DataFrame | None = None  # per tomogram and tilt: alignment error (A), if any


def write_geometry(
    out: Path, name: str, n: int, acq: Acquisition, rng: np.random.Generator
) -> tuple[Path, dict[str, np.ndarray]]:
    """Write optimisation set + particles + tomograms stars (no images yet); returns the optimisation set
    and the true per-particle quantities (rotations, tomogram index)."""
    tilts = acq.tilt_angles()
    t = len(tilts)
    pre = acq.pre_exposure(tilts)
    ts_apix = acq.pixel_size / acq.binning
    size_px = np.round(np.array(acq.tomogram_size_A) / ts_apix).astype(int)
    tomos = [f"TS_{k + 1:02d}.tomostar" for k in range(acq.n_tomograms)]
    # particles: tomogram assignment independent of everything else; positions in the slab
    tomo_of = rng.permutation(np.arange(n) % acq.n_tomograms)
    pos_a = (rng.random((n, 3)) - 0.5) * (np.array(acq.tomogram_size_A) - 2 * acq.box * acq.pixel_size)
    true_rot = random_rotations(n, torch.Generator().manual_seed(int(rng.integers(2**31)))).numpy()
    written_rot = true_rot
    if acq.pose_error_deg > 0:
        axis = rng.normal(size=(n, 3))
        axis /= np.linalg.norm(axis, axis=1, keepdims=True)
        ang = np.deg2rad(rng.normal(scale=acq.pose_error_deg, size=n))
        error = rotation_vector_to_matrix(torch.from_numpy(axis * ang[:, None])).numpy()
        written_rot = np.einsum("nij,njk->nik", error, true_rot)
    rot, tlt, psi = (x.numpy() for x in matrix_to_euler(torch.from_numpy(written_rot)))
    origin = rng.normal(scale=acq.shift_jitter_A, size=(n, 3)) if acq.shift_jitter_A > 0 else np.zeros((n, 3))
    # the true centre lies this far (pixels, tomogram frame) from the written one: true origin = origin - it
    centre_error = rng.normal(scale=acq.shift_error_px, size=(n, 3)) if acq.shift_error_px > 0 else np.zeros((n, 3))
    true_origin = origin - centre_error * acq.pixel_size
    coord = (pos_a + size_px * ts_apix / 2) / acq.pixel_size  # WarpTools: binned (image) pixels
    visible = np.ones((n, t), dtype=int)
    lose = rng.random(n) < acq.missing_high_tilt_fraction
    for i in np.flatnonzero(lose):
        cut = rng.uniform(0.6, 0.95) * np.abs(tilts).max()
        visible[i, np.abs(tilts) > cut] = 0
    names, images = [], []
    counters = [0] * acq.n_tomograms
    for i in range(n):
        k = tomo_of[i]
        counters[k] += 1
        stem = tomos[k].removesuffix(".tomostar")
        names.append(f"{stem}/{counters[k]}")
        images.append(f"{name}/{stem}/{stem}_{acq.pixel_size:.2f}A_{counters[k]:06d}.mrcs")
    parts = pd.DataFrame(
        {
            "rlnTomoName": [tomos[k] for k in tomo_of],
            "rlnTomoParticleId": [int(s.split("/")[1]) for s in names],
            "rlnCoordinateX": coord[:, 0], "rlnCoordinateY": coord[:, 1], "rlnCoordinateZ": coord[:, 2],
            "rlnAngleRot": rot, "rlnAngleTilt": tlt, "rlnAnglePsi": psi,
            "rlnTomoParticleName": names,
            "rlnOpticsGroup": tomo_of + 1,
            "rlnImageName": images,
            "rlnOriginXAngst": origin[:, 0], "rlnOriginYAngst": origin[:, 1], "rlnOriginZAngst": origin[:, 2],
            "rlnTomoVisibleFrames": [format_vector(v) for v in visible],
        }
    )  # fmt: skip
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": np.arange(acq.n_tomograms) + 1,
            "rlnOpticsGroupName": [f"opticsGroup{k + 1}" for k in range(acq.n_tomograms)],
            "rlnSphericalAberration": acq.spherical_aberration, "rlnVoltage": acq.voltage,
            "rlnTomoTiltSeriesPixelSize": ts_apix, "rlnCtfDataAreCtfPremultiplied": int(acq.ctf_premultiplied),
            "rlnImageDimensionality": 2, "rlnTomoSubtomogramBinning": acq.binning,
            "rlnImagePixelSize": acq.pixel_size, "rlnImageSize": acq.box,
            "rlnAmplitudeContrast": acq.amplitude_contrast,
        }
    )  # fmt: skip
    glob = pd.DataFrame(
        {
            "rlnTomoName": tomos, "rlnTomoTiltSeriesName": [t_.replace(".tomostar", ".mrc") for t_ in tomos],
            "rlnTomoFrameCount": t, "rlnTomoSizeX": size_px[0], "rlnTomoSizeY": size_px[1],
            "rlnTomoSizeZ": size_px[2], "rlnTomoHand": acq.hand,
            "rlnOpticsGroupName": [f"opticsGroup{k + 1}" for k in range(acq.n_tomograms)],
            "rlnTomoTiltSeriesPixelSize": ts_apix, "rlnVoltage": acq.voltage,
            "rlnSphericalAberration": acq.spherical_aberration, "rlnAmplitudeContrast": acq.amplitude_contrast,
            "rlnTomoImportFractionalDose": acq.dose_per_tilt,
        }
    )  # fmt: skip
    tblocks: dict = {"global": glob}
    defocus = rng.uniform(*acq.defocus_range, size=acq.n_tomograms)
    for k, tname in enumerate(tomos):
        axis_jitter = rng.normal(scale=acq.tilt_axis_jitter_deg, size=t)
        p = [_rot_z(a) @ rotation_about_y(th).numpy() for th, a in zip(tilts, axis_jitter, strict=True)]
        half_astig = acq.astigmatism / 2 * rng.uniform(0.5, 1.0, size=t)
        dz = defocus[k] + rng.normal(scale=200.0, size=t)  # per-tilt CTF-fit scatter
        tblocks[tname] = pd.DataFrame(
            {
                **{f"rlnTomoProj{a}": [format_vector([*m[i], 0]) for m in p] for i, a in enumerate("XYZ")},
                "rlnTomoProjW": [format_vector([0, 0, 0, 1])] * t,
                "rlnDefocusU": dz + half_astig, "rlnDefocusV": dz - half_astig,
                "rlnDefocusAngle": rng.uniform(-90, 90, size=t),
                "rlnCtfScalefactor": np.cos(np.deg2rad(tilts)), "rlnMicrographPreExposure": pre,
            }
        )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    pstar, tstar, oset = (out / f"{name}{s}.star" for s in ("_particles", "_tomograms", "_optimisation_set"))
    write_star({"general": {"rlnTomoSubTomosAre2DStacks": 1}, "optics": optics, "particles": parts}, pstar)
    write_star(tblocks, tstar)
    write_star({"": {"rlnTomoParticlesFile": pstar.name, "rlnTomoTomogramsFile": tstar.name}}, oset)
    # tilt-series alignment residuals: the particles of tomogram k appear in tilt j this far (image pixels, x y)
    # from where the written geometry puts them (drawn last: the other draws do not depend on it)
    tilt_error = np.zeros((acq.n_tomograms, t, 2))
    if acq.tilt_shift_error_px > 0:
        tilt_error = rng.normal(scale=acq.tilt_shift_error_px, size=(acq.n_tomograms, t, 2))
    return oset, {"true_rotations": true_rot, "true_origin_A": true_origin, "centre_error_px": centre_error,
                  "tomogram": tomo_of, "names": np.array(names), "tilt_shift_error_px": tilt_error,
                  "tomogram_names": tomos}  # fmt: skip


def _rot_z(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])


def noise_field(shape: tuple[int, ...], structured: float, gen: torch.Generator) -> torch.Tensor:
    """Unit-variance noise images ``[..., D, D]``: white, plus a fraction ``structured`` of the variance with a
    ``1/|k|`` amplitude spectrum (low-resolution, background-like structure, as from ice and crowded cytoplasm)."""
    white = torch.randn(shape, generator=gen)
    if structured <= 0:
        return white
    d = shape[-1]
    kx, ky = half_grid_2d(d)
    amp = 1.0 / torch.sqrt(kx**2 + ky**2).clamp_min(1.0)
    coloured = irfft2_centered(rfft2_centered(torch.randn(shape, generator=gen)) * amp, d)
    coloured = coloured / coloured.std(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return np.sqrt(1 - structured) * white + np.sqrt(structured) * coloured


def clean_images(projector: VolumeProjector, batch: ImageBatch, rotations: torch.Tensor, pixel_size: float):
    """Noise-free images ``[B, T, D, D]`` of one volume (or, for a stacked projector, ``[K, B, T, D, D]``) and
    their CTFs ``[B*T, D, D//2+1]``: ``IFT[CTF * E * shift * Slice]``."""
    b, t = batch.dose.shape
    d = projector.box
    ft = projector.project_ft(rotations.reshape(-1, 3, 3))
    ctf, expo = batch_transfer_functions(batch, d, pixel_size)
    ft = ft * (ctf * expo) * shift_phase_2d(d, batch.shifts.reshape(-1, 2))
    return irfft2_centered(ft, d).reshape(*ft.shape[:-3], b, t, d, d), ctf


def simulate_images(
    out: Path,
    name: str,
    volumes: torch.Tensor,
    states: np.ndarray,
    acq: Acquisition,
    seed: int = 0,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> SimulatedLayout:
    """Simulate ``len(states)`` particles of the given state volumes ``[K, D, D, D]`` into ``out`` (RELION 5
    layout). ``states[i]`` indexes ``volumes`` for particle i. Streams: one batch of particles in memory."""
    rng = np.random.default_rng(seed)
    n = len(states)
    oset, truth = write_geometry(out, name, n, acq, rng)
    ds = read_relion5(oset)
    # the true pose differs from the written one by the pose and shift errors: images use the true pose
    true_ds = apply_pose_corrections(
        ds,
        *relion5_corrections(
            _particle_matrices(ds),
            torch.from_numpy(truth["true_rotations"]),
            torch.from_numpy(truth["centre_error_px"]),
        ),
    )
    true_ds.shifts = true_ds.shifts + torch.from_numpy(truth["tilt_shift_error_px"][truth["tomogram"]]).float()
    cache_all = len(volumes) <= 16  # many maps (a fine continuous grid): build projectors per batch
    projectors: dict[int, VolumeProjector] = {}
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    sigma = None
    signal_var: list[float] = []
    for chunk in ds.chunks(batch_size):
        batch = _geometry_batch(true_ds, chunk)
        rots = batch.rotations
        imgs = torch.zeros(len(chunk), ds.n_tilts, acq.box, acq.box)
        ctfs = torch.zeros(len(chunk) * ds.n_tilts, acq.box, acq.box // 2 + 1)
        if not cache_all:
            projectors.clear()
        for k in np.unique(states[chunk]):
            sel = np.flatnonzero(states[chunk] == k)
            if k not in projectors:
                projectors[k] = VolumeProjector(volumes[k], oversampling=2)
            proj = projectors[k]
            sub = _select(batch, sel)
            clean, ctf = clean_images(proj, sub, rots[torch.from_numpy(sel)], acq.pixel_size)
            imgs[torch.from_numpy(sel)] = clean
            ctfs.view(len(chunk), ds.n_tilts, *ctfs.shape[1:])[torch.from_numpy(sel)] = ctf.view(
                len(sel), ds.n_tilts, *ctf.shape[1:]
            )
        vis = batch.visible
        var = imgs[vis].var(dim=(-2, -1))
        signal_var.extend(var.tolist())
        if sigma is None:  # fixed from the first batch: the noise level of a detector, not per image
            sigma = float(np.sqrt(np.mean(signal_var) / acq.snr))
        noisy = imgs + sigma * noise_field(imgs.shape, acq.structured_noise, gen)
        if acq.ctf_premultiplied:  # CTF-premultiplied: signal gets CTF^2, noise becomes CTF-coloured
            ft = rfft2_centered(noisy.reshape(-1, acq.box, acq.box)) * ctfs
            noisy = irfft2_centered(ft, acq.box).reshape(noisy.shape)
        noisy = noisy * vis[..., None, None]
        for j, i in enumerate(chunk):
            write_stack(ds.images.paths[i], noisy[j], acq.pixel_size, float16=acq.float16)
        if progress:
            progress(len(chunk))
    measured = float(np.mean(signal_var)) / sigma**2
    return SimulatedLayout(
        optimisation_set=oset, particles_star=ds.tables["particles_star"], tomograms_star=ds.tables["tomograms_star"],
        names=ds.names, noise_sigma=sigma, measured_snr=measured, acquisition=asdict(acq),
        true_poses=_true_pose_columns(truth), true_tilt_shifts=_true_tilt_shifts(truth, acq.pixel_size),
    )  # fmt: skip


def _true_tilt_shifts(truth: dict, pixel_size: float) -> pd.DataFrame | None:
    """The tilt images' alignment errors (``tilt_shifts_truth.csv``; None when there are none): per tomogram and
    tilt (0-based row of its tomograms-star block) the shift (Angstrom, x y) of every particle image in it."""
    err = truth["tilt_shift_error_px"]
    if not err.any():
        return None
    k, j = np.meshgrid(np.arange(err.shape[0]), np.arange(err.shape[1]), indexing="ij")
    return pd.DataFrame({"rlnTomoName": np.asarray(truth["tomogram_names"])[k.ravel()], "tilt": j.ravel(),
                         "shift_x_A": err[..., 0].ravel() * pixel_size,
                         "shift_y_A": err[..., 1].ravel() * pixel_size})  # fmt: skip


def _true_pose_columns(truth: dict) -> dict[str, np.ndarray]:
    """``true_rlnAngleRot/Tilt/Psi`` (degrees) and ``true_rlnOriginX/Y/ZAngst``: the pose the images were made
    with, in the particles star's conventions (columns of ``ground_truth.csv``)."""
    angles = matrix_to_euler(torch.from_numpy(truth["true_rotations"]))
    cols = {f"true_{c}": a.numpy() for c, a in zip(("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"), angles, strict=True)}
    for k, c in enumerate(("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")):
        cols[f"true_{c}"] = truth["true_origin_A"][:, k]
    return cols


def _particle_matrices(ds) -> torch.Tensor:
    return particle_matrices(ds.tables["particles_blocks"]["particles"], ds.tables["particles_star"])


def _geometry_batch(ds, particles: np.ndarray) -> ImageBatch:
    """An ImageBatch of per-image parameters without reading images (they do not exist yet)."""
    t = torch.from_numpy(particles)
    return ImageBatch(
        particles=particles, images=torch.empty(0), rotations=ds.rotations[t], shifts=ds.shifts[t],
        defocus_u=ds.defocus_u[t], defocus_v=ds.defocus_v[t], defocus_angle=ds.defocus_angle[t],
        phase_shift=ds.phase_shift[t], dose=ds.dose[t], ctf_scale=ds.ctf_scale[t], visible=ds.visible[t],
        voltage=ds.voltage[t], spherical_aberration=ds.spherical_aberration[t],
        amplitude_contrast=ds.amplitude_contrast[t],
    )  # fmt: skip


def _select(batch: ImageBatch, sel: np.ndarray) -> ImageBatch:
    s = torch.from_numpy(sel)
    return ImageBatch(
        particles=batch.particles[sel], images=batch.images, rotations=batch.rotations[s], shifts=batch.shifts[s],
        defocus_u=batch.defocus_u[s], defocus_v=batch.defocus_v[s], defocus_angle=batch.defocus_angle[s],
        phase_shift=batch.phase_shift[s], dose=batch.dose[s], ctf_scale=batch.ctf_scale[s],
        visible=batch.visible[s], voltage=batch.voltage[s], spherical_aberration=batch.spherical_aberration[s],
        amplitude_contrast=batch.amplitude_contrast[s],
    )  # fmt: skip
