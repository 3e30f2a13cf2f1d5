"""Pieces every iterative method shares: the annealing schedule and per-iteration progress reporting."""

from __future__ import annotations

from collections.abc import Callable


def anneal_temperature(iteration: int, n_iter: int, start: float) -> float:
    """Temperature of a 0-based ``iteration``: ``start`` falling geometrically to 1 by ``n_iter // 2``, then 1
    (``start <= 1`` means no annealing)."""
    if start <= 1:
        return 1.0
    half = max(1, n_iter // 2)
    return max(1.0, start ** (1 - iteration / half))


def stage_ticker(progress: Callable[[str, int, int], None] | None, stage: str, total: int) -> Callable[[int], None]:
    """A ``tick(n_done_now)`` callback for one stage that reports cumulative particles to ``progress(stage,
    done, total)``; the stage is announced at once (done = 0) so that rates are timed from its start."""
    done = [0]
    if progress:
        progress(stage, 0, total)

    def tick(k: int) -> None:
        done[0] += k
        if progress:
            progress(stage, done[0], total)

    return tick
