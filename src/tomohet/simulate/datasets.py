"""Benchmark datasets with per-particle ground truth: phantom states + acquisition + sizes, written in the
RELION 5 / WarpTools layout with ``ground_truth.csv`` and the ground-truth maps (contract in DESIGN.md).

States never correlate with acquisition nuisances: the state of each particle is drawn independently of its
tomogram, defocus, visible tilts and dose (all drawn by the acquisition from their own random stream).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.mrc import write_volume
from ..errors import InputError
from . import phantoms
from .acquisition import Acquisition, SimulatedLayout, simulate_images
from .phantoms import PhantomSet


@dataclass
class DatasetPreset:
    """A named benchmark dataset: which phantom, how many particles, how it is recorded."""

    name: str
    phantom: str
    n_particles: int
    acquisition: Acquisition
    description: str
    phantom_options: dict = field(default_factory=dict)


def _acq(**kw) -> Acquisition:
    return replace(Acquisition(), **kw)


PRESETS: dict[str, DatasetPreset] = {
    p.name: p
    for p in [
        DatasetPreset("smoke", "two_state_easy", 200, _acq(box=32, pixel_size=12.0, snr=0.05, n_tomograms=2),
                      "1-minute smoke set: 2 states (~11% mass difference), 200 particles x 41 tilts, SNR 0.05"),
        DatasetPreset("discrete_easy", "two_state_easy", 600, _acq(box=32, pixel_size=12.0, snr=0.05),
                      "2 states differing by ~11% of mass, 600 particles x 41 tilts, per-image SNR 0.05"),
        DatasetPreset("discrete_default", "assembly", 1000, _acq(box=32, pixel_size=12.0, snr=0.05),
                      "assembly series of 4 compositional states, 1000 particles x 41 tilts, SNR 0.05"),
        DatasetPreset("discrete_hard", "assembly", 1000, _acq(box=32, pixel_size=12.0, snr=0.02),
                      "4 compositional states (~7% mass steps), 1000 particles x 41 tilts, SNR 0.02"),
        DatasetPreset("rare", "rare", 1000, _acq(box=32, pixel_size=12.0, snr=0.05),
                      "a rare state at 5% abundance, 1000 particles x 41 tilts, SNR 0.05"),
        DatasetPreset("hinge", "hinge", 1000, _acq(box=32, pixel_size=12.0, snr=0.05),
                      "a domain of ~20% of mass hinging 0-30 degrees, 1000 particles x 41 tilts, SNR 0.05"),
        DatasetPreset("mixture", "mixture", 1000, _acq(box=32, pixel_size=12.0, snr=0.05),
                      "compositional states x hinge, 1000 particles x 41 tilts, SNR 0.05"),
        DatasetPreset("ladder", "ladder", 1000,
                      _acq(box=32, pixel_size=12.0, snr=0.005, missing_high_tilt_fraction=0.3),
                      "at the physical limit (oracle ARI 0.91-0.95): map-like 4-state ladder (~7% mass steps in "
                      "scattered pieces, 40/25/20/15%), 1000 particles x 41 tilts, 30% missing high tilts, SNR 0.005"),
        DatasetPreset("ladder_premultiplied", "ladder", 1000,
                      _acq(box=32, pixel_size=12.0, snr=0.005, missing_high_tilt_fraction=0.3, ctf_premultiplied=True),
                      "the ladder preset with CTF-premultiplied images"),
        DatasetPreset("rare_spread", "rare_spread", 1000,
                      _acq(box=32, pixel_size=12.0, snr=0.008, missing_high_tilt_fraction=0.3),
                      "at the physical limit (oracle rare-state F1 ~0.98): a map-like rare state at 5% (~7% of mass "
                      "in scattered pieces), 1000 particles x 41 tilts, 30% missing high tilts, SNR 0.008"),
        DatasetPreset("large", "assembly", 10000, _acq(box=64, pixel_size=6.0, snr=0.05, n_tomograms=20),
                      "10^4 particles x 41 tilts at box 64 (4 compositional states, SNR 0.05)"),
    ]
}  # fmt: skip


def draw_states(abundances: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``round(abundance * n)`` particles per state (largest remainders), randomly permuted."""
    raw = np.asarray(abundances, dtype=np.float64) * n
    counts = np.floor(raw).astype(int)
    counts[np.argsort(raw - counts)[::-1][: n - counts.sum()]] += 1
    return rng.permutation(np.repeat(np.arange(len(counts)), counts))


def list_presets() -> list[tuple[str, str]]:
    """``(name, description)`` of every dataset preset."""
    return [(p.name, p.description) for p in PRESETS.values()]


def get_preset(name: str) -> DatasetPreset:
    if name not in PRESETS:
        raise InputError(None, f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}", field="--preset")
    return PRESETS[name]


def particle_maps(
    phantom: PhantomSet, n: int, rng: np.random.Generator, fine_steps: int = 61
) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """Draw each particle's state (exact abundances) and, for continuous phantoms, its coordinate (uniform in
    the phantom's range, on a fine grid of ``fine_steps`` rendered maps). Returns the maps to project
    ``[K, D, D, D]``, each particle's map index ``[n]``, state ``[n]`` and coordinate ``[n]`` (NaN if none)."""
    states = draw_states(phantom.state_weights, n, rng)
    if phantom.coordinate is None:
        maps = torch.stack([phantom.volume(s) for s in range(phantom.n_states)])
        return maps, states, states, np.full(n, np.nan)
    lo, hi = phantom.coordinate_range or (float(phantom.coordinate.min()), float(phantom.coordinate.max()))
    grid = np.linspace(lo, hi, fine_steps)
    coord_idx = rng.integers(0, fine_steps, size=n)
    maps = torch.stack([phantom.volume(s, a) for s in range(phantom.n_states) for a in grid])
    return maps, states * fine_steps + coord_idx, states, grid[coord_idx]


def simulate_dataset(
    phantom: PhantomSet,
    n_particles: int,
    acquisition: Acquisition,
    out: str | Path,
    name: str = "sim",
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> tuple[SimulatedLayout, pd.DataFrame]:
    """Write a full benchmark dataset into ``out``: RELION 5 project, ``maps/`` with the phantom's
    ground-truth maps, ``ground_truth.csv`` and ``dataset.json``. Returns the layout and the ground truth."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 1])  # the state stream, independent of the acquisition stream
    maps, map_index, states, coords = particle_maps(phantom, n_particles, rng)
    layout = simulate_images(out, name, maps, map_index, acquisition, seed=seed, progress=progress)
    map_files = []
    for k, vol in enumerate(phantom.volumes):
        f = Path("maps") / (
            f"state_{int(phantom.state[k]):02d}.mrc"
            if phantom.coordinate is None
            else f"state_{int(phantom.state[k]):02d}_coord_{phantom.coordinate[k]:06.2f}.mrc"
        )
        write_volume(out / f, vol, acquisition.pixel_size)
        map_files.append(str(f))
    nearest = [
        phantom.nearest_map(int(s), None if np.isnan(c) else float(c)) for s, c in zip(states, coords, strict=True)
    ]
    truth = pd.DataFrame(
        {
            "rlnTomoParticleName": layout.names,
            "state": states,
            "state_name": [phantom.state_names[k] for k in states],
            "coordinate": coords,
            "map_file": [map_files[k] for k in nearest],
            **layout.true_poses,
        }
    )
    truth.to_csv(out / "ground_truth.csv", index=False)
    if layout.true_tilt_shifts is not None:
        layout.true_tilt_shifts.to_csv(out / "tilt_shifts_truth.csv", index=False)
    meta = {
        "name": name, "phantom": phantom.name, "seed": seed, "n_particles": n_particles,
        "states": phantom.state_names, "abundances": np.asarray(phantom.state_weights).tolist(),
        "stated_mass_fractions": phantom.stated_mass_fractions, "description": phantom.description,
        "requested_snr": acquisition.snr, "measured_snr": layout.measured_snr, "noise_sigma": layout.noise_sigma,
        "acquisition": asdict(acquisition), "optimisation_set": layout.optimisation_set.name,
        "maps": map_files, "map_states": phantom.state.tolist(),
        "map_coordinates": None if phantom.coordinate is None else phantom.coordinate.tolist(),
    }  # fmt: skip
    (out / "dataset.json").write_text(json.dumps(meta, indent=2, default=float))
    return layout, truth


def simulate_preset(
    name: str,
    out: str | Path,
    seed: int = 0,
    n_particles: int | None = None,
    snr: float | None = None,
    progress: Callable[[int], None] | None = None,
    acquisition: dict | None = None,
) -> tuple[SimulatedLayout, pd.DataFrame]:
    """Simulate a named dataset preset (optionally with another size, SNR or acquisition fields)."""
    p = get_preset(name)
    acq = p.acquisition if snr is None else replace(p.acquisition, snr=snr)
    if acquisition:
        acq = replace(acq, **acquisition)
    phantom = phantoms.preset(p.phantom, box=acq.box, pixel_size=acq.pixel_size, seed=seed, **p.phantom_options)
    return simulate_dataset(phantom, n_particles or p.n_particles, acq, out, name, seed, progress)


def read_ground_truth(path: str | Path) -> pd.DataFrame:
    """``ground_truth.csv`` of a simulated dataset (a folder or the CSV itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / "ground_truth.csv"
    return pd.read_csv(path)
