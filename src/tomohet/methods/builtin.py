"""Registration of tomohet's own discrete methods in :mod:`.registry` (continuous ones register in
:mod:`.landscape`)."""

from __future__ import annotations

from .em2d import EMOptions, classify_em2d
from .em3d import EM3DOptions, classify_em3d
from .hillclimb import HillClimbOptions, classify_hillclimb
from .registry import MethodSpec, register


def _em2d(dataset, options, *, progress=None, checkpoint=None, executor=None, initial_maps=None, focus_mask=None):
    return classify_em2d(dataset, options, initial_maps, progress, checkpoint=checkpoint, executor=executor,
                         focus_mask=focus_mask)  # fmt: skip


def _em3d(dataset, options, *, progress=None, checkpoint=None, initial_maps=None):
    return classify_em3d(dataset, options, initial_maps, progress, checkpoint=checkpoint)


def _hillclimb(dataset, options, *, progress=None, checkpoint=None, executor=None):
    return classify_hillclimb(dataset, options, progress, executor, checkpoint=checkpoint)


register(MethodSpec(
    "em2d", "discrete", frozenset({"2d"}), EMOptions, _em2d,
    takes=frozenset({"initial_maps", "focus_mask", "executor"}), aliases=("em",),
    description="Bayesian EM on the 2D tilt stacks (whole tilt series per particle, per-shell noise)",
))  # fmt: skip
register(MethodSpec(
    "em3d", "discrete", frozenset({"2d", "3d"}), EM3DOptions, _em3d, takes=frozenset({"initial_maps"}),
    description="Bayesian EM on 3D subtomograms with per-voxel CTF^2 weights",
))  # fmt: skip
register(MethodSpec(
    "hillclimb", "discrete", frozenset({"2d"}), HillClimbOptions, _hillclimb, takes=frozenset({"executor"}),
    description="stochastic hill climbing with simulated annealing and consistency (STOPGAP)",
))  # fmt: skip
