"""``tomohet benchmark``: a suite's cells run (or resumed) into ``--out``, then the merged leaderboard written."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import InputError
from .runlog import console


def parse_peer_paths(items: list[str] | None) -> dict[str, str]:
    """``--peer-path NAME=PATH`` options as a dictionary (a clear error for a malformed one)."""
    from ..benchmark.peers import PEERS

    out = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not path or name not in PEERS:
            raise InputError(None, f"expected NAME=PATH with NAME one of {', '.join(PEERS)}, got {item!r}",
                             "--peer-path")  # fmt: skip
        out[name] = path
    return out


def _names(text: str | None, known, option: str) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(None, f"unknown name {unknown[0]!r} (known: {', '.join(known)})", option)
    return names


def run_benchmark(
    suite: str,
    out: Path,
    methods: str | None,
    peers: str | None,
    peer_paths: list[str] | None,
    datasets: list[Path] | None,
    classes: int | None,
    threads: int,
    timeout_s: float | None,
    install_peers: bool,
) -> dict[str, Path]:
    """Run the suite (``perf``: the core operations) and write the leaderboard; returns its files."""
    from ..benchmark.leaderboard import write_leaderboard
    from ..benchmark.peers import PEERS, get_peer
    from ..benchmark.suites import METHODS, SUITES, user_dataset

    out = Path(out)
    paths = parse_peer_paths(peer_paths)
    peer_list = _names(peers, list(PEERS), "--peers")
    method_list = _names(methods, list(METHODS), "--methods")
    if suite not in (*SUITES, "perf"):
        raise InputError(None, f"unknown suite {suite!r} (quick, full, perf)", "--suite")
    user = [user_dataset(p, classes) for p in datasets or []]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "benchmark.log", "a") as log_file:

        def log(msg: str) -> None:
            console.print(msg, highlight=False, soft_wrap=True, markup=False)
            log_file.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
            log_file.flush()

        if suite == "perf":
            from ..benchmark.perf import run_perf

            return run_perf(out, threads, log)
        spec = SUITES[suite]
        if install_peers:
            for name in peer_list if peer_list is not None else spec.peers:
                peer = get_peer(name, paths.get(name))
                if peer.unavailable():
                    log(f"installing {peer.title}: {peer.install_command()}")
                    try:
                        peer.install()
                    except RuntimeError as exc:
                        log(str(exc))
        from ..benchmark.runner import run_suite

        run_suite(spec, out, datasets=(list(spec.datasets) + user) if user else None, methods=method_list,
                  peers=peer_list, peer_paths=paths, threads=threads, timeout_s=timeout_s, log=log)  # fmt: skip
        files = write_leaderboard(out)
        log(files["markdown"].read_text())
    return files
