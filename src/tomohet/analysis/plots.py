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


def plot_state_gallery(path: Path, volumes: dict[str, np.ndarray]) -> Path:
    """One row per map: central z, y, x sections and the projections along z, y, x, on a shared grey scale
    per map (sections) and per map (projections)."""
    n = len(volumes)
    fig, axes = plt.subplots(n, 6, figsize=(9.6, 1.7 * n + 0.4), dpi=100, squeeze=False)
    for row, (name, v) in enumerate(volumes.items()):
        d = v.shape[0] // 2
        panels = [v[d], v[:, d], v[:, :, d], v.sum(0), v.sum(1), v.sum(2)]
        titles = ["section z", "section y", "section x", "projection z", "projection y", "projection x"]
        for col, (img, t) in enumerate(zip(panels, titles, strict=True)):
            ax = axes[row, col]
            ax.imshow(img, cmap="gray", origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(t, fontsize=8)
        axes[row, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_convergence(path: Path, iterations: list[dict]) -> Path:
    """Log-likelihood (relative to the last iteration) and the fraction of particles that moved, per iteration."""
    it = [e.get("iteration", i + 1) for i, e in enumerate(iterations)]
    ll = np.array([e.get("log_likelihood", np.nan) for e in iterations], dtype=float)
    ch = np.array([e.get("changes", np.nan) for e in iterations], dtype=float)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.5, 3.0), dpi=110)
    a1.plot(it, ll - ll[-1], "o-", ms=3)
    a1.set_xlabel("iteration")
    a1.set_ylabel("log-likelihood − final")
    a1.set_title("convergence", fontsize=9)
    a2.plot(it, ch, "o-", ms=3, color="C1")
    a2.set_xlabel("iteration")
    a2.set_ylabel("fraction of particles moved")
    a2.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_class_scan(path: Path, rows: list[dict], best: int) -> Path:
    """Held-out (two-fold cross-validated) and fit log-likelihood per number of classes, each relative to its value
    at the smallest K; the chosen K marked."""
    ks = np.array([r["classes"] for r in rows])
    held = np.array([r["heldout_log_likelihood"] for r in rows], dtype=float)
    fit = np.array([r["fit_log_likelihood"] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    ax.plot(ks, held - held[0], "o-", label="held-out (cross-validated)", lw=1.8)
    ax.plot(ks, fit - fit[0], "s--", label="fit (flatters every added class)", lw=1.2, color="grey")
    ax.axvline(best, color="C3", ls=":", lw=1.2, label=f"chosen K = {best}")
    ax.set_xlabel("number of classes K")
    ax.set_ylabel(f"log-likelihood − value at K = {ks[0]}")
    ax.set_xticks(ks)
    ax.set_title("how many classes the data support", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_embedding(path: Path, xy: np.ndarray, colourings: dict[str, tuple[np.ndarray, bool]], title: str) -> Path:
    """A 2D embedding drawn once per colouring: ``{name: (values, categorical)}``."""
    n = len(colourings)
    ncol = min(n, 3)
    nrow = -(-n // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.3 * nrow), dpi=100, squeeze=False)
    for ax in axes.reshape(-1)[n:]:
        ax.axis("off")
    for ax, (name, (vals, categorical)) in zip(axes.reshape(-1), colourings.items(), strict=False):
        if categorical:
            cats = list(dict.fromkeys(np.asarray(vals).tolist()))
            for i, c in enumerate(sorted(cats, key=str)):
                sel = np.asarray(vals) == c
                ax.scatter(xy[sel, 0], xy[sel, 1], s=5, color=f"C{i % 10}", label=str(c), alpha=0.7, edgecolors="none")
            if len(cats) <= 10:
                ax.legend(fontsize=6, markerscale=2, loc="best")
        else:
            sc = ax.scatter(xy[:, 0], xy[:, 1], s=5, c=vals, cmap="viridis", alpha=0.8, edgecolors="none")
            fig.colorbar(sc, ax=ax, fraction=0.046)
        ax.set_title(f"coloured by {name}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
