"""Figures written next to results (matplotlib, Agg backend: no screen needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_fsc(path: Path, frequencies: np.ndarray, curves: dict[str, np.ndarray], resolution: float | None) -> Path:
    """FSC curves against spatial frequency (1/A) with the 0.143 and 0.5 thresholds."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for label, c in curves.items():
        ax.plot(frequencies[1:], c[1:], label=label, lw=1.8)
    ax.axhline(0.143, color="grey", ls="--", lw=0.8)
    ax.axhline(0.5, color="grey", ls=":", lw=0.8)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.02)
    title = "Fourier shell correlation"
    if resolution:
        title += f" — {resolution:.1f} Å at 0.143"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_central_slices(path: Path, volume: np.ndarray, title: str = "") -> Path:
    """Central z, y and x sections of a volume side by side."""
    d = volume.shape[0] // 2
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8), dpi=120)
    for ax, sl, name in zip(axes, (volume[d], volume[:, d], volume[:, :, d]), ("z", "y", "x"), strict=True):
        ax.imshow(sl, cmap="gray", origin="lower")
        ax.set_title(f"central {name} section", fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
