"""A self-contained HTML report of one or more analysed runs: it opens offline (every image embedded as a data
URI, the style inline, no script, no network request) and reads top to bottom: the comparison of the runs
with the oracle, then per run its summary, metrics, figures, tables and the files to take further."""

from __future__ import annotations

import base64
import datetime
import html
import os
import platform
from pathlib import Path

from .analyze import RunAnalysis

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1100px;
padding:1.2em 2em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
h3{margin-top:1.4em;color:#333} table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left} th{background:#f3f3f3}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee} figcaption{font-size:.85em;color:#555}
.meta{color:#666;font-size:.85em} .note{background:#fff8e1;border-left:4px solid #f0c040;padding:.4em .8em}
code{background:#f5f5f5;padding:0 .25em}
"""


def _esc(x) -> str:
    return html.escape(str(x))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1e4 else f"{v:.4g}"
    return str(v)


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p>(none)</p>"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_esc(_fmt(r.get(c, '')))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _image(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{_esc(Path(path).name)}">'


def _metric_rows(metrics: dict) -> list[dict]:
    """One row per scored output (method, clusters, oracle...) with its headline figures."""
    rows = []
    for name, m in metrics.items():
        if not isinstance(m, dict):
            continue
        row = {"scored": name.replace("_", " ")}
        for key in ("ari", "nmi", "accuracy", "rarest_state_f1", "best_abs_spearman", "n_classes"):
            if key in m and m[key] is not None:
                row[key.replace("_", " ")] = m[key]
        if "population_error" in m:
            row["mean population error"] = m["population_error"].get("mean_abs")
        if len(row) > 1:
            rows.append(row)
    return rows


def headline(ana: RunAnalysis) -> dict:
    """The run's line in the comparison table: its main ARI beside the oracle's."""
    m = ana.metrics
    main = m.get("method") or m.get("clusters_kmeans") or {}
    oracle = m.get("oracle") or m.get("oracle_discrete") or {}
    t = ana.summary.get("timings_s", {})
    mem = ana.summary.get("peak_memory_mb", "n/a")
    return {"run": ana.name, "command": ana.summary.get("command"), "method": ana.summary.get("method"),
            "ARI": main.get("ari", "n/a"), "oracle ARI": oracle.get("ari", "n/a"),
            "classes with distinct maps": ana.summary.get("classes supported by distinct maps", "n/a"),
            "wall time (s)": t.get("total", "n/a"), "peak memory (MB)": mem}  # fmt: skip


def write_report(path: Path, runs: list[RunAnalysis], title: str = "tomohet report", intro: str = "") -> Path:
    """Write the HTML report of ``runs`` to ``path`` (links to files are relative to it)."""
    path = Path(path)
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>",
             f"<style>{_STYLE}</style></head><body>", f"<h1>{_esc(title)}</h1>",
             f"<p class='meta'>written {now} on {_esc(platform.node())} ({_esc(platform.machine())}, "
             f"{os.cpu_count()} CPUs)</p>"]  # fmt: skip
    if intro:
        parts.append(f"<p>{_esc(intro)}</p>")
    parts += ["<h2 id='comparison'>Runs side by side</h2>", _table([headline(a) for a in runs])]
    for i, a in enumerate(runs):
        parts.append(f"<h2 id='run-{i}'>{_esc(a.name)}: {_esc(a.summary.get('command'))} "
                     f"({_esc(a.summary.get('method'))})</h2>")  # fmt: skip
        s = a.summary
        facts = {"input": s.get("input"), "seed": s.get("seed"), "peak memory (MB)": s.get("peak_memory_mb"),
                 "images/s per iteration": s.get("images_per_s_per_iteration"),
                 "consensus resolution (Å)": s.get("consensus_resolution_A"),
                 "classes supported by distinct maps": s.get("classes supported by distinct maps"),
                 **{f"time: {k} (s)": v for k, v in s.get("timings_s", {}).items()}}  # fmt: skip
        facts = [{"": k, "value": v} for k, v in facts.items() if v is not None]
        parts += ["<h3>Run</h3>", _table(facts)]
        rows = _metric_rows(a.metrics)
        if rows:
            parts += ["<h3>Against the ground truth</h3>",
                      "<p>The oracle assigns each particle with the true maps and noise: the best any method can "
                      "do on these data.</p>", _table(rows)]  # fmt: skip
        for name, trows in a.tables.items():
            parts += [f"<h3>{_esc(name)}</h3>", _table(trows)]
        if a.figures:
            parts.append("<h3>Figures</h3>")
        for caption, fig in a.figures:
            parts.append(f"<figure>{_image(fig)}<figcaption>{_esc(caption)}</figcaption></figure>")
        if a.files:
            items = "".join(f"<li>{_esc(label)}: <a href='{_esc(os.path.relpath(f, path.parent))}'>"
                            f"{_esc(os.path.relpath(f, path.parent))}</a></li>" for label, f in a.files)  # fmt: skip
            parts += ["<h3>Files for the next step</h3>", f"<ul>{items}</ul>"]
        for note in a.notes:
            parts.append(f"<p class='note'>{_esc(note)}</p>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
