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
