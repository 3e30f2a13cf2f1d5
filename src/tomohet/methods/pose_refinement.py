"""Homogeneous local pose refinement of any dataset: one class, local searches (what ``tomohet refine`` runs on 2D
stacks and what ``tomohet landscape --local-angles`` runs before a landscape), through the 2D EM's search for tilt
stacks (:mod:`.local_pose`) and the 3D EM's for subtomograms (:mod:`.subtomo_local_pose`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .em2d import EMOptions, classify_em2d
from .result import Result


def refine_poses(
    dataset,
    range_deg: float,
    range_px: float,
    sigma_deg: float | None = None,
    sigma_px: float | None = None,
    n_iter: int = 4,
    seed: int = 0,
    max_dose: float | None = None,
    resolution_limit_A: float | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    checkpoint: Path | None = None,
) -> Result:
    """``n_iter`` search iterations against one class from the poses as read: the first grid spans ``range_deg``
    degrees and ``range_px`` pixels, the prior widths per axis are estimated unless given. The result's ``extra``
    holds the corrections (``pose_rotation [N, 3, 3]``, ``pose_offset_px [N, 3]``, :mod:`tomohet.data.poses`),
    its ``volumes`` the consensus, its ``log`` one entry per iteration (grid, prior, median correction)."""
    search = dict(local_angles_deg=range_deg, local_shifts_px=range_px, sigma_angles_deg=sigma_deg,
                  sigma_shifts_px=sigma_px, pose_search_iterations=n_iter)  # fmt: skip
    if dataset.kind == "3d":
        from .em3d import EM3DOptions, classify_em3d  # lazy: the 3D EM's modules only for subtomograms

        opts = EM3DOptions(n_classes=1, n_iter=n_iter, init="random", seed=seed, resolution_limit_A=resolution_limit_A,
                           tol_changes=0.0, **search)  # fmt: skip
        return classify_em3d(dataset, opts, progress=progress, checkpoint=checkpoint)
    opts = EMOptions(n_classes=1, n_iter=n_iter, init="random", seed=seed, max_dose=max_dose,
                     resolution_limit_A=resolution_limit_A, **search)  # fmt: skip
    return classify_em2d(dataset, opts, progress=progress, checkpoint=checkpoint)
