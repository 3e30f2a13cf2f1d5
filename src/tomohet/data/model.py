"""The data model: particles seen as 2D tilt-series stacks, with per-image geometry and optics.

Conventions: per-image rotations ``A_ij`` map reference coordinates to image coordinates (RELION, see
``tomohet.physics.rotations``); shifts are in pixels (x, y) and say where the particle centre sits relative
to the box centre (``D // 2``); defoci in Angstrom (the particle's own, including the defocus gradient
across the tilted specimen), angles in degrees, doses in e/A^2 (cumulative before the image).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
import torch

from .images import ImageSource

DatasetKind = Literal["2d", "3d"]


@runtime_checkable
class ParticleDataset(Protocol):
    """What every method may rely on, whatever the data: ``kind`` says which of the two the dataset is,
    ``"2d"`` tilt-series stacks (:class:`TiltSeriesParticles`) or ``"3d"`` subtomograms
    (:class:`~tomohet.data.subtomo.Subtomograms`); methods branch on it, never on attributes."""

    kind: ClassVar[DatasetKind]
    names: list[str]
    box: int
    pixel_size: float
    half_set: np.ndarray
    ctf_premultiplied: bool

    @property
    def n_particles(self) -> int: ...

    def chunks(self, size: int, particles: np.ndarray | None = None) -> Iterator[np.ndarray]: ...

    def batch(self, particles: np.ndarray) -> Any: ...

    def summary(self) -> str: ...


def particle_chunks(n_particles: int, size: int, particles: np.ndarray | None = None):
    """Yield index arrays of at most ``size`` of ``particles`` (default ``0..n_particles-1``), in order."""
    idx = np.arange(n_particles) if particles is None else np.asarray(particles)
    for s in range(0, len(idx), size):
        yield idx[s : s + size]


@dataclass
class ImageBatch:
    """A batch of B particles x T tilts: images and every per-image quantity the forward model needs."""

    particles: np.ndarray  # [B] indices into the dataset
    images: torch.Tensor  # [B, T, D, D] float32, zeros where not visible
    rotations: torch.Tensor  # [B, T, 3, 3] float64
    shifts: torch.Tensor  # [B, T, 2] pixels
    defocus_u: torch.Tensor  # [B, T] Angstrom
    defocus_v: torch.Tensor
    defocus_angle: torch.Tensor  # degrees
    phase_shift: torch.Tensor  # degrees
    dose: torch.Tensor  # [B, T] e/A^2
    ctf_scale: torch.Tensor  # [B, T]
    visible: torch.Tensor  # [B, T] bool
    voltage: torch.Tensor  # [B] kV
    spherical_aberration: torch.Tensor  # [B] mm
    amplitude_contrast: torch.Tensor  # [B]


@dataclass
class TiltSeriesParticles:
    """N particles, each a stack of up to T tilt images of box D at ``pixel_size`` Angstrom.

    Per-image arrays are ``[N, T]`` (``rotations`` ``[N, T, 3, 3]``, ``shifts`` ``[N, T, 2]``); ragged tilt
    counts are handled by ``visible``. ``tables`` keeps the source file's tables so that writers can
    reproduce them (same rows, same names) with added columns.
    """

    kind: ClassVar[DatasetKind] = "2d"

    names: list[str]
    box: int
    pixel_size: float
    rotations: torch.Tensor
    shifts: torch.Tensor
    defocus_u: torch.Tensor
    defocus_v: torch.Tensor
    defocus_angle: torch.Tensor
    phase_shift: torch.Tensor
    dose: torch.Tensor
    ctf_scale: torch.Tensor
    tilt_angle: torch.Tensor  # [N, T] degrees
    visible: torch.Tensor
    voltage: torch.Tensor  # [N]
    spherical_aberration: torch.Tensor  # [N]
    amplitude_contrast: torch.Tensor  # [N]
    ctf_premultiplied: bool
    images: ImageSource
    tomogram: list[str]  # [N] tomogram (or micrograph/tilt-series) name per particle
    half_set: np.ndarray  # [N] 1 or 2 (gold-standard halves)
    source_format: str  # "relion5", "warp_v1", "simulated"
    source_path: Path | None = None
    tables: dict[str, Any] = field(default_factory=dict)

    @property
    def n_particles(self) -> int:
        return len(self.names)

    @property
    def n_tilts(self) -> int:
        return int(self.visible.shape[1])

    @property
    def n_images(self) -> int:
        return int(self.visible.sum())

    def batch(self, particles: np.ndarray | list[int] | slice) -> ImageBatch:
        """Images (read lazily from disk) and per-image parameters of the selected particles."""
        idx = np.arange(self.n_particles)[particles] if isinstance(particles, slice) else np.asarray(particles)
        t = torch.from_numpy(idx)
        imgs = self.images.read(idx) * self.visible[t][..., None, None]
        return ImageBatch(
            particles=idx,
            images=imgs,
            rotations=self.rotations[t],
            shifts=self.shifts[t],
            defocus_u=self.defocus_u[t],
            defocus_v=self.defocus_v[t],
            defocus_angle=self.defocus_angle[t],
            phase_shift=self.phase_shift[t],
            dose=self.dose[t],
            ctf_scale=self.ctf_scale[t],
            visible=self.visible[t],
            voltage=self.voltage[t],
            spherical_aberration=self.spherical_aberration[t],
            amplitude_contrast=self.amplitude_contrast[t],
        )

    def chunks(self, size: int, particles: np.ndarray | None = None):
        """Yield particle index arrays of at most ``size`` particles (all particles by default)."""
        return particle_chunks(self.n_particles, size, particles)

    def take(self, particles: np.ndarray) -> TiltSeriesParticles:
        """The dataset of the given particles only (0-based indices, in that order), for computations on a subset
        (e.g. cross-validation): images are read through this dataset's source, nothing is copied or modified.
        The source file's tables are not carried over, so a subset is not written back as particles."""
        idx = np.asarray(particles, dtype=np.int64)
        t = torch.from_numpy(idx)
        per_particle = {f: getattr(self, f)[t] for f in ("rotations", "shifts", "defocus_u", "defocus_v",
                        "defocus_angle", "phase_shift", "dose", "ctf_scale", "tilt_angle", "visible", "voltage",
                        "spherical_aberration", "amplitude_contrast")}  # fmt: skip
        return replace(self, **per_particle, names=[self.names[i] for i in idx],
                       tomogram=[self.tomogram[i] for i in idx], half_set=np.asarray(self.half_set)[idx],
                       images=SubsetImages(self.images, idx), tables={})  # fmt: skip

    def summary(self) -> str:
        return (
            f"{self.n_particles} particles, {self.n_images} images (up to {self.n_tilts} tilts), box {self.box}, "
            f"{self.pixel_size:.3f} A/px, {len(set(self.tomogram))} tomograms, "
            f"CTF {'premultiplied' if self.ctf_premultiplied else 'not premultiplied'} ({self.source_format})"
        )


class ArrayImageSource:
    """Images held in memory as ``[N, T, D, D]`` (simulations, tests); same interface as ``ImageSource``."""

    def __init__(self, images: torch.Tensor):
        self.images = images.to(torch.float32)
        self.box = int(images.shape[-1])

    def read(self, particles: np.ndarray | list[int]) -> torch.Tensor:
        return self.images[torch.as_tensor(np.asarray(particles), dtype=torch.long)]


class SubsetImages:
    """The images of some particles of another source (``particles``: their indices there); same interface."""

    def __init__(self, source, particles: np.ndarray):
        self.source, self.particles = source, np.asarray(particles, dtype=np.int64)
        self.box = source.box

    def read(self, particles: np.ndarray | list[int]) -> torch.Tensor:
        return self.source.read(self.particles[np.asarray(particles, dtype=np.int64)])
