"""Checks of command-line options, done once for every subcommand and before any data is read or any worker is
started. A bad value stops with :class:`OptionError`, one line naming the option, what was given and what is
expected (the CLI prints it as ``error: ...`` and exits with code 2)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError

METHODS = ("em", "em2d", "em3d", "hillclimb")  # classify's methods (methods.registry), "em" = em2d
INITS = ("pca", "ppca", "random")


class OptionError(InputError):
    """A command-line option with a value that cannot work: ``--option: message (got value)``."""

    def __init__(self, option: str, message: str):
        ValueError.__init__(self, f"{option}: {message}")
        self.path = None
        self.field = option


def _number(option: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise OptionError(option, f"expected a number (got {value!r})")
    return value


def at_least(option: str, value, low, what: str = "") -> None:
    """``value >= low`` (None passes: the option was not given)."""
    if value is not None and _number(option, value) < low:
        raise OptionError(option, f"must be at least {low}{what} (got {value})")


def positive(option: str, value, what: str = "") -> None:
    """``value > 0`` (None passes)."""
    if value is not None and not _number(option, value) > 0:
        raise OptionError(option, f"must be greater than 0{what} (got {value})")


def fraction(option: str, value) -> None:
    """``0 <= value <= 1`` (None passes)."""
    if value is not None and not 0 <= _number(option, value) <= 1:
        raise OptionError(option, f"must be a fraction between 0 and 1 (got {value})")


def one_of(option: str, value, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise OptionError(option, f"unknown value {value!r}; expected one of {', '.join(choices)}")


def check_landscape(
    components: int,
    clusters: int | None,
    iterations: int | None,
    resolution_limit: float | None,
    max_dose: float | None,
    pixel_size: float | None = None,
    workers: int = 0,
    basis: int | None = None,
    beta: float | None = None,
    held_out: float | None = None,
    device: str | None = None,
    basis_epochs: int | None = None,
) -> None:
    """The options of ``tomohet landscape`` that can be judged without the data."""
    at_least("--components", components, 1)
    at_least("--basis", basis, 1)
    at_least("--basis-epochs", basis_epochs, 1)
    at_least("--beta", beta, 0)
    if held_out is not None and not 0 <= held_out < 0.5:
        raise OptionError("--held-out", f"must be in [0, 0.5), got {held_out}")
    if device is not None and not (device == "cpu" or device.startswith("cuda") or device == "mps"):
        raise OptionError("--device", f"must be cpu, cuda, cuda:N or mps, got {device!r}")
    at_least("--clusters", clusters, 1)
    at_least("--iterations", iterations, 1)
    positive("--resolution-limit", resolution_limit, " Angstrom")
    at_least("--max-dose", max_dose, 0, " e/A^2")
    positive("--pixel-size", pixel_size, " Angstrom")
    at_least("--workers", workers, 0)


def check_classify(
    n_classes: int,
    n_iter: int,
    init: str,
    method: str,
    runs: int,
    max_dose: float | None,
    resolution_limit: float | None,
    anneal_start: float,
    pixel_size: float | None = None,
    workers: int = 0,
    has_maps: bool = False,
) -> None:
    """The options of ``tomohet classify`` that can be judged without the data (``init`` may be ``maps`` only
    with initial maps)."""
    one_of("--method", method, METHODS)
    one_of("--init", init, (*INITS, "maps") if has_maps else INITS)
    if init == "ppca" and method not in ("em", "em2d"):
        raise OptionError("--init", f"ppca starts only --method em2d (2D tilt stacks), not {method}")
    at_least("--classes/-K", n_classes, 1)
    at_least("--iterations", n_iter, 1)
    at_least("--runs", runs, 1)
    at_least("--max-dose", max_dose, 0, " e/A^2")
    positive("--resolution-limit", resolution_limit, " Angstrom")
    positive("--anneal", anneal_start)
    positive("--pixel-size", pixel_size, " Angstrom")
    if workers is not None and _number("--workers", workers) < 0:
        raise OptionError("--workers", f"must be 0 (run in this process) or a number of Dask workers (got {workers})")


def check_class_scan(scan: str | None, method: str, has_maps: bool, local_search: bool) -> None:
    """``--scan-classes``: a range or list of class counts, with the 2D EM, without initial maps or a local search."""
    if scan is None:
        return
    from ..methods.class_scan import parse_class_range

    try:
        parse_class_range(scan)
    except ValueError as exc:
        raise OptionError("--scan-classes", str(exc)) from None
    if method not in ("em", "em2d"):
        raise OptionError("--scan-classes", f"scans the EM on 2D stacks (--method em), not {method}")
    if has_maps:
        raise OptionError("--scan-classes", "initial maps (--map) fix the number of classes; give one or the other")
    if local_search:
        raise OptionError("--scan-classes", "scores classes with the poses as given: not with --local-angles/-shifts")


def check_local_search(
    local_angles: float, local_shifts: float, sigma_angles: float | None, sigma_shifts: float | None, method: str
) -> None:
    """Local pose search options: ranges >= 0, widths > 0, and only where the method searches poses (the EM on
    2D stacks and the 3D EM)."""
    at_least("--local-angles", local_angles, 0.0, " degrees")
    at_least("--local-shifts", local_shifts, 0.0, " pixels")
    positive("--sigma-angles", sigma_angles, " degrees")
    positive("--sigma-shifts", sigma_shifts, " pixels")
    searched = local_angles > 0 or local_shifts > 0
    if searched and method not in ("em", "em2d", "em3d"):
        flag = "--local-angles" if local_angles > 0 else "--local-shifts"
        raise OptionError(flag, f"local pose searches run in --method em and em3d, not {method}")
    if not searched and (sigma_angles is not None or sigma_shifts is not None):
        flag = "--sigma-angles" if sigma_angles is not None else "--sigma-shifts"
        raise OptionError(flag, "is the prior of a local search: give --local-angles or --local-shifts too")


def check_classes_fit(n_classes: int, n_particles: int, input_path: Path, option: str = "--classes/-K") -> None:
    """Each class needs at least one particle (``n_particles``: those one run sees)."""
    if n_classes > n_particles:
        raise OptionError(option, f"{n_classes} classes for {n_particles} particles in {input_path}; "
                          f"at most {n_particles}")  # fmt: skip


def check_max_dose(ds, max_dose: float | None) -> None:
    """Every particle keeps at least one image under ``--max-dose`` (else it could not be classified)."""
    if max_dose is None or ds.kind != "2d":
        return
    kept = ((ds.dose <= max_dose) & ds.visible.bool()).any(1)
    if not bool(kept.all()):
        lowest = float(ds.dose[ds.visible.bool()].min())
        raise OptionError("--max-dose", f"{int((~kept).sum())} of {len(kept)} particles keep no image at or below "
                          f"{max_dose} e/A^2 (the lowest pre-exposure is {lowest:g})")  # fmt: skip


def check_reconstruct(oversampling: int, batch_size: int, pixel_size: float | None = None) -> None:
    at_least("--oversampling", oversampling, 1)
    at_least("--batch-size", batch_size, 1)
    positive("--pixel-size", pixel_size, " Angstrom")


def check_refine(n_iter: int, max_dose: float | None, resolution_limit: float | None, pixel_size: float | None) -> None:
    at_least("--iterations", n_iter, 1)
    at_least("--max-dose", max_dose, 0, " e/A^2")
    positive("--resolution-limit", resolution_limit, " Angstrom")
    positive("--pixel-size", pixel_size, " Angstrom")


def check_simulate(
    n_particles: int | None,
    snr: float | None,
    structured_noise: float = 0.0,
    missing_tilts: float = 0.0,
    pose_error_deg: float = 0.0,
    shift_error_px: float = 0.0,
    tilt_shift_error_px: float = 0.0,
) -> None:
    at_least("--n-particles", n_particles, 1)
    positive("--snr", snr)
    fraction("--structured-noise", structured_noise)
    fraction("--missing-tilts", missing_tilts)
    at_least("--pose-error-deg", pose_error_deg, 0.0)
    at_least("--shift-error-px", shift_error_px, 0.0)
    at_least("--tilt-shift-error-px", tilt_shift_error_px, 0.0)


def read_input(path: Path, tomograms: Path | None, pixel_size: float | None, stacks_only: bool = False):
    """Read the particles with ``tomohet.data.io`` (2D stacks only for ``stacks_only``), passing ``--pixel-size``
    on as ``pixel_size=`` to the reader."""
    from ..data import io

    reader = io.read_particles if stacks_only else io.read_any
    return reader(path, tomograms, pixel_size=pixel_size)


def read_focus_mask(path: Path | None, box: int):
    """The focus mask ``[D, D, D]`` (MRC, values in 0..1, not empty, the particles' box), or None."""
    if path is None:
        return None
    from ..data.mrc import read_volume

    mask, _ = read_volume(path)
    if mask.shape[-1] != box:
        raise InputError(path, f"mask box {mask.shape[-1]} differs from the particles' {box}")
    if mask.min() < 0 or mask.max() > 1 or mask.max() == 0:
        raise InputError(path, "a focus mask must have values in [0, 1] and not be empty")
    return mask
