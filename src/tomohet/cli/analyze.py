"""``tomohet analyze RUN_DIR [RUN_DIR ...]``: figures, in-situ views, spatial statistics, ChimeraX scenes and one
self-contained HTML report for finished runs (any method), from their run folders alone."""

from __future__ import annotations

from pathlib import Path

from ..analysis.analyze import analyze_run
from ..analysis.report import headline, write_report
from ..analysis.selection import select_classes
from ..errors import InputError
from .runlog import Run


def run_analyze(run_dirs: list[Path], out: Path | None = None, shuffles: int = 199, seed: int = 0,
                select: list[int] | None = None, title: str | None = None, intro: str = "") -> Path:  # fmt: skip
    """Analyse ``run_dirs`` into ``out`` (default: ``RUN_DIR/analysis`` for one run) and write ``report.html``
    there; with ``select`` (class numbers, one run only) also the particles of those classes as the next job's
    input (``selected_*``). Returns the report's path."""
    if not run_dirs:
        raise InputError(Path("."), "give at least one run folder")
    for r in run_dirs:
        if not Path(r).is_dir():
            raise InputError(Path(r), "not a folder (give the --out folder of a classify or landscape run)")
    if out is None:
        if len(run_dirs) > 1:
            raise InputError(Path(run_dirs[0]), "several runs need --out for the shared report")
        out = Path(run_dirs[0]) / "analysis"
    if select and len(run_dirs) > 1:
        raise InputError(Path(run_dirs[0]), "--select works on one run at a time")
    names = [Path(r).resolve().name for r in run_dirs]
    with Run(out, "analyze", {"runs": [str(r) for r in run_dirs], "shuffles": shuffles, "seed": seed}) as run:
        analyses = []
        for r, name in zip(run_dirs, names, strict=True):
            sub = run.out if len(run_dirs) == 1 else run.out / name
            with run.timed(f"analyze {name}"):
                analyses.append(analyze_run(r, sub, n_shuffles=shuffles, seed=seed))
            run.log.info("analysed %s", r)
        selection = {}
        if select:
            selection = select_classes(Path(run_dirs[0]), select, run.out)
            analyses[0].files.insert(0, (f"selected classes {selection['classes']} ({selection['n']} particles)",
                                         Path(selection["particles"])))  # fmt: skip
            run.log.info("selected classes %s: %d particles -> %s", selection["classes"], selection["n"],
                         selection["particles"])  # fmt: skip
        report = write_report(run.out / "report.html", analyses, title or f"tomohet report: {', '.join(names)}", intro)
        run.log.info("report: %s", report)
        run.finish("analyze", seed, report=str(report), runs=[headline(a) for a in analyses],
                   selection=selection or None)  # fmt: skip
    return report
