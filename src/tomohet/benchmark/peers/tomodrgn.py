"""tomoDRGN (``tomodrgn train_vae``; not on PyPI) in its own virtualenv.

Install from its source (github.com/bpowell122/tomodrgn; ``TOMOHET_TOMODRGN_VENV`` or
``--peer-path tomodrgn=VENV`` points at the virtualenv)::

    python3.11 -m venv VENV && echo 'torch==2.13.0' > c.txt
    SETUPTOOLS_SCM_PRETEND_VERSION=1.0.0 VENV/bin/pip install -c c.txt torch==2.13.0 ./tomodrgn

Export: the same Warp v1 image-series star as cryoDRGN-ET (rows in dose order per particle, absolute paths), all
particles and all their tilts (tomoDRGN takes ragged tilt counts). The data sign: tomoDRGN's CTF is cryoDRGN's
(the negative of RELION's) and its default ``invert_data`` flips the images back, the consistent choice here.
Run: ``train_vae`` with its defaults (batch 1, all tilts, Gaussian positional encoding) plus the weights its
authors recommend for tilt series (``--recon-tilt-weight --recon-dose-weight --l-dose-mask``), ``--zdim``,
``-n`` epochs. Read: ``z.train.pkl`` (latent means, particles in star order).
"""

from __future__ import annotations

import time
from pathlib import Path

from ..suites import BOTH
from .base import PeerRun, VirtualenvPeer, thread_env, version_from
from .cryodrgn_et import export_warp_star


class TomoDrgn(VirtualenvPeer):
    name = "tomodrgn"
    title = "tomoDRGN train_vae"
    kinds = BOTH
    env_var = "TOMOHET_TOMODRGN_VENV"
    default = "/work/tomodrgn_venv"
    command = "tomodrgn"
    latents_file = "z.train.pkl"

    def install_command(self) -> str:
        v = self.path
        return (f"git clone https://github.com/bpowell122/tomodrgn {v}.src && python3.11 -m venv {v} && "
                f"echo 'torch==2.13.0' > {v}.constraints.txt && SETUPTOOLS_SCM_PRETEND_VERSION=1.0.0 "
                f"{v}/bin/pip install -q -c {v}.constraints.txt torch==2.13.0 {v}.src")  # fmt: skip

    def version(self) -> str:
        return version_from([str(Path(self.path) / "bin" / "pip"), "show", "tomodrgn"])

    def prepare(self, prep, work: Path, threads: int) -> PeerRun:
        t0 = time.perf_counter()
        epochs, zdim = int(self.options.get("epochs", 20)), int(self.options.get("zdim", 8))
        inp = export_warp_star(prep.input, work / "input", min_tilts=1)
        (work / "kept.txt").write_text("\n".join(inp["kept"]) + "\n")
        cmd = [
            str(self.executable()), "train_vae", str(inp["star"]), "--source-software", "warp",
            "-o", str(work / "train_vae"),
            "--zdim", str(zdim), "-n", str(epochs), "--seed", "0", "--checkpoint", "0",
            "--recon-tilt-weight", "--recon-dose-weight", "--l-dose-mask", "--num-workers", "0",
        ]  # fmt: skip
        return PeerRun(cmd, env=thread_env(threads), prepare_s=time.perf_counter() - t0,
                       settings={"epochs": epochs, "zdim": zdim, "weights": "tilt, dose, dose mask"})  # fmt: skip
