"""The shape every method returns: the CLI, the benchmark runner and the report consume only this."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class Result:
    """Output of a heterogeneity method.

    ``labels`` ``[N]`` (0-based class per particle) and ``posteriors`` ``[N, K]`` for discrete methods;
    ``latents`` ``[N, L]`` for continuous ones; ``volumes`` ``[K, D, D, D]`` (class maps or maps along the
    landscape) at ``pixel_size`` Angstrom; ``log`` one dict per iteration; ``extra`` method-specific arrays
    (e.g. per-particle consistency)."""

    method: str
    options: dict[str, Any]
    labels: np.ndarray | None = None
    posteriors: np.ndarray | None = None
    latents: np.ndarray | None = None
    volumes: torch.Tensor | None = None
    pixel_size: float = 1.0
    log: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return 0 if self.posteriors is None else int(self.posteriors.shape[1])

    def particle_columns(self) -> dict[str, np.ndarray]:
        """Per-particle columns for ``particles.star`` (RELION labels where RELION has one): the 1-based class
        ``rlnClassNumber``, its posterior ``rlnMaxValueProbDistribution``, and ``tomohetConsistency`` (fraction
        of independent runs agreeing) when the method made several runs."""
        cols: dict[str, np.ndarray] = {}
        if self.labels is not None:
            cols["rlnClassNumber"] = np.asarray(self.labels) + 1
        if self.posteriors is not None:
            cols["rlnMaxValueProbDistribution"] = np.asarray(self.posteriors).max(1)
        if "consistency" in self.extra:
            cols["tomohetConsistency"] = np.asarray(self.extra["consistency"])
        return cols

    def diagnostics(self) -> dict[str, Any]:
        """JSON-ready scalars, short lists and short dicts of scalars of ``extra`` (timings, band, sizes, the
        starts' log-likelihoods) for ``result.json``; arrays longer than 64 values are left out."""
        out: dict[str, Any] = {}
        for key, value in self.extra.items():
            if isinstance(value, (int, float, str, bool)) or value is None:
                out[key] = value
            elif isinstance(value, torch.Tensor) and value.numel() <= 64:
                out[key] = value.tolist()
            elif isinstance(value, (list, tuple, np.ndarray)) and np.size(value) <= 64:
                out[key] = np.asarray(value).tolist()
            elif (
                isinstance(value, dict)
                and len(value) <= 64
                and all(isinstance(v, (int, float, str, bool)) for v in value.values())
            ):  # e.g. each start's log-likelihood
                out[key] = {str(k): v for k, v in value.items()}
        return out
