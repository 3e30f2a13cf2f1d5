"""All the cells in ``OUT/cells`` merged into one leaderboard: ``leaderboard.json`` (every record),
``leaderboard.md`` (one table per dataset, the oracle's row first; the perf suite's table when ``perf.json`` is
there) and ``report.html`` (the tables plus accuracy-vs-SNR and accuracy-vs-time plots, self-contained)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..analysis.report import STYLE, html_escape, html_image, html_table


def load_cells(out: Path) -> list[dict]:
    """Every cell record under ``out/cells`` (sorted by dataset, then tomohet before peers, then name)."""
    cells = [json.loads(p.read_text()) for p in sorted((Path(out) / "cells").glob("*.json"))]
    return sorted(cells, key=lambda c: (c["dataset"]["name"], c["kind"] != "tomohet", c["method"]))


def headline(cell: dict) -> tuple[str, float | None, float | None]:
    """The figure a cell is ranked by: (metric name, value, oracle's value) - ARI on discrete datasets, best
    top-3 |rho| on continuous ones."""
    s = cell.get("scores") or {}
    if cell["dataset"]["kind"] == "discrete":
        return "ARI", s.get("ari"), s.get("oracle_ari")
    return "abs(rho)", s.get("spearman_abs"), s.get("oracle_spearman_abs")


def family(ds: dict) -> str:
    """The preset and its acquisition changes, e.g. ``ladder (tilt_max 40.0)``: datasets of one family differ only
    in SNR (one line of the accuracy-vs-SNR plot)."""
    changes = ", ".join(f"{k} {v}" for k, v in (ds.get("acquisition") or {}).items())
    return (ds.get("preset") or str(ds.get("path"))) + (f" ({changes})" if changes else "")


def _f(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def table_rows(cells: list[dict]) -> dict[str, list[dict]]:
    """Per dataset: its rows (the oracle first), as display strings."""
    out: dict[str, list[dict]] = {}
    for c in cells:
        ds = c["dataset"]
        rows = out.setdefault(ds["name"], [])
        metric, value, oracle = headline(c)
        s = c.get("scores") or {}
        if not rows and oracle is not None:
            rows.append({"method": "oracle (true maps)", metric: _f(oracle)})
            if "oracle_rare_state_f1" in s:
                rows[0].update({"gap to oracle": "", "rare-state F1": _f(s["oracle_rare_state_f1"])})
        row = {"method": c["method"] + ("" if c["kind"] == "tomohet" else " (peer)"), metric: _f(value),
               "gap to oracle": _f(oracle - value) if value is not None and oracle is not None else "-"}  # fmt: skip
        if ds["kind"] == "discrete":
            row.update({"rare-state F1": _f(s.get("rare_state_f1")), "pop. error": _f(s.get("population_error")),
                        "class-map FSC AUC": _f(s.get("class_map_fsc_auc_mean"))})  # fmt: skip
        status = c["status"] if c["status"] == "ok" else f"{c['status']}: {c.get('reason', '')}"[:160]
        row.update({"wall s": _f(c.get("wall_s"), 0), "CPU s": _f(c.get("cpu_s"), 0),
                    "peak MB": _f(c.get("peak_rss_mb"), 0), "images/s": _f(c.get("images_per_s"), 0),
                    "status": status})  # fmt: skip
        rows.append(row)
    return out


def markdown(cells: list[dict]) -> str:
    lines = []
    by_name = {c["dataset"]["name"]: c["dataset"] for c in cells}
    for name, rows in table_rows(cells).items():
        ds = by_name[name]
        snr = ds.get("measured_snr")
        lines.append(f"### {name}: {family(ds)}, {ds['n_particles']} particles, "
                     f"{ds['kind']}" + (f", K={ds['classes']}" if ds.get("classes") else "")
                     + (f", SNR {snr:.3g}" if snr else ""))  # fmt: skip
        cols = list(dict.fromkeys(k for r in rows for k in r))
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for r in rows:
            lines.append("| " + " | ".join(str(r.get(k, "")).replace("|", "/") for k in cols) + " |")
        lines.append("")
    return "\n".join(lines)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _plots(cells: list[dict], folder: Path) -> list[tuple[Path, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [c for c in cells if c["status"] == "ok" and headline(c)[1] is not None]
    figures = []
    # accuracy vs SNR: one line per method per preset, the oracle dashed
    series: dict[tuple[str, str], list[tuple[float, float]]] = {}
    oracle: dict[str, list[tuple[float, float]]] = {}
    for c in ok:
        ds = c["dataset"]
        snr, (_, value, orc) = ds.get("measured_snr"), headline(c)
        if not snr or not ds.get("preset"):
            continue
        series.setdefault((family(ds), c["method"]), []).append((snr, value))
        if orc is not None:
            oracle.setdefault(family(ds), []).append((snr, orc))
    presets = sorted({p for p, _ in series})
    if presets:
        fig, axes = plt.subplots(1, len(presets), figsize=(4.2 * len(presets), 3.6), squeeze=False)
        for ax, preset in zip(axes[0], presets, strict=True):
            for (p, method), pts in sorted(series.items()):
                if p == preset:
                    pts = sorted(set(pts))
                    ax.plot(*zip(*pts, strict=True), "o-", label=method)
            if preset in oracle:
                ax.plot(*zip(*sorted(set(oracle[preset])), strict=True), "k--", label="oracle")
            ax.set_xscale("log")
            ax.set_xlabel("per-image SNR")
            first = next(c for c in ok if family(c["dataset"]) == preset)
            ax.set_ylabel("ARI" if first["dataset"]["kind"] == "discrete" else "|rho|")
            ax.set_title(preset)
            ax.legend(fontsize=7)
        figures.append((_save(fig, folder / "accuracy_vs_snr.png"),
                        "Accuracy against per-image SNR (one point per dataset; the oracle dashed)"))  # fmt: skip
    if ok:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        methods = sorted({c["method"] for c in ok})
        for m in methods:
            pts = [(c["wall_s"], headline(c)[1]) for c in ok if c["method"] == m]
            peer = any(c["kind"] == "peer" for c in ok if c["method"] == m)
            ax.scatter(*zip(*pts, strict=True), label=m + (" (peer)" if peer else ""), marker="x" if peer else "o")
        ax.set_xscale("log")
        ax.set_xlabel("wall time (s, log)")
        ax.set_ylabel("ARI (discrete) or |rho| (continuous)")
        ax.legend(fontsize=7)
        caption = "Accuracy against wall time, every cell (peers as crosses; up and left is better)"
        figures.append((_save(fig, folder / "accuracy_vs_time.png"), caption))
    return figures


def write_leaderboard(out: Path) -> dict[str, Path]:
    """Write ``leaderboard.json``, ``leaderboard.md`` and ``report.html`` from every cell in ``out``."""
    out = Path(out)
    cells = load_cells(out)
    (out / "leaderboard.json").write_text(json.dumps({"written": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                      "cells": cells}, indent=1, default=float))  # fmt: skip
    md = markdown(cells)
    machines = sorted({f"{c['machine']['cpu']}, {c['machine']['cpus']} CPUs, {c['threads']} threads" for c in cells})
    header = f"# tomohet benchmark\n\nWritten {time.strftime('%Y-%m-%d')}; machine: {'; '.join(machines)}.\n\n"
    perf = out / "perf.json"
    perf_rows = json.loads(perf.read_text())["records"] if perf.exists() else []
    if perf_rows:  # the perf suite's table (written by tomohet.benchmark.perf) follows the datasets
        md += "\n### Core operations (`--suite perf`)\n" + (out / "perf.md").read_text()
    (out / "leaderboard.md").write_text(header + md)
    figures = _plots(cells, out)
    by_name = {c["dataset"]["name"]: c["dataset"] for c in cells}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>tomohet benchmark</title>"
             f"<style>{STYLE}</style></head><body><h1>tomohet benchmark</h1>",
             f"<p class='meta'>Written {html_escape(time.strftime('%Y-%m-%d %H:%M'))}; "
             f"{html_escape('; '.join(machines))}. Every figure is next to the oracle (true maps, true noise); "
             "wall time, CPU time and peak memory are of each method's own process, measured the same way for "
             "tomohet and the peers.</p>"]  # fmt: skip
    for path, caption in figures:
        parts.append(f"<figure>{html_image(path)}<figcaption>{html_escape(caption)}</figcaption></figure>")
    for name, rows in table_rows(cells).items():
        ds = by_name[name]
        parts.append(f"<h2>{html_escape(name)}</h2><p class='meta'>{html_escape(family(ds))}"
                     f", {ds['n_particles']} particles, {html_escape(ds['kind'])}</p>{html_table(rows)}")  # fmt: skip
    if perf_rows:
        keys = ("operation", "box", "images_per_s", "seconds", "images", "peak_rss_mb", "status")
        parts.append("<h2>Core operations (--suite perf)</h2>" + html_table([{k: r.get(k, "-") for k in keys}
                                                                             for r in perf_rows]))  # fmt: skip
    commands = [{"dataset": c["dataset"]["name"], "method": c["method"], "command": c.get("command", "-"),
                 "version": c.get("version", c["machine"].get("tomohet"))} for c in cells]  # fmt: skip
    parts.append(f"<h2>Commands</h2>{html_table(commands)}</body></html>")
    (out / "report.html").write_text("\n".join(parts))
    return {"json": out / "leaderboard.json", "markdown": out / "leaderboard.md", "html": out / "report.html"}
