"""Built-in discrete phantoms: compositional states of the built-in complex (``assembly``, ``two_state_easy``,
``rare``)."""

from __future__ import annotations

import torch

from ..errors import InputError
from .builtin_complex import build_complex
from .maplike_complex import build_maplike_complex
from .phantom_set import PhantomSet, build_phantom_set, state_label


def assembly(
    box: int = 32,
    pixel_size: float | None = None,
    seed: int = 0,
    n_states: int = 4,
    step_fraction: float = 0.07,
    device: torch.device | str | None = None,
) -> PhantomSet:
    """Compositional assembly: core, core+A, core+A+B, core+A+B+C (``n_states`` 2..4), each subunit ~7% of
    the full complex's mass (the core ~79%), equal abundances. The hard discrete benchmark of DESIGN.md."""
    names = ["A", "B", "C"][: n_states - 1]
    if not 2 <= n_states <= 4:
        raise InputError(None, f"assembly has 2 to 4 states, got {n_states}", field="n_states")
    cx = build_complex(dict.fromkeys(names, step_fraction), seed=seed)
    comps = [names[:i] for i in range(n_states)]
    desc = (
        f"{n_states} compositional states, each adding a subunit of ~{step_fraction:.0%} of the full complex's "
        f"mass to the previous one (core ~{1 - step_fraction * len(names):.0%})"
    )
    return build_phantom_set(
        "assembly", desc, cx, comps, [state_label(c) for c in comps], None, None, box, pixel_size,
        dict.fromkeys(names, step_fraction), device,
    )  # fmt: skip


def two_state_easy(
    box: int = 32,
    pixel_size: float | None = None,
    seed: int = 0,
    fraction: float = 0.11,
    device: torch.device | str | None = None,
) -> PhantomSet:
    """Two states, core and core+A, differing by a subunit of ~11% of the larger state's mass; equal
    abundances. The easy discrete benchmark of DESIGN.md."""
    cx = build_complex({"A": fraction}, seed=seed)
    comps: list[list[str]] = [[], ["A"]]
    desc = f"2 compositional states differing by a subunit of ~{fraction:.0%} of mass"
    return build_phantom_set(
        "two_state_easy", desc, cx, comps, ["core", "core+A"], None, None, box, pixel_size, {"A": fraction}, device
    )


def rare(
    box: int = 32,
    pixel_size: float | None = None,
    seed: int = 0,
    abundance: float = 0.05,
    fraction: float = 0.07,
    device: torch.device | str | None = None,
) -> PhantomSet:
    """A rare state: core (95% of particles) and core+A (5%), A ~7% of the larger state's mass. The abundances
    are ``state_weights``; the rare state is state 1."""
    if not 0 < abundance < 1:
        raise InputError(None, f"abundance must be between 0 and 1, got {abundance}", field="abundance")
    cx = build_complex({"A": fraction}, seed=seed)
    desc = f"a rare state (core+A, {abundance:.0%} of particles) differing by a subunit of ~{fraction:.0%} of mass"
    return build_phantom_set(
        "rare", desc, cx, [[], ["A"]], ["core", "core+A"], [1 - abundance, abundance], None, box, pixel_size,
        {"A": fraction}, device,
    )  # fmt: skip


LADDER_ABUNDANCES = (0.40, 0.25, 0.20, 0.15)


def ladder(
    box: int = 32,
    pixel_size: float | None = None,
    seed: int = 0,
    n_states: int = 4,
    step_fraction: float = 0.07,
    abundances: tuple[float, ...] | None = None,
    device: torch.device | str | None = None,
) -> PhantomSet:
    """Map-like assembly ladder (see :mod:`.maplike_complex`): core, core+A, core+A+B, core+A+B+C on a textured
    core, each step ~7% of the full complex's mass split into three scattered pieces; abundances 40/25/20/15%
    (for 4 states; equal for fewer unless given). The discrete benchmark at the physical limit."""
    if not 2 <= n_states <= 4:
        raise InputError(None, f"ladder has 2 to 4 states, got {n_states}", field="n_states")
    names = ["A", "B", "C"][: n_states - 1]
    if abundances is None:
        abundances = LADDER_ABUNDANCES if n_states == 4 else tuple([1.0 / n_states] * n_states)
    if len(abundances) != n_states:
        raise InputError(None, f"{len(abundances)} abundances for {n_states} states", field="abundances")
    cx = build_maplike_complex(dict.fromkeys(names, step_fraction), seed=seed)
    comps = [names[:i] for i in range(n_states)]
    desc = (
        f"map-like assembly ladder of {n_states} states, each adding ~{step_fraction:.0%} of the full complex's "
        f"mass in three scattered pieces to a textured core; abundances " + "/".join(f"{a:.0%}" for a in abundances)
    )
    return build_phantom_set(
        "ladder", desc, cx, comps, [state_label(c) for c in comps], list(abundances), None, box, pixel_size,
        dict.fromkeys(names, step_fraction), device,
    )  # fmt: skip


def rare_spread(
    box: int = 32,
    pixel_size: float | None = None,
    seed: int = 0,
    abundance: float = 0.05,
    fraction: float = 0.07,
    device: torch.device | str | None = None,
) -> PhantomSet:
    """Map-like rare state: a textured core (95% of particles) and core+A (5%), A ~7% of the larger state's mass
    split into three scattered pieces (see :mod:`.maplike_complex`). The rare state is state 1."""
    if not 0 < abundance < 1:
        raise InputError(None, f"abundance must be between 0 and 1, got {abundance}", field="abundance")
    cx = build_maplike_complex({"A": fraction}, seed=seed)
    desc = (
        f"a rare state (core+A, {abundance:.0%} of particles) on a textured core, A ~{fraction:.0%} of mass in "
        "three scattered pieces"
    )
    return build_phantom_set(
        "rare_spread", desc, cx, [[], ["A"]], ["core", "core+A"], [1 - abundance, abundance], None, box,
        pixel_size, {"A": fraction}, device,
    )  # fmt: skip
