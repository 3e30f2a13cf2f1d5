"""Do two classes' maps differ beyond their noise? Pairwise class-map FSC against what the same map would give.

Each class has two independent half maps. Their FSC gives the class map's own signal-to-noise per shell; the
FSC of a full map (two halves) with the truth would be ``C_k = sqrt(2 F_k / (1 + F_k))`` (Rosenthal & Henderson
2003, J. Mol. Biol. 333:721), and two full maps of the *same* structure from independent particles correlate
as ``C_i C_j``. Two classes whose full maps correlate as much as that are not told apart by their maps at that
shell; where the observed cross-FSC falls significantly below it (Fisher z, ``n`` = half the shell's voxel
count independent Fourier coefficients), the classes differ. The table says up to which resolution the
pair is distinct: a pair distinct nowhere is a sign of too many classes (merge them, or classify with fewer),
which is how a run tells the user whether the data support its K.
"""

from __future__ import annotations

import numpy as np
import torch

from ..physics.filters import fsc, shell_frequencies
from ..physics.fourier import radial_index_3d

Z_SIGNIFICANT = 3.0  # one-sided Fisher-z threshold per shell


def _fisher_z(r: np.ndarray) -> np.ndarray:
    return np.arctanh(np.clip(r, -0.999999, 0.999999))


def pairwise_distinctness(halves: dict[int, tuple[torch.Tensor, torch.Tensor]], pixel_size: float,
                          max_resolution_A: float | None = None) -> list[dict]:  # fmt: skip
    """For every pair of classes (``{class: (half1, half2)}``), the shells where their maps differ beyond noise:
    ``distinct shells`` (count up to ``max_resolution_A`` or Nyquist), ``distinct from (A)`` (the coarsest
    distinct shell's resolution), ``max z``; ``distinct`` when at least two shells are."""
    keys = sorted(halves)
    if not keys:
        return []
    d = halves[keys[0]][0].shape[-1]
    freq = shell_frequencies(d, pixel_size).numpy()
    counts = np.bincount(radial_index_3d(d).reshape(-1).clamp(max=d // 2).numpy(), minlength=d // 2 + 1)
    n_eff = np.maximum(counts[: d // 2 + 1] / 2.0, 4.0)
    top = d // 2 if max_resolution_A is None else min(d // 2, int(d * pixel_size / max_resolution_A))
    full, own = {}, {}
    for k in keys:
        h1, h2 = halves[k]
        f_half = fsc(h1, h2).numpy().clip(0, 1)
        own[k] = np.sqrt(2 * f_half / (1 + f_half))
        full[k] = (h1 + h2) / 2
    rows = []
    for a_i, i in enumerate(keys):
        for j in keys[a_i + 1 :]:
            cross = fsc(full[i], full[j]).numpy()
            expected = own[i] * own[j]
            z = (_fisher_z(expected) - _fisher_z(cross)) * np.sqrt(n_eff - 3)
            shells = np.arange(1, top + 1)
            sig = shells[z[shells] > Z_SIGNIFICANT]
            rows.append({"classes": f"{i}-{j}", "distinct shells": int(len(sig)),
                         "distinct from (Å)": round(float(1 / freq[sig[0]]), 1) if len(sig) else None,
                         "max z": round(float(z[shells].max()), 1), "distinct": bool(len(sig) >= 2)})  # fmt: skip
    return rows


def supported_classes(rows: list[dict], classes: list[int]) -> int:
    """The number of classes left after merging every pair that is not distinct (connected components)."""
    parent = {k: k for k in classes}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for r in rows:
        if not r["distinct"]:
            i, j = (int(v) for v in r["classes"].split("-"))
            parent[find(i)] = find(j)
    return len({find(k) for k in classes})
