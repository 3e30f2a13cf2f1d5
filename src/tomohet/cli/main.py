"""``tomohet``: the command line. Each subcommand writes into its ``--out`` folder (see the README)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import InputError
from .runlog import console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="tomohet: structural heterogeneity in cryo-ET (2D tilt-series stacks and subtomograms).",
)


def _fail(exc: InputError) -> None:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(2)


@app.command()
def reconstruct(
    input: Path = typer.Argument(..., help="optimisation set, RELION 5 particles star or Warp v1 image-series star"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder"),
    tomograms: Path | None = typer.Option(None, help="tomograms star (if INPUT is a bare particles star)"),
    oversampling: int = typer.Option(2, help="Fourier padding factor for insertion"),
    batch_size: int = typer.Option(64, help="particles per batch"),
    flip_hand: bool = typer.Option(False, "--flip-hand", help="mirror the map (opposite handedness)"),
    invert_contrast: bool = typer.Option(False, "--invert-contrast", help="images have dark particles"),
) -> None:
    """Homogeneous reconstruction: half maps, FSC (CSV + PNG), Wiener-filtered map, result.json."""
    from .reconstruct import run_reconstruct

    try:
        run_reconstruct(input, out, tomograms, oversampling, batch_size, flip_hand, invert_contrast)
    except InputError as exc:
        _fail(exc)


@app.command()
def version() -> None:
    """Print the version."""
    from .. import __version__

    typer.echo(__version__)


if __name__ == "__main__":
    app()
