"""``tomohet``: the command line. Each subcommand writes into its ``--out`` folder (see the README)."""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.markup import escape

from ..errors import InputError
from .options import check_classify, check_simulate
from .runlog import console

PIXEL_SIZE_HELP = "pixel size of the particle images (A), overriding the one in the star file"
# the prior of a local pose search (classify, refine, landscape)
SIGMA_ANGLES = typer.Option(None, help="prior width (degrees per axis) of the pose deviation (default: estimated)")
SIGMA_SHIFTS = typer.Option(None, help="prior width (pixels per axis) of the centre deviation (default: estimated)")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="tomohet: structural heterogeneity in cryo-ET (2D tilt-series stacks and subtomograms).",
)


def _fail(message: str) -> None:
    """One line ``error: ...`` on stderr, exit code 2."""
    console.print(f"[bold red]error:[/] {escape(' '.join(message.split()))}", soft_wrap=True, highlight=False)
    raise typer.Exit(2)


def _os_error(exc: OSError, out: Path | None) -> str:
    """What went wrong with a file, naming it (or the ``--out`` folder where the system did not say which)."""
    what = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        what = "no space left on device"
    if exc.filename is not None:
        where = str(exc.filename) + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
        return f"{where}: {what}"
    if out is not None:
        return f"{out}: {what} (while writing into this folder)"
    return what


@contextmanager
def _user_errors(out: Path | None = None):
    """Bad input (:class:`InputError`) and failed file operations (a full disk, a vanished file) end with one
    ``error:`` line naming the file or the option, not a traceback (``TOMOHET_DEBUG=1`` shows the traceback)."""
    try:
        yield
    except InputError as exc:
        if os.environ.get("TOMOHET_DEBUG"):
            raise
        _fail(str(exc))
    except OSError as exc:
        if os.environ.get("TOMOHET_DEBUG"):
            raise
        _fail(_os_error(exc, out))


@app.command()
def reconstruct(
    input: Path = typer.Argument(..., help="optimisation set, RELION 5 particles star or Warp v1 image-series star"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder"),
    tomograms: Path | None = typer.Option(None, help="tomograms star (if INPUT is a bare particles star)"),
    oversampling: int = typer.Option(2, help="Fourier padding factor for insertion"),
    batch_size: int = typer.Option(8, help="particles per batch (memory grows with it)"),
    flip_hand: bool = typer.Option(False, "--flip-hand", help="mirror the map (opposite handedness)"),
    invert_contrast: bool = typer.Option(False, "--invert-contrast", help="images have dark particles"),
    pixel_size: float | None = typer.Option(None, help=PIXEL_SIZE_HELP),
) -> None:
    """Homogeneous reconstruction: half maps, FSC (CSV + PNG), Wiener-filtered map, result.json."""
    with _user_errors(out):
        from .reconstruct import run_reconstruct

        run_reconstruct(input, out, tomograms, oversampling, batch_size, flip_hand, invert_contrast,
                        pixel_size=pixel_size)  # fmt: skip


@app.command()
def simulate(
    preset: str = typer.Option("smoke", help="dataset preset (see --list-presets)"),
    out: Path | None = typer.Option(None, "--out", "-o", help="output folder"),
    seed: int = typer.Option(0, help="random seed: the same seed gives identical files"),
    n_particles: int | None = typer.Option(None, help="override the preset's particle count"),
    snr: float | None = typer.Option(None, help="override the preset's per-image SNR"),
    premultiplied: bool = typer.Option(False, "--premultiplied", help="write CTF-premultiplied stacks (WarpTools)"),
    structured_noise: float = typer.Option(0.0, help="fraction of the noise variance with a 1/|k| spectrum"),
    missing_tilts: float = typer.Option(0.0, help="fraction of particles that lose their highest tilts"),
    pose_error_deg: float = typer.Option(
        0.0, help="written poses differ from the true ones by N(0, this) degrees about a random axis"
    ),
    shift_error_px: float = typer.Option(
        0.0, help="written particle centres differ from the true ones by N(0, this) pixels per axis"
    ),
    tilt_shift_error_px: float = typer.Option(
        0.0, help="each tilt image's alignment is off by N(0, this) pixels in x and y (tilt_shifts_truth.csv)"
    ),
    scheme: str | None = typer.Option(
        None, help="tilt order: dose-symmetric, bidirectional or unidirectional (default: the preset's)"
    ),
    warp_v1: bool = typer.Option(False, "--warp-v1", help="also write a Warp v1 image-series star"),
    subtomograms: bool = typer.Option(False, "--subtomograms", help="also write RELION 3.1 subtomograms"),
    list_presets: bool = typer.Option(False, "--list-presets", help="list the presets and exit"),
) -> None:
    """Write a benchmark dataset with per-particle ground truth (RELION 5 / WarpTools layout)."""
    from ..simulate.acquisition import SCHEMES
    from ..simulate.datasets import PRESETS

    if list_presets:
        for p in PRESETS.values():
            console.print(f"[bold]{p.name:<18}[/] {p.description}")
        return
    if out is None:
        _fail("--out is required")
    with _user_errors(out):
        check_simulate(n_particles, snr, structured_noise, missing_tilts, pose_error_deg, shift_error_px,
                       tilt_shift_error_px)  # fmt: skip
        from .simulate import run_simulate

        extra = {"ctf_premultiplied": premultiplied, "structured_noise": structured_noise,
                 "missing_high_tilt_fraction": missing_tilts, "pose_error_deg": pose_error_deg,
                 "shift_error_px": shift_error_px, "tilt_shift_error_px": tilt_shift_error_px}  # fmt: skip
        if scheme is not None:
            if scheme not in SCHEMES:
                _fail(f"--scheme must be one of {', '.join(SCHEMES)} (got {scheme!r})")
            extra["scheme"] = scheme
        run_simulate(preset, out, seed, n_particles, snr, extra, warp_v1, subtomograms)


def _torchrun_executor(command: str, workers: int, scheduler: str | None):
    """Under ``torchrun`` (more than one process): the executor of its processes, started now (every process
    must know its rank before any file is written); None otherwise."""
    from ..parallel import in_torchrun

    if not in_torchrun():
        return None
    if command != "landscape":
        _fail(f"`tomohet {command}` does not run under torchrun; use --workers or --scheduler (Dask)")
    if workers or scheduler:
        _fail("--workers / --scheduler (Dask) cannot be combined with torchrun")
    from ..parallel import TorchDistributedExecutor

    return TorchDistributedExecutor()


def _executor(workers: int, scheduler: str | None, slurm: str | None):
    """A Dask executor when asked for one (``tomohet.parallel``), else None (this process)."""
    if not (workers or scheduler or slurm):
        return None
    from ..parallel import DaskExecutor

    settings = None
    if slurm:
        settings = {}
        for item in slurm.split(","):
            key, _, value = item.partition("=")
            settings[key.strip()] = int(value) if value.strip().isdigit() else value.strip()
    return DaskExecutor(address=scheduler, n_workers=workers or None, slurm=settings)


@app.command()
def classify(
    input: Path = typer.Argument(
        ...,
        help="optimisation set, RELION 5 particles star, Warp v1 image-series star, or RELION 3.1/4 subtomogram "
        "star (3D; --method em3d)",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="output folder (resumes from its checkpoint)"),
    classes: int = typer.Option(4, "--classes", "-K", help="number of classes"),
    scan_classes: str | None = typer.Option(
        None,
        help="choose the number of classes: for each K of a range (e.g. 1-6), EM on each half of the particles "
        "scores the other half (two-fold cross-validation); the best K is then run on all particles and is the "
        "result (em; replaces -K)",
    ),
    method: str = typer.Option(
        "em",
        help="em or em2d (EM on 2D stacks), em3d (EM on subtomograms: given, or made from the stacks), hillclimb "
        "(annealed)",
    ),
    runs: int = typer.Option(3, help="independent runs for hillclimb (consistency across runs)"),
    iterations: int = typer.Option(12, help="maximum EM iterations"),
    init: str = typer.Option(
        "pca", help="initialisation: pca (difference PCA + k-means), ppca (tilt-space PPCA + k-means; em2d), random"
    ),
    maps: list[Path] | None = typer.Option(None, "--map", help="initial class maps (repeat; sets the classes)"),
    focus_mask: Path | None = typer.Option(None, help="mask (MRC, 0..1) for focused classification"),
    seed: int = typer.Option(0, help="random seed"),
    max_dose: float | None = typer.Option(None, help="ignore images with more pre-exposure (e/A^2)"),
    resolution_limit: float | None = typer.Option(
        None, help="E-step resolution limit (A); default 1.2 x the consensus map's resolution (em, hillclimb)"
    ),
    anneal: float = typer.Option(1.0, help="initial annealing temperature (> 1 softens early posteriors)"),
    tomograms: Path | None = typer.Option(None, help="tomograms star (if INPUT is a bare particles star)"),
    flip_hand: bool = typer.Option(False, "--flip-hand", help="mirror the maps (opposite handedness)"),
    truth: Path | None = typer.Option(None, help="ground_truth.csv (found automatically beside simulated data)"),
    pixel_size: float | None = typer.Option(None, help=PIXEL_SIZE_HELP),
    class_maps: bool = typer.Option(True, "--class-maps/--no-class-maps", help="gold-standard half maps per class"),
    overwrite: bool = typer.Option(False, "--overwrite", help="start afresh, ignoring a checkpoint in --out"),
    local_angles: float = typer.Option(
        0.0, help="local pose search: range (degrees) of the first rotation grid around each pose (em, em3d; 0: none)"
    ),
    local_shifts: float = typer.Option(0.0, help="local search of the particle centre: range in pixels (em, em3d)"),
    sigma_angles: float | None = SIGMA_ANGLES,
    sigma_shifts: float | None = SIGMA_SHIFTS,
    rare_starts: int | None = typer.Option(
        None,
        help="em, em3d: coherent groups of 5% of the particles tried as a class of their own beside the PCA start "
        "(finds rare states; costs 2 iterations each; 0: off; default 3)",
    ),
    workers: int = typer.Option(0, help="Dask local cluster with this many workers (0: run in this process)"),
    scheduler: str | None = typer.Option(None, help="address of a running Dask scheduler"),
    slurm: str | None = typer.Option(
        None, help="dask-jobqueue SLURM settings, e.g. 'queue=gpu,cores=8,memory=32GB,jobs=4'"
    ),
) -> None:
    """Discrete classification (Bayesian EM on the 2D tilt stacks); particles.star with rlnClassNumber,
    class maps with half maps and FSC, posteriors, per-class subsets, result.json."""
    with _user_errors(out):
        check_classify(classes, iterations, init, method, runs, max_dose, resolution_limit, anneal, pixel_size,
                       workers, has_maps=bool(maps))  # fmt: skip
        from .classify import run_classify

        _torchrun_executor("classify", workers, scheduler)  # refuses: classify runs on Dask
        # the Dask cluster is started only once the data are read and checked
        run_classify(input, out, classes, iterations, init, maps, seed, max_dose, resolution_limit, anneal,
                     tomograms, flip_hand, truth, class_maps=class_maps,
                     executor=lambda: _executor(workers, scheduler, slurm), focus_mask=focus_mask, method=method,
                     runs=runs, pixel_size=pixel_size, overwrite=overwrite, local_angles=local_angles,
                     local_shifts=local_shifts, sigma_angles=sigma_angles, sigma_shifts=sigma_shifts,
                     scan_classes=scan_classes, rare_starts=rare_starts)  # fmt: skip


@app.command()
def refine(
    input: Path = typer.Argument(
        ..., help="optimisation set, RELION 5 particles star, Warp v1 image-series star or RELION 3.1/4 subtomograms"
    ),
    out: Path = typer.Option(..., "--out", "-o", help="output folder (resumes from its checkpoint)"),
    iterations: int = typer.Option(6, help="EM iterations (the search grid is refined over the first three)"),
    local_angles: float = typer.Option(6.0, help="range (degrees) of the first rotation grid around each pose"),
    local_shifts: float = typer.Option(2.0, help="range (pixels) of the first grid of particle-centre offsets"),
    sigma_angles: float | None = SIGMA_ANGLES,
    sigma_shifts: float | None = SIGMA_SHIFTS,
    seed: int = typer.Option(0, help="random seed"),
    max_dose: float | None = typer.Option(None, help="ignore images with more pre-exposure (e/A^2)"),
    resolution_limit: float | None = typer.Option(
        None, help="E-step resolution limit (A); default 1.2 x the consensus map's resolution"
    ),
    tomograms: Path | None = typer.Option(None, help="tomograms star (if INPUT is a bare particles star)"),
    pixel_size: float | None = typer.Option(None, help=PIXEL_SIZE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="start afresh, ignoring a checkpoint in --out"),
    tilt_shifts: bool = typer.Option(
        False, "--tilt-shifts", help="also refine one 2D shift per tilt image of each tomogram (alignment residuals)"
    ),
    tilt_shift_range: float = typer.Option(3.0, help="search range of the per-tilt shifts (pixels)"),
) -> None:
    """Local pose refinement (one class): particles.star with the refined poses (the poses read kept as RELION
    priors), poses.csv, the map before and after with half maps and FSC, result.json."""
    with _user_errors(out):
        from .refine import run_refine

        run_refine(input, out, iterations, local_angles, local_shifts, sigma_angles, sigma_shifts, seed, max_dose,
                   resolution_limit, tomograms, pixel_size, overwrite, tilt_shifts, tilt_shift_range)  # fmt: skip


@app.command()
def landscape(
    input: Path = typer.Argument(
        ...,
        help="optimisation set, RELION 5 particles star, Warp v1 image-series star, or RELION 3.1/4 subtomogram "
        "star (wmd-pca, msvd)",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="output folder (resumes from its checkpoint)"),
    method: str = typer.Option(
        "ppca",
        help="ppca (tilt-space probabilistic PCA), wmd-pca (wedge-masked difference "
        "PCA, PEET/Dynamo), msvd (multiscale SVD, emClarity), vae (tilt-series variational autoencoder), "
        "vae3d (subtomogram variational autoencoder)",
    ),
    components: int = typer.Option(8, help="latent dimensions (components)"),
    clusters: int | None = typer.Option(None, help="cluster the latents into K classes (k-means; GMM too)"),
    iterations: int | None = typer.Option(None, help="maximum iterations (ppca), epochs (vae, vae3d: default 20)"),
    focus_mask: Path | None = typer.Option(None, help="mask (MRC, 0..1): the landscape of the masked region only"),
    basis: int | None = typer.Option(None, help="vae, vae3d: basis maps the decoder combines (default 8)"),
    basis_epochs: int | None = typer.Option(
        None,
        help="vae, vae3d: epochs that refine the maps, PPCA start included "
        "(default 8); the later ones train the networks only",
    ),
    beta: float | None = typer.Option(None, help="vae, vae3d: weight of the KL term (default 4)"),
    held_out: float | None = typer.Option(
        None, help="vae, vae3d: fraction of tilt images (vae3d: Fourier sectors) held out (default 0.1)"
    ),
    device: str | None = typer.Option(
        None, help="vae, vae3d: where the networks train, cpu or cuda (default cpu; under torchrun each process' GPU)"
    ),
    amp: bool | None = typer.Option(
        None, "--amp/--no-amp", help="vae, vae3d: mixed precision (bfloat16) for the networks (default: on CUDA)"
    ),
    seed: int = typer.Option(0, help="random seed"),
    max_dose: float | None = typer.Option(None, help="ignore images with more pre-exposure (e/A^2)"),
    resolution_limit: float | None = typer.Option(None, help="band limit (A); default from the consensus map"),
    tomograms: Path | None = typer.Option(None, help="tomograms star (if INPUT is a bare particles star)"),
    flip_hand: bool = typer.Option(False, "--flip-hand", help="mirror the maps (opposite handedness)"),
    truth: Path | None = typer.Option(None, help="ground_truth.csv (found automatically beside simulated data)"),
    pixel_size: float | None = typer.Option(None, help=PIXEL_SIZE_HELP),
    class_maps: bool = typer.Option(True, "--class-maps/--no-class-maps", help="gold-standard maps per cluster"),
    overwrite: bool = typer.Option(False, "--overwrite", help="start afresh, ignoring a checkpoint in --out"),
    workers: int = typer.Option(0, help="Dask local cluster with this many workers (0: run in this process)"),
    scheduler: str | None = typer.Option(None, help="address of a running Dask scheduler"),
    local_angles: float = typer.Option(
        0.0, help="refine the poses first (one class, local searches): range (degrees) of the first rotation grid"
    ),
    local_shifts: float = typer.Option(0.0, help="refine the particle centres first: range in pixels"),
    sigma_angles: float | None = SIGMA_ANGLES,
    sigma_shifts: float | None = SIGMA_SHIFTS,
) -> None:
    """Continuous landscape: latent.csv, component maps and maps along each component, explained variance,
    latent plots; with --clusters, particles.star with rlnClassNumber and per-cluster maps; result.json.
    With --local-angles / --local-shifts the poses are refined first (as tomohet refine) and the landscape is
    fitted at the refined poses (poses.csv, the particles written with them)."""
    with _user_errors(out):
        from .landscape import run_landscape
        from .options import check_landscape

        check_landscape(components, clusters, iterations, resolution_limit, max_dose, pixel_size, workers, basis,
                        beta, held_out, device, basis_epochs)  # fmt: skip
        run_landscape(input, out, method, components, clusters, seed, focus_mask, resolution_limit, iterations,
                      tomograms, _torchrun_executor("landscape", workers, scheduler)
                      or (lambda: _executor(workers, scheduler, None)), max_dose, flip_hand, truth,
                      class_maps, pixel_size=pixel_size, overwrite=overwrite,
                      method_options={"basis": basis, "beta": beta, "held_out": held_out, "device": device,
                                      "basis_epochs": basis_epochs, "amp": amp},
                      local_search=(local_angles, local_shifts, sigma_angles, sigma_shifts))  # fmt: skip


@app.command()
def analyze(
    runs: list[Path] = typer.Argument(..., help="run folders (the --out of classify or landscape)"),
    out: Path | None = typer.Option(None, "--out", "-o", help="output folder (default RUN/analysis for one run)"),
    shuffles: int = typer.Option(199, help="label shuffles of the spatial-statistics null"),
    seed: int = typer.Option(0, help="random seed of the shuffles"),
    select: str | None = typer.Option(None, help="classes/clusters to write as the next job's input, e.g. 1,3"),
    min_confidence: float | None = typer.Option(
        None, help="with or without --select: keep particles whose consistency (hillclimb) or posterior is >= this"
    ),
    select_latent: str | None = typer.Option(
        None, help="latent region to write as the next job's input, e.g. 'z0>1.5,z1<0' (landscape runs)"
    ),
    path: list[str] | None = typer.Option(
        None,
        "--path",
        help="maps along a latent path A:B, points cN (cluster centre) or zK=v,...: e.g. c1:c3 or z0=-2:z0=2 (repeat)",
    ),
) -> None:
    """Figures, states in their tomograms (views, spatial statistics, ChimeraX scenes) and a self-contained HTML
    report (report.html) of finished runs."""
    with _user_errors(out):
        if shuffles < 19:
            _fail(f"--shuffles must be >= 19 (got {shuffles}): fewer cannot reach p < 0.05")
        from .analyze import run_analyze

        try:
            classes = [int(c) for c in select.split(",")] if select else None
        except ValueError:
            _fail(f"--select takes class numbers separated by commas, e.g. 1,3 (got {select!r})")
        if min_confidence is not None and not 0 <= min_confidence <= 1:
            _fail(f"--min-confidence must be between 0 and 1 (got {min_confidence})")
        report = run_analyze(runs, out, shuffles, seed, classes, select_latent, path, min_confidence)
        console.print(f"report: {report}")


@app.command()
def benchmark(
    suite: str = typer.Option(
        "quick", help="quick (minutes), full (an hour or two on 2 cores), perf (core operations)"
    ),
    out: Path = typer.Option(Path("benchmark_out"), "--out", "-o", help="output folder (a run resumes; runs merge)"),
    methods: str | None = typer.Option(None, help="tomohet methods to run, e.g. em2d,ppca (default: the suite's)"),
    peers: str | None = typer.Option(None, help="peers to run: relion31,cryodrgn_et,tomodrgn ('' for none)"),
    peer_path: list[str] | None = typer.Option(
        None, "--peer-path", help="where a peer is: NAME=PATH (relion_refine, or the peer's virtualenv; repeat)"
    ),
    dataset: list[Path] | None = typer.Option(
        None, "--dataset", help="also a dataset of yours: a folder (or star) with ground_truth.csv beside it (repeat)"
    ),
    classes: int | None = typer.Option(None, help="K for --dataset (default: the number of states in its truth)"),
    threads: int = typer.Option(2, help="threads of every method and peer"),
    timeout: float | None = typer.Option(None, help="stop a cell after this many seconds (recorded as failed)"),
    install_peers: bool = typer.Option(False, "--install-peers", help="install the peers that can be installed here"),
) -> None:
    """Methods and peers side by side on datasets with ground truth: leaderboard.json / .md and report.html."""
    with _user_errors(out):
        if threads < 1:
            _fail(f"--threads must be >= 1 (got {threads})")
        from .benchmark import run_benchmark

        files = run_benchmark(suite, out, methods, peers, peer_path, dataset, classes, threads, timeout,
                              install_peers)  # fmt: skip
        console.print(f"report: {files['html']}")


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", "-o", help="output folder"),
    preset: str = typer.Option("smoke", help="dataset preset to simulate"),
    seed: int = typer.Option(0, help="random seed"),
    n_particles: int | None = typer.Option(None, help="override the preset's particle count"),
) -> None:
    """The main job on an embedded default dataset: simulate, reconstruct, score against ground truth."""
    with _user_errors(out):
        check_simulate(n_particles, None)
        from .demo import run_demo

        report = run_demo(out, preset, seed, n_particles)
        console.print(f"report: {report['report']}")


@app.command()
def version() -> None:
    """Print the version."""
    from .. import __version__

    typer.echo(__version__)


if __name__ == "__main__":
    app()
