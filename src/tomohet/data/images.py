"""Lazy, memory-mapped access to particle images stored in MRC stacks."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path

import mrcfile
import numpy as np
import torch

from ..errors import InputError


def open_mrc_mmap(path: Path) -> mrcfile.mrcmmap.MrcMemmap:
    """Open an MRC file read-only as a memory map; a clear :class:`InputError` if missing or unreadable.

    Stacks that lack only the ``MAP `` id and machine stamp (written by some older tools, e.g. the cryoDRGN
    ribosome test data) are accepted when their header and size are otherwise consistent."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "image file not found", "rlnImageName")
    try:
        return mrcfile.mmap(path, mode="r", permissive=False)
    except Exception as exc:  # mrcfile raises ValueError / OSError with various messages
        strict_error = exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mrc = mrcfile.mmap(path, mode="r", permissive=True)
    except Exception as exc:
        raise InputError(path, f"not a readable MRC file ({strict_error})", "rlnImageName") from exc
    h = mrc.header
    if mrc.data is None or min(int(h.nx), int(h.ny), int(h.nz)) <= 0 or mrc.data.ndim not in (2, 3):
        mrc.close()
        raise InputError(path, f"not a readable MRC file ({strict_error})", "rlnImageName")
    return mrc


def stack_shape(path: Path) -> tuple[int, ...]:
    """Shape ``(n, ny, nx)`` of an MRC image stack (``(1, ny, nx)`` for a single image)."""
    mrc = open_mrc_mmap(Path(path))
    shape = tuple(int(s) for s in mrc.data.shape)
    mrc.close()
    return (1,) + shape if len(shape) == 2 else shape


class ImageSource:
    """Where each (particle, tilt) image lives: ``file_index [N, T]`` into ``paths`` and ``frame [N, T]``
    (0-based slice in that stack); ``-1`` marks an absent image. Reads batches lazily from memory maps,
    checking box size and finiteness; nothing is loaded until asked for."""

    max_open = 128

    def __init__(self, paths: list[Path], file_index: np.ndarray, frame: np.ndarray, box: int, star: Path | None):
        self.paths = [Path(p) for p in paths]
        self.file_index = np.asarray(file_index, dtype=np.int64)
        self.frame = np.asarray(frame, dtype=np.int64)
        self.box = box
        self.star = star
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()

    def __getstate__(self):  # memory maps are not pickled (Dask workers reopen them)
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state

    def _stack(self, i: int) -> np.ndarray:
        if i in self._open:
            self._open.move_to_end(i)
            return self._open[i]
        path = self.paths[i]
        mrc = open_mrc_mmap(path)
        data = mrc.data
        if data.ndim == 2:
            data = data[None]
        if data.shape[-1] != self.box or data.shape[-2] != self.box:
            raise InputError(
                path,
                f"image box {data.shape[-1]}x{data.shape[-2]} disagrees with the star file's box {self.box}"
                + (f" ({self.star})" if self.star else ""),
                "rlnImageSize",
            )
        self._open[i] = data
        if len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return data

    def read(self, particles: np.ndarray | list[int]) -> torch.Tensor:
        """Images ``[B, T, D, D]`` float32 for the given particle indices; absent images are zeros."""
        particles = np.asarray(particles, dtype=np.int64)
        fi = self.file_index[particles]
        fr = self.frame[particles]
        out = np.zeros(fi.shape + (self.box, self.box), dtype=np.float32)
        for f in np.unique(fi[fi >= 0]):
            stack = self._stack(int(f))
            sel = fi == f
            frames = fr[sel]
            if frames.max() >= stack.shape[0]:
                raise InputError(
                    self.paths[f],
                    f"frame {frames.max() + 1} requested but the stack has {stack.shape[0]}",
                    "rlnImageName",
                )
            imgs = np.asarray(stack[frames], dtype=np.float32)
            if not np.isfinite(imgs).all():
                bad = int(frames[np.flatnonzero(~np.isfinite(imgs).reshape(len(frames), -1).all(1))[0]])
                raise InputError(self.paths[f], f"image {bad + 1} contains NaN or Inf values", "rlnImageName")
            out[sel] = imgs
        return torch.from_numpy(out)
