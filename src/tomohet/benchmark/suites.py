"""What a benchmark suite runs: datasets (simulated presets, or a user's folder with ``ground_truth.csv``) x
tomohet methods (each with its defaults, run as the ``tomohet`` command a user would type) x peers.

``quick`` takes minutes on 2 cores, ``full`` an hour or two, ``perf`` times the core operations
(:mod:`tomohet.benchmark.perf`). A dataset is discrete when it has a class count (the methods get ``-K`` /
``--clusters`` with it) and continuous otherwise (the methods give latents, scored by |Spearman rho|).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

DISCRETE, CONTINUOUS = "discrete", "continuous"


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of a suite. ``preset``/``n_particles``/``snr``/``seed``: a ``tomohet simulate`` preset;
    ``path``: a user's folder (an optimisation set or star beside ``ground_truth.csv``) used as it is.
    ``classes``: K for the discrete methods (None: a continuous dataset)."""

    name: str
    preset: str | None = None
    n_particles: int | None = None
    snr: float | None = None
    seed: int = 0
    classes: int | None = None
    path: Path | None = None
    only: tuple[str, ...] | None = None  # the methods and peers run on it (None: all of the suite's)
    acquisition: tuple[tuple[str, object], ...] = ()  # Acquisition fields changed from the preset's, e.g. tilt_max

    def runs(self, name: str) -> bool:
        return self.only is None or name in self.only

    @property
    def kind(self) -> str:
        return DISCRETE if self.classes else CONTINUOUS

    def describe(self) -> dict:
        return {"name": self.name, "preset": self.preset, "n_particles": self.n_particles, "snr": self.snr,
                "seed": self.seed, "classes": self.classes, "kind": self.kind,
                "acquisition": dict(self.acquisition), "path": str(self.path) if self.path else None}  # fmt: skip


@dataclass(frozen=True)
class MethodSpec:
    """A tomohet method as a command line: ``tomohet SUBCOMMAND INPUT --out OUT ARGS`` plus ``-K k``
    (classify) or ``--clusters k`` (landscape) on discrete datasets. ``input``: ``2d`` reads the tilt stacks,
    ``3d`` the RELION 3.1 subtomograms the benchmark writes from them."""

    name: str
    subcommand: str
    args: tuple[str, ...] = ()
    kinds: frozenset[str] = frozenset({DISCRETE})
    input: str = "2d"
    # extra arguments per suite (e.g. fewer VAE epochs in ``quick``), keyed by suite name
    suite_args: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False, compare=False)

    def command(self, input_path: Path, out: Path, classes: int | None, suite: str) -> list[str]:
        cmd = [sys.executable, "-m", "tomohet", self.subcommand, str(input_path), "--out", str(out), *self.args]
        cmd += list(self.suite_args.get(suite, ()))
        if classes:
            cmd += ["-K", str(classes)] if self.subcommand == "classify" else ["--clusters", str(classes)]
        return cmd


BOTH = frozenset({DISCRETE, CONTINUOUS})
METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        MethodSpec("em2d", "classify", ("--method", "em")),
        MethodSpec("em3d", "classify", ("--method", "em3d")),
        MethodSpec("hillclimb", "classify", ("--method", "hillclimb")),
        MethodSpec("ppca", "landscape", ("--method", "ppca"), BOTH, suite_args={"quick": ("--iterations", "5")}),
        MethodSpec("vae", "landscape", ("--method", "vae"), BOTH, suite_args={"quick": ("--iterations", "4")}),
        MethodSpec("vae3d", "landscape", ("--method", "vae3d"), BOTH, input="3d"),
        MethodSpec("wmd-pca", "landscape", ("--method", "wmd-pca"), BOTH, input="3d"),
        MethodSpec("msvd", "landscape", ("--method", "msvd"), BOTH, input="3d"),
    )
}


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    datasets: tuple[DatasetSpec, ...]
    methods: tuple[str, ...]
    peers: tuple[str, ...]
    peer_options: dict = field(default_factory=dict, hash=False, compare=False)  # per peer: its settings


ALL_PEERS = ("relion31", "cryodrgn_et", "tomodrgn")

SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite(
            "quick",
            "minutes on 2 cores: two states ~11% of mass apart (100 particles x 41 tilts, SNR 0.05) with every "
            "tomohet method and every installed peer (the VAEs for 1-4 epochs), and a "
            "0-30 degree hinge (150 particles) with the linear landscapes and vae3d",
            (
                DatasetSpec("easy_2states_n100", "discrete_easy", 100, classes=2),
                DatasetSpec("hinge_n150", "hinge", 150, only=("ppca", "wmd-pca", "msvd", "vae3d")),
            ),
            tuple(METHODS),
            ALL_PEERS,
            {"relion31": {"iterations": 25}, "cryodrgn_et": {"epochs": 1}, "tomodrgn": {"epochs": 1}},
        ),
        Suite(
            "full",
            "an hour or two on 2 cores: the 4-state ladder at the physical limit (oracle ARI ~0.95 at SNR 0.005) and "
            "one SNR above it, two states ~11% of mass apart with every method and peer (the cryoDRGN family for 2 "
            "epochs: at their default model sizes an epoch takes 7-17 min here), the 5% rare state and the hinge",
            (
                DatasetSpec(
                    "ladder_snr0.005_n1000",
                    "ladder",
                    1000,
                    classes=4,
                    only=("em2d", "em3d", "hillclimb", "ppca", "vae3d", "relion31"),
                ),
                DatasetSpec("easy_2states_n600", "discrete_easy", 600, classes=2),  # every method and peer
                DatasetSpec("rare_spread_n1000", "rare_spread", 1000, classes=2, only=("em2d", "em3d", "relion31")),
                DatasetSpec("ladder_snr0.008_n1000", "ladder", 1000, snr=0.008, classes=4, only=("em2d",)),
                DatasetSpec("hinge_n600", "hinge", 600, only=("ppca", "vae", "vae3d", "wmd-pca", "msvd")),
                DatasetSpec(
                    "ladder_snr0.008_tilt40_n1000",
                    "ladder",
                    1000,
                    snr=0.008,
                    classes=4,
                    only=("em2d",),
                    acquisition=(("tilt_max", 40.0),),
                ),  # a narrower tilt range: a larger missing wedge
            ),
            tuple(METHODS),
            ALL_PEERS,
            {"relion31": {"iterations": 25}, "cryodrgn_et": {"epochs": 2}, "tomodrgn": {"epochs": 2}},
        ),
    )
}
SUITE_NAMES = (*SUITES, "perf")


def user_dataset(path: Path, classes: int | None = None, name: str | None = None) -> DatasetSpec:
    """A user's dataset folder (or a star in it) with ``ground_truth.csv`` beside it; K defaults to the number of
    states in ``ground_truth.csv`` (a continuous dataset when it has one state)."""
    import pandas as pd

    from ..errors import InputError

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    truth = folder / "ground_truth.csv"
    if not truth.exists():
        raise InputError(folder, "a benchmark dataset needs ground_truth.csv beside its star", "--dataset")
    if classes is None:
        try:
            n_states = pd.read_csv(truth)["state"].nunique()
        except (KeyError, ValueError, OSError) as exc:
            raise InputError(truth, f"cannot read the states ({exc})", "state") from exc
        classes = int(n_states) if n_states > 1 else None
    return DatasetSpec(name or folder.name, path=path, classes=classes)
