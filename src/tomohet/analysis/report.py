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

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1100px;
padding:1.2em 2em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
h3{margin-top:1.4em;color:#333} table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left} th{background:#f3f3f3}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee} figcaption{font-size:.85em;color:#555}
.meta{color:#666;font-size:.85em} .note{background:#fff8e1;border-left:4px solid #f0c040;padding:.4em .8em}
code{background:#f5f5f5;padding:0 .25em}
"""


def html_escape(x) -> str:
    return html.escape(str(x))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1e4 else f"{v:.4g}"
    return str(v)


def html_table(rows: list[dict]) -> str:
    if not rows:
        return "<p>(none)</p>"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html_escape(c)}</th>" for c in cols)
    cells = ("".join(f"<td>{html_escape(_fmt(r.get(c, '')))}</td>" for c in cols) for r in rows)
    body = "".join(f"<tr>{c}</tr>" for c in cells)
    return f"<table><tr>{head}</tr>{body}</table>"


def html_image(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html_escape(Path(path).name)}">'


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
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html_escape(title)}</title>",
             f"<style>{STYLE}</style></head><body>", f"<h1>{html_escape(title)}</h1>",
             f"<p class='meta'>written {now} on {html_escape(platform.node())} ({html_escape(platform.machine())}, "
             f"{os.cpu_count()} CPUs)</p>"]  # fmt: skip
    if intro:
        parts.append(f"<p>{html_escape(intro)}</p>")
    parts += ["<h2 id='comparison'>Runs side by side</h2>", html_table([headline(a) for a in runs])]
    for i, a in enumerate(runs):
        parts.append(f"<h2 id='run-{i}'>{html_escape(a.name)}: {html_escape(a.summary.get('command'))} "
                     f"({html_escape(a.summary.get('method'))})</h2>")  # fmt: skip
        s = a.summary
        facts = {"input": s.get("input"), "seed": s.get("seed"), "peak memory (MB)": s.get("peak_memory_mb"),
                 "images/s per iteration": s.get("images_per_s_per_iteration"),
                 "consensus resolution (Å)": s.get("consensus_resolution_A"),
                 "classes supported by distinct maps": s.get("classes supported by distinct maps"),
                 **{f"time: {k} (s)": v for k, v in s.get("timings_s", {}).items()}}  # fmt: skip
        facts = [{"": k, "value": v} for k, v in facts.items() if v is not None]
        parts += ["<h3>Run</h3>", html_table(facts)]
        rows = _metric_rows(a.metrics)
        if rows:
            parts += ["<h3>Against the ground truth</h3>",
                      "<p>The oracle assigns each particle with the true maps and noise: the best any method can "
                      "do on these data.</p>", html_table(rows)]  # fmt: skip
        for name, trows in a.tables.items():
            parts += [f"<h3>{html_escape(name)}</h3>", html_table(trows)]
        if a.figures:
            parts.append("<h3>Figures</h3>")
        for caption, fig in a.figures:
            parts.append(f"<figure>{html_image(fig)}<figcaption>{html_escape(caption)}</figcaption></figure>")
        if a.files:
            rel = [(label, html_escape(os.path.relpath(f, path.parent))) for label, f in a.files]
            items = "".join(f"<li>{html_escape(label)}: <a href='{r}'>{r}</a></li>" for label, r in rel)
            parts += ["<h3>Files for the next step</h3>", f"<ul>{items}</ul>"]
        for note in a.notes:
            parts.append(f"<p class='note'>{html_escape(note)}</p>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
