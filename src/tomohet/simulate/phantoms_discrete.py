"""Built-in discrete phantoms: compositional states of the built-in complex (``assembly``, ``two_state_easy``,
``rare``) and of its map-like variant (``ladder``, ``rare_spread``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import InputError
from .builtin_complex import build_complex
from .complex_model import Complex
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
    return _step_ladder(
        "assembly", build_complex, n_states, step_fraction, None, seed, box, pixel_size, device,
        lambda names: f"{n_states} compositional states, each adding a subunit of ~{step_fraction:.0%} of the full "
        f"complex's mass to the previous one (core ~{1 - step_fraction * len(names):.0%})",
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
    desc = f"a rare state (core+A, {abundance:.0%} of particles) differing by a subunit of ~{fraction:.0%} of mass"
    return _rare_pair("rare", build_complex, abundance, fraction, desc, seed, box, pixel_size, device)


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
    _check_n_states("ladder", n_states)  # before the abundances, whose default depends on it
    if abundances is None:
        abundances = LADDER_ABUNDANCES if n_states == 4 else tuple([1.0 / n_states] * n_states)
    if len(abundances) != n_states:
        raise InputError(None, f"{len(abundances)} abundances for {n_states} states", field="abundances")
    return _step_ladder(
        "ladder", build_maplike_complex, n_states, step_fraction, list(abundances), seed, box, pixel_size, device,
        lambda names: f"map-like assembly ladder of {n_states} states, each adding ~{step_fraction:.0%} of the full "
        "complex's mass in three scattered pieces to a textured core; abundances "
        + "/".join(f"{a:.0%}" for a in abundances),
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
    desc = (
        f"a rare state (core+A, {abundance:.0%} of particles) on a textured core, A ~{fraction:.0%} of mass in "
        "three scattered pieces"
    )
    return _rare_pair("rare_spread", build_maplike_complex, abundance, fraction, desc, seed, box, pixel_size, device)


def _step_ladder(
    name: str, make_complex: Callable[..., Complex], n_states: int, step_fraction: float,
    weights: list[float] | None, seed: int, box: int, pixel_size: float | None,
    device: torch.device | str | None, describe: Callable[[list[str]], str],
) -> PhantomSet:  # fmt: skip
    """States core, core+A, core+A+B, core+A+B+C (``n_states`` 2..4) of ``make_complex(steps, seed=...)``, each
    step ``step_fraction`` of the full complex's mass; ``weights`` the abundances (None: equal)."""
    _check_n_states(name, n_states)
    names = ["A", "B", "C"][: n_states - 1]
    cx = make_complex(dict.fromkeys(names, step_fraction), seed=seed)
    comps = [names[:i] for i in range(n_states)]
    return build_phantom_set(
        name, describe(names), cx, comps, [state_label(c) for c in comps], weights, None, box, pixel_size,
        dict.fromkeys(names, step_fraction), device,
    )  # fmt: skip


def _check_n_states(name: str, n_states: int) -> None:
    if not 2 <= n_states <= 4:
        raise InputError(None, f"{name} has 2 to 4 states, got {n_states}", field="n_states")


def _rare_pair(
    name: str, make_complex: Callable[..., Complex], abundance: float, fraction: float, desc: str, seed: int,
    box: int, pixel_size: float | None, device: torch.device | str | None,
) -> PhantomSet:  # fmt: skip
    """Two states, core (``1 - abundance``) and core+A (``abundance``, state 1), A ``fraction`` of the mass."""
    if not 0 < abundance < 1:
        raise InputError(None, f"abundance must be between 0 and 1, got {abundance}", field="abundance")
    cx = make_complex({"A": fraction}, seed=seed)
    return build_phantom_set(
        name, desc, cx, [[], ["A"]], ["core", "core+A"], [1 - abundance, abundance], None, box, pixel_size,
        {"A": fraction}, device,
    )  # fmt: skip
