"""Peer adapters: each exports a benchmark dataset in the format its peer reads, gives the command that runs the
peer in its own environment, and reads the peer's output back as a
:class:`~tomohet.benchmark.scoring.CellOutput`, scored by exactly the code that scores tomohet.

A peer that is not installed is reported (skipped, with the reason and the install command), never dropped.
"""

from __future__ import annotations

from .base import Peer, PeerRun
from .cryodrgn_et import CryoDrgnEt
from .relion31 import Relion31
from .tomodrgn import TomoDrgn

PEERS: dict[str, type[Peer]] = {p.name: p for p in (Relion31, CryoDrgnEt, TomoDrgn)}


def get_peer(name: str, path: str | None = None, options: dict | None = None) -> Peer:
    """The adapter called ``name`` (``relion31``, ``cryodrgn_et``, ``tomodrgn``); ``path``: where its executable
    or environment is, overriding the default and the environment variable."""
    if name not in PEERS:
        raise KeyError(f"unknown peer {name!r} (known: {', '.join(PEERS)})")
    return PEERS[name](path=path, **(options or {}))


__all__ = ["PEERS", "Peer", "PeerRun", "get_peer"]
