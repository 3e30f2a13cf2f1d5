"""``tomohet analyze RUN_DIR [RUN_DIR ...]``: figures, in-situ views, spatial statistics, ChimeraX scenes and one
self-contained HTML report for finished runs (any method), from their run folders alone."""

from __future__ import annotations

from pathlib import Path

from ..analysis.analyze import analyze_run
from ..analysis.report import headline, write_report
from ..analysis.selection import select_classes, select_latent_region
from ..errors import InputError
from .runlog import Run


def run_analyze(run_dirs: list[Path], out: Path | None = None, shuffles: int = 199, seed: int = 0,
                select: list[int] | None = None, select_latent: str | None = None, paths: list[str] | None = None,
                min_confidence: float | None = None, title: str | None = None, intro: str = "") -> Path:  # fmt: skip
    """Analyse ``run_dirs`` into ``out`` (default: ``RUN_DIR/analysis`` for one run) and write ``report.html``
    there; with ``select`` (class numbers), ``min_confidence`` (consistency or posterior, alone or with ``select``)
    or ``select_latent`` (a latent region, ``"z0>1.5,z1<0"``), one run only, also those particles as the next
    job's input (``selected_*``); ``paths`` (``"c1:c3"``, ``"z0=-2:z0=2"``): maps
    along latent paths of a linear landscape. Returns the report's path."""
    if not run_dirs:
        raise InputError(Path("."), "give at least one run folder")
    for r in run_dirs:
        if not Path(r).is_dir():
            raise InputError(Path(r), "not a folder (give the --out folder of a classify or landscape run)")
    if out is None:
        if len(run_dirs) > 1:
            raise InputError(Path(run_dirs[0]), "several runs need --out for the shared report")
        out = Path(run_dirs[0]) / "analysis"
    if (select or select_latent or paths or min_confidence is not None) and len(run_dirs) > 1:
        raise InputError(Path(run_dirs[0]), "--select, --min-confidence, --select-latent and --path work on one run "
                                            "at a time")  # fmt: skip
    if (select or min_confidence is not None) and select_latent:
        raise InputError(Path(run_dirs[0]), "give --select/--min-confidence or --select-latent, not both")
    names = [Path(r).resolve().name for r in run_dirs]
    if len(set(names)) < len(names):  # a/classify and b/classify: number the runs
        names = [f"{i + 1}_{n}" for i, n in enumerate(names)]
    options = {"runs": [str(r) for r in run_dirs], "shuffles": shuffles, "seed": seed, "select": select,
               "select_latent": select_latent, "paths": paths, "min_confidence": min_confidence}  # fmt: skip
    with Run(out, "analyze", options) as run:
        analyses = []
        for r, name in zip(run_dirs, names, strict=True):
            sub = run.out if len(run_dirs) == 1 else run.out / name
            with run.timed(f"analyze {name}"):
                analyses.append(analyze_run(r, sub, n_shuffles=shuffles, seed=seed, paths=paths))
                analyses[-1].name = name
            run.log.info("analysed %s", r)
        selection = {}
        if select or select_latent or min_confidence is not None:
            if not select_latent:
                selection = select_classes(Path(run_dirs[0]), select, run.out, min_confidence=min_confidence)
                what = f"selected classes {selection['classes']}" + (
                    f" with {selection['confidence']} >= {min_confidence}" if min_confidence is not None else ""
                )
            else:
                selection = select_latent_region(Path(run_dirs[0]), select_latent, run.out)
                what = f"selected latent region {select_latent}"
            analyses[0].files.insert(0, (f"{what} ({selection['n']} particles)", Path(selection["particles"])))
            run.log.info("%s: %d particles -> %s", what, selection["n"], selection["particles"])
        report = write_report(run.out / "report.html", analyses, title or f"tomohet report: {', '.join(names)}", intro)
        run.log.info("report: %s", report)
        tables = {a.name: {**a.tables, "summary": a.summary} for a in analyses}
        run.finish("analyze", seed, report=str(report), runs=[headline(a) for a in analyses],
                   selection=selection or None, tables=tables)  # fmt: skip
    return report
