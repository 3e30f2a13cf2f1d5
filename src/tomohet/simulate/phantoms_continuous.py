"""Built-in continuous phantoms: a hinged lid on the built-in complex (``hinge``), alone or crossed with a
compositional state (``mixture``); the coordinate is the hinge angle in degrees."""

from __future__ import annotations

import numpy as np
import torch

from .builtin_complex import build_complex
from .phantom_set import PhantomSet, build_phantom_set


def hinge(
    box: int = 32,
    pixel_size: float | None = None,
    seed: int = 0,
    fraction: float = 0.20,
    max_angle_deg: float = 30.0,
    n_maps: int = 11,
    device: torch.device | str | None = None,
) -> PhantomSet:
    """Continuous: a lid of ~20% of the mass hinging 0..30 degrees away from the core; ``n_maps`` ground-truth
    maps evenly spaced in angle (the coordinate, degrees). The continuous benchmark of DESIGN.md."""
    cx = build_complex(hinge_fraction=fraction, seed=seed)
    angles = np.linspace(0.0, max_angle_deg, n_maps).tolist()
    desc = f"a domain of ~{fraction:.0%} of mass hinging 0-{max_angle_deg:g} degrees ({n_maps} maps)"
    return build_phantom_set(
        "hinge", desc, cx, [[]], ["core+lid"], None, angles, box, pixel_size, {"lid": fraction}, device
    )


def mixture(
    box: int = 32,
    pixel_size: float | None = None,
    seed: int = 0,
    subunit_fraction: float = 0.11,
    hinge_fraction: float = 0.20,
    max_angle_deg: float = 30.0,
    n_maps: int = 11,
    device: torch.device | str | None = None,
) -> PhantomSet:
    """Compositional x continuous: subunit A (~11% of the full complex) absent or present (equal abundances),
    times a lid of ~20% of the mass hinging 0..30 degrees; ``n_maps`` maps per compositional state."""
    cx = build_complex({"A": subunit_fraction}, hinge_fraction=hinge_fraction, seed=seed)
    angles = np.linspace(0.0, max_angle_deg, n_maps).tolist()
    desc = (
        f"2 compositional states (subunit A, ~{subunit_fraction:.0%} of mass) x a domain of "
        f"~{hinge_fraction:.0%} of mass hinging 0-{max_angle_deg:g} degrees"
    )
    stated = {"A": subunit_fraction, "lid": hinge_fraction}
    return build_phantom_set(
        "mixture", desc, cx, [[], ["A"]], ["core+lid", "core+A+lid"], None, angles, box, pixel_size, stated, device
    )
