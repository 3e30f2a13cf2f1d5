"""Tilt-series variational autoencoder (``vae``): a non-linear continuous landscape fitted to the 2D tilt images
through the one forward model (the neural family of tomoDRGN and cryoDRGN-ET).

Model: particle i has a latent ``z_i ~ N(0, I)`` (``n_components`` dimensions); its map is
``mu + sum_b a_b(z_i) W_b`` with a decoder MLP ``a(z)`` and a basis of ``basis`` 3D maps ``W``; image j is
``X_ij = H_ij P(map_i, A_ij) + N_ij`` with the per-image CTF and exposure filter ``H`` (the dose weighting of the
loss), and Gaussian noise with the per-shell power of EM classification (not a plain MSE), in the band of the
consensus map as EM (Fourier-cropped working grid). Missing tilts, masked frames and any tilt count or scheme
enter only as missing data.

Training alternates, one epoch per pass over every tilt image (:mod:`.ppca_pass`, shared with ``ppca``):

1. the pass computes every image's statistics for the coefficients under the current maps
   (:class:`~.ppca_pass.ImageStatistics`), and the M-step sums of the maps with the moments of ``a(z)`` under
   the current encoder (amortised E-step);
2. the maps (``mu``, ``W``) and the noise power are updated (the regularised M-step of ``ppca``), and the basis
   is re-expressed so the coefficients stay whitened (parameter expansion; the decoder's output map absorbs it);
3. encoder and decoder train for ``inner_passes`` passes over the particles' statistics (:mod:`.vae_net`):
   tilt subsampling, KL warm-up, free bits. A random ``held_out`` fraction of each particle's tilts never enters
   training or the maps; the log-likelihood gain on them is reported per epoch to show overfitting, and after
   the maps are final the networks of the epoch with the best held-out gain are kept (early stopping).

The start is ``ppca`` (``ppca_start`` iterations with ``basis`` components), so the basis begins at the linear
landscape and the networks learn the non-linear map on it. The latents written are the encoder means, rotated
to their principal axes (columns by decreasing variance); maps anywhere in the landscape come from the decoder
(``Result.extra["decoder"]``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .distributed import local_device
from .engine import run_iterations
from .iteration import stage_ticker
from .landscape import LandscapeMethod, register
from .ppca import PPCAModel, PPCAOptions, start_or_resume
from .ppca_pass import ImageStatistics, m_step_and_expand
from .result import Result
from .vae_net import (
    Decoder,
    Encoder,
    TrainingSettings,
    coefficient_moments,
    encode,
    kl_per_dimension,
    train_networks,
)


@dataclass
class VAEOptions(PPCAOptions):
    """Options of :func:`fit_vae` (and of ``ppca``, whose model gives the maps). ``n_components`` is the latent
    dimension, ``n_iter`` the number of epochs (passes over every tilt image, the PPCA start included)."""

    n_iter: int = 20
    basis_epochs: int = 8  # epochs that refine the maps (PPCA start included); the later ones train the networks
    basis: int = 8  # basis maps the decoder combines
    hidden: int = 256  # units per hidden layer (encoder and decoder)
    layers: int = 2  # hidden layers
    beta: float = 4.0  # weight of the KL term (beta-VAE; 4 kept the hinge on one latent axis, see VAE.md)
    free_bits: float = 0.05  # nats per latent dimension below which the KL is not pushed down
    warmup: int = 3  # epochs over which beta ramps up from 0
    inner_passes: int = 2  # passes of the networks over the particles' statistics per epoch
    learning_rate: float = 1e-3
    train_batch: int = 128  # particles per training step
    tilt_keep: float = 0.7  # fraction of its held-in tilts a particle is encoded from in a training step
    held_out: float = 0.1  # fraction of each particle's tilt images held out of training and maps
    ppca_start: int = 3  # PPCA iterations giving the starting basis
    samples: int = 8  # draws of z per particle for the moments of the M-step
    device: str = "cpu"  # where the networks train ("cuda" on a GPU; under torchrun each process' own GPU)
    amp: bool | None = None  # mixed precision (bfloat16 autocast) for the networks; None: on for CUDA only
    basis_patterns: bool = False  # ppca's voxel-pattern prior on the basis: off, not measured with the decoder yet


def held_out_images(visible: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """``[N, T]`` bool: a seeded ``fraction`` of each particle's visible images (none when it has fewer than 4)."""
    rng = np.random.default_rng(seed + 104729)
    held = np.zeros(visible.shape, dtype=bool)
    if fraction <= 0:
        return held
    for i, vis in enumerate(visible):
        idx = np.flatnonzero(vis)
        k = int(math.floor(fraction * len(idx) + 0.5)) if len(idx) >= 4 else 0
        if k:
            held[i, rng.choice(idx, k, replace=False)] = True
    return held


@dataclass
class VAEPosterior:
    """The amortised E-step a pass calls (picklable): moments of ``a(z)`` for a chunk's statistics."""

    encoder: Encoder
    decoder: Decoder
    samples: int
    seed: int

    def __call__(self, particles: np.ndarray, stats: ImageStatistics) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed + 7919 * int(particles[0]))
        dev = next(self.encoder.parameters()).device
        held_in = (~stats.held_out & visible_images(stats.gram)).to(dev)
        mean, cov = coefficient_moments(self.encoder, self.decoder, stats.b.float().to(dev),
                                        stats.gram.float().to(dev), held_in, self.samples, gen)  # fmt: skip
        return mean.double().cpu(), cov.double().cpu()


def visible_images(gram: torch.Tensor) -> torch.Tensor:
    """``[n, T]`` bool: images with any information about the coefficients (masked or missing tilts have none)."""
    return torch.diagonal(gram, dim1=-2, dim2=-1).sum(-1) > 0


def reexpress(stats: ImageStatistics, eta: np.ndarray, chol: np.ndarray) -> ImageStatistics:
    """Image statistics in re-expressed coordinates (old ``a = eta + L a_new``: ``mu' = mu + W eta``,
    ``W' = W L``): ``b' = L^T (b - G eta)``, ``G' = L^T G L``, ``r2' = r2 - 2 eta.b + eta.G.eta``."""
    lc = torch.as_tensor(chol, dtype=torch.float32)
    e = torch.as_tensor(eta, dtype=torch.float32)
    ge = stats.gram @ e
    b = (stats.b - ge) @ lc
    gram = lc.T @ stats.gram @ lc
    r2 = stats.r2 - 2 * (stats.b * e).sum(-1) + (ge * e).sum(-1)
    return ImageStatistics(b, gram, r2, stats.held_out)


class VAEModel:
    """State and steps of the tilt-series VAE on one dataset (see the module docstring)."""

    def __init__(self, dataset, options: VAEOptions, executor=None, focus_mask: torch.Tensor | None = None,
                 linear=None):  # fmt: skip
        """``linear``: the model of the maps and of the per-unit statistics (default: tilt-space PPCA with
        ``basis`` components; :class:`~.subtomo_ppca.SubtomoPPCA` for subtomograms, whose units are sectors)."""
        self.ds, self.opt = dataset, options
        if linear is None:
            linear = PPCAModel(dataset, replace(options, n_components=options.basis), executor, focus_mask)
        self.ppca = linear
        self.device = local_device(options.device)
        torch.manual_seed(options.seed)  # network initialisation (the same in every process of a distributed job)
        self.encoder = Encoder(options.basis, options.n_components, options.hidden, options.layers).to(self.device)
        self.decoder = Decoder(options.n_components, options.basis, options.hidden, options.layers).to(self.device)
        amp = options.amp if options.amp is not None else self.device.type == "cuda"
        self.encoder.amp = self.decoder.amp = torch.bfloat16 if amp else None
        params = list(self.encoder.parameters()) + list(self.decoder.parameters())
        self.optimiser = torch.optim.Adam(params, lr=options.learning_rate)
        self.trained = False
        self.final_stats: ImageStatistics | None = None  # statistics under the final maps (later epochs)
        self.best: dict | None = None  # the networks with the best held-out gain (networks-only epochs)
        self.held_out = held_out_images(self.ppca.unit_visibility(), options.held_out, options.seed)
        self.ppca.held_out = self.held_out  # the PPCA start never sees the held-out images either
        self.latent_mean = np.zeros((dataset.n_particles, options.n_components))
        self.latent_logvar = np.zeros((dataset.n_particles, options.n_components))
        self.log: list[dict] = []

    # ---------------------------------------------------------------------------------------------- epochs
    def iterate(self, temperature: float = 1.0, progress: Callable[[int], None] | None = None) -> dict:
        """One epoch: PPCA iterations first (``ppca_start``), then pass (statistics + M-step sums), maps,
        re-expression, training of the networks."""
        epoch = len(self.log)
        if epoch < self.opt.ppca_start:
            entry = self.ppca.iterate(temperature, progress)
            return {**entry, "stage": "ppca"}
        if epoch >= max(self.opt.basis_epochs, self.opt.ppca_start + 1):  # the maps are final
            if self.final_stats is None:
                self.final_stats = self.final_statistics(progress)
            entry = self._train(self.final_stats, epoch)
            self._keep_if_best(entry["gain_held_out"], epoch)
            return {**entry, "stage": "networks"}
        posterior = self._posterior(epoch) if self.trained else None  # the first VAE epoch: PPCA's E-step
        sums = self.ppca.run_pass(self.ppca.pass_state(posterior=posterior, image_stats=True), progress)
        if self.opt.update_noise:
            self.ppca.update_sigma2(sums)
        eta, chol = m_step_and_expand(self.ppca, sums)
        if self.trained:
            self.decoder.reparametrise(eta, chol)
        stats = reexpress(sums.images, eta, chol)
        entry = self._train(stats, epoch)
        entry["log_likelihood"] = float(sums.log_likelihood.sum())
        entry["stage"] = "vae"
        return entry

    def _keep_if_best(self, gain: float | None, epoch: int) -> None:
        """Early stopping on the held-out tilts: remember the networks whose decoded latents explain the held-out
        images best (they never enter a gradient; training longer makes the latents fit the held-in noise)."""
        if gain is None or (self.best is not None and gain <= self.best["gain_held_out"]):
            return
        self.best = {"gain_held_out": gain, "epoch": epoch + 1,
                     "encoder": copy.deepcopy(self.encoder.state_dict()),
                     "decoder": copy.deepcopy(self.decoder.state_dict()),
                     "latent_mean": self.latent_mean.copy(), "latent_logvar": self.latent_logvar.copy()}  # fmt: skip

    def restore_best(self) -> int | None:
        """Networks and latents of the best epoch (:meth:`_keep_if_best`); returns that epoch (1-based)."""
        if self.best is None:
            return None
        self.encoder.load_state_dict(self.best["encoder"])
        self.decoder.load_state_dict(self.best["decoder"])
        self.latent_mean, self.latent_logvar = self.best["latent_mean"], self.best["latent_logvar"]
        return self.best["epoch"]

    def final_statistics(self, progress: Callable[[int], None] | None = None) -> ImageStatistics:
        """Every image's statistics under the final maps (a pass without M-step)."""
        state = self.ppca.pass_state(posterior=self._posterior(len(self.log)), image_stats=True, mstep=False)
        return self.ppca.run_pass(state, progress).images

    def _posterior(self, epoch: int) -> VAEPosterior:
        return VAEPosterior(self.encoder, self.decoder, self.opt.samples, self.opt.seed + 15485863 * epoch)

    def _train(self, stats: ImageStatistics, epoch: int) -> dict:
        o = self.opt
        vae_epoch = epoch - o.ppca_start
        first = not self.trained
        settings = TrainingSettings(
            passes=o.inner_passes * (3 if first else 1), batch=o.train_batch,
            beta=o.beta * min(1.0, (vae_epoch + 1) / max(o.warmup, 1)), free_bits=o.free_bits,
            tilt_keep=o.tilt_keep, seed=o.seed + 1000003 * epoch,
        )  # fmt: skip
        dev = self.device
        b, gram = stats.b.to(dev), stats.gram.to(dev)
        visible = visible_images(stats.gram).to(dev)
        held = torch.as_tensor(stats.held_out).to(dev)
        losses = train_networks(self.encoder, self.decoder, self.optimiser, b, gram, visible & ~held, settings)
        self.trained = True
        mu, logvar = encode(self.encoder, b, gram, visible & ~held)
        gains = self._gains(mu, b, gram, visible, held)
        z = mu.double().cpu().numpy()
        changes = self._changes(z, logvar.double().cpu().numpy())
        self.latent_mean, self.latent_logvar = z, logvar.double().cpu().numpy()
        return {"changes": changes, "beta": settings.beta, **{k: round(v, 4) for k, v in losses.items()}, **gains,
                "kl_per_dimension": np.round(kl_per_dimension(mu.double(), logvar.double()).mean(0).cpu().numpy(),
                                             4).tolist()}  # fmt: skip

    @torch.no_grad()
    def _gains(self, mu, b, gram, visible, held) -> dict:
        """Log-likelihood gain per image of the decoded latent means over the mean map alone, on held-in and
        held-out images (``a.b - a.G.a / 2``; a gap between them is overfitting)."""
        self.decoder.eval()
        a = self.decoder(mu)
        per_image = (b * a[:, None]).sum(-1) - 0.5 * torch.einsum("ni,ntij,nj->nt", a, gram, a)
        out = {}
        for name, sel in (("gain_held_in", visible & ~held), ("gain_held_out", visible & held)):
            cnt = int(sel.sum())
            out[name] = round(float(per_image[sel].sum()) / cnt, 4) if cnt else None
        return out

    def _changes(self, z: np.ndarray, logvar: np.ndarray) -> float:
        """Fraction of particles whose latent mean moved by more than 0.1 posterior sd since the last epoch."""
        if not self.trained or not np.any(self.latent_mean):
            return 1.0
        sd = np.exp(0.5 * logvar)
        return float((np.abs(z - self.latent_mean) > 0.1 * sd).any(1).mean())

    # ------------------------------------------------------------------------------------------ checkpoints
    def state(self, iteration: int, finished: bool = False) -> dict:
        return {"ppca": self.ppca.state(iteration, finished), "encoder": self.encoder.state_dict(),
                "decoder": self.decoder.state_dict(), "optimiser": self.optimiser.state_dict(),
                "trained": self.trained, "latent_mean": self.latent_mean,
                "latent_logvar": self.latent_logvar, "final_stats": self.final_stats, "best": self.best,
                "log": self.log, "iteration": iteration, "finished": finished,
                "resolution_limit_A": self.opt.resolution_limit_A}  # fmt: skip

    def restore(self, s: dict) -> None:
        self.ppca.restore(s["ppca"])
        self.encoder.load_state_dict(s["encoder"])
        self.decoder.load_state_dict(s["decoder"])
        self.optimiser.load_state_dict(s["optimiser"])
        self.trained, self.latent_mean, self.log = s["trained"], s["latent_mean"], s["log"]
        self.latent_logvar, self.final_stats, self.best = s["latent_logvar"], s["final_stats"], s["best"]


@dataclass
class VAEDecoder:
    """Maps anywhere in a fitted landscape (picklable): ``maps(latents [n, Z]) -> [n, D, D, D]`` in the written
    (rotated) latent coordinates: ``mu + sum_b a_b(z) W_b`` with ``z = centre + rotation^T latent``."""

    decoder: Decoder
    mean_map: torch.Tensor  # [D, D, D]
    basis: torch.Tensor  # [B, D, D, D]
    centre: np.ndarray  # [Z]
    rotation: np.ndarray  # [Z, Z]: latent = rotation (z - centre)

    @torch.no_grad()
    def coefficients(self, latents: np.ndarray) -> torch.Tensor:
        z = np.asarray(latents, dtype=np.float64) @ self.rotation + self.centre
        self.decoder.eval()
        dev = self.decoder.out_offset.device
        return self.decoder(torch.as_tensor(z, dtype=torch.float32, device=dev)).cpu()

    def maps(self, latents: np.ndarray) -> torch.Tensor:
        a = self.coefficients(np.atleast_2d(latents))
        return self.mean_map[None] + torch.einsum("nb,bzyx->nzyx", a, self.basis)


def fit_vae(
    dataset,
    options: VAEOptions,
    *,
    progress: Callable[[str, int, int], None] | None = None,
    focus_mask: torch.Tensor | None = None,
    executor=None,
    checkpoint: Path | None = None,
) -> Result:
    """Tilt-series VAE of a :class:`~tomohet.data.model.TiltSeriesParticles` dataset (landscape contract:
    :mod:`.landscape`; see the module docstring). ``checkpoint`` (a file) is written after every epoch and a run
    resumes from it; ``executor`` runs the passes on Dask workers."""
    opt = options
    check_options(opt)
    n, t0 = dataset.n_particles, time.perf_counter()
    model, opt, start, finished, info, fingerprint = start_or_resume(
        dataset, opt, "vae", lambda o: VAEModel(dataset, o, executor, focus_mask), checkpoint, focus_mask, progress
    )
    run_iterations(model, n_iter=opt.n_iter, start=start, finished=finished, tol_changes=0.0, n_particles=n,
                   n_images=dataset.n_images, progress=progress, checkpoint=checkpoint,
                   fingerprint=fingerprint)  # fmt: skip
    finish_training(model, info, progress)
    return vae_result(dataset, opt, model, {**info, "seconds": round(time.perf_counter() - t0, 2)})


def finish_training(model: VAEModel, info: dict, progress=None) -> None:
    """After the epochs: the networks of the best held-out epoch (or, when every epoch refined the maps, one more
    training on the statistics under the final maps); their figures into ``info``."""
    ts = time.perf_counter()
    if model.final_stats is None:  # every epoch refined the maps: statistics under the final ones, one more training
        model.final_stats = model.final_statistics(stage_ticker(progress, "final statistics", model.ds.n_particles))
        final = model._train(model.final_stats, len(model.log))
    else:
        final = model.log[-1]
        best = model.restore_best()
        if best is not None:
            final = model.log[best - 1]
            info["best_epoch"] = best
    info["final_seconds"] = round(time.perf_counter() - ts, 2)
    info.update({f"final_{k}": final[k] for k in ("gain_held_in", "gain_held_out", "kl_per_dimension") if k in final})


def check_options(opt: VAEOptions) -> None:
    if opt.n_components < 1:
        raise ValueError(f"n_components must be at least 1, got {opt.n_components}")
    if opt.basis < 1:
        raise ValueError(f"basis must be at least 1, got {opt.basis}")
    if not 0 < opt.tilt_keep <= 1:
        raise ValueError(f"tilt_keep must be in (0, 1], got {opt.tilt_keep}")
    if not 0 <= opt.held_out < 0.5:
        raise ValueError(f"held_out must be in [0, 0.5), got {opt.held_out}")


def vae_result(dataset, opt: VAEOptions, model: VAEModel, info: dict, method: str = "vae") -> Result:
    z = model.latent_mean
    centre = z.mean(0)
    cov = np.cov((z - centre).T).reshape(z.shape[1], z.shape[1])
    lam, u = np.linalg.eigh(cov)
    order = np.argsort(lam)[::-1]
    lam, u = np.clip(lam[order], 0, None), u[:, order]
    u = u * np.where(u[np.abs(u).argmax(0), np.arange(u.shape[1])] < 0, -1.0, 1.0)  # deterministic signs
    latents = (z - centre) @ u
    latent_sd = np.sqrt(np.einsum("nk,kl->nl", np.exp(model.latent_logvar), u**2))
    maps = model.ppca.maps
    dec = VAEDecoder(model.decoder.cpu(), maps[0].clone(), maps[1:].clone(), centre, u.T.copy())
    sd = 1.0 * np.sqrt(np.maximum(lam, 1e-12))
    # component maps: the decoder's slope along each axis at the centre (central difference over +-1 sd)
    plus = dec.maps(np.diag(sd))
    minus = dec.maps(-np.diag(sd))
    volumes = ((plus - minus) / (2 * torch.as_tensor(sd, dtype=torch.float32)[:, None, None, None])).float()
    extra = {
        "mean_map": dec.maps(np.zeros((1, z.shape[1])))[0], "explained_variance": lam,
        "explained_variance_ratio": lam / max(float(lam.sum()), 1e-30), "ratio_of": "components",
        "orthonormal": False, "latent_sd": latent_sd, "decoder": dec, "sigma2": model.ppca.sigma2.numpy(),
        "e_step_limit_A": round(opt.resolution_limit_A or 2 * dataset.pixel_size, 2),
        "working_box": model.ppca.m, "held_out_fraction": opt.held_out, **info,
    }  # fmt: skip
    return Result(method=method, options=asdict(opt), latents=latents, volumes=volumes,
                  pixel_size=dataset.pixel_size, log=model.log, extra=extra)  # fmt: skip


_DESCRIPTION = "tilt-series VAE: encoder pooled over tilts, decoder to a basis of maps, trained on the 2D images"
register(LandscapeMethod("vae", fit_vae, VAEOptions, "2d", _DESCRIPTION))
