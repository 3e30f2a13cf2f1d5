"""The networks of the tilt-series VAE (:mod:`.vae`) and their training on per-image statistics.

The decoder does not draw images: it maps a latent ``z`` to coefficients ``a(z)`` of a basis of 3D maps, and the
particle's map is ``mu + sum_b a_b(z) W_b``. Because projection, CTF and exposure are linear, an image's Gaussian
log-likelihood is then a quadratic in ``a`` whose coefficients (:class:`~.ppca_pass.ImageStatistics`: ``b_ij``,
``G_ij``, ``r2_ij``) one pass of the shared forward model computes for all images; the networks train on those
statistics without touching an image or a projector, which is what makes training fast on a CPU.

- **Encoder** (per-image encoding, permutation-invariant pooling over a particle's visible tilts): each image's
  statistics are its linear encoding; the sum over the tilts the particle has (any count, missing tilts are
  masked) gives ``b`` and ``G``; the MLP reads the regularised least-squares coefficients ``(I + G)^-1 b`` and the
  log precisions ``log diag(I + G)`` (how well the particle's tilts, CTFs and doses determine each coefficient)
  and returns the mean and log-variance of ``q(z | particle)``.
- **Decoder**: an MLP ``z -> a``, followed by a fixed affine map that keeps the coefficients whitened when the
  basis is re-expressed (parameter expansion after every M-step, :meth:`Decoder.reparametrise`).
- **Loss** per particle: ``-log p(X | a(z)) = (a^T G a - 2 a^T b) / 2`` + const over its held-in images, plus
  ``beta`` x KL to ``N(0, I)`` with free bits per latent dimension (Kingma et al. 2016, NeurIPS; a guard against
  posterior collapse, the failure of cryoDRGN-ET and tomoDRGN on the hard 4-state set).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .distributed import rank_and_size, sum_over_processes


def mlp(n_in: int, n_out: int, hidden: int, layers: int) -> nn.Sequential:
    """``layers`` hidden layers of ``hidden`` units with ReLU, then a linear output."""
    mods: list[nn.Module] = []
    width = n_in
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    mods.append(nn.Linear(width, n_out))
    return nn.Sequential(*mods)


def run_mlp(net: nn.Module, x: torch.Tensor, amp: torch.dtype | None) -> torch.Tensor:
    """``net(x)`` in float32, or under autocast to ``amp`` (mixed precision: the MLP's matrix products in bfloat16,
    the result back in float32). The statistics around the MLPs (Cholesky solves, the quadratic likelihood)
    always stay in float32."""
    if amp is None:
        return net(x)
    with torch.autocast(device_type=x.device.type, dtype=amp):
        out = net(x)
    return out.float()


class Encoder(nn.Module):
    """``q(z | particle)`` from the pooled statistics ``b`` ``[n, B]`` and ``G`` ``[n, B, B]`` of its tilts."""

    def __init__(self, n_basis: int, n_latent: int, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.net = mlp(2 * n_basis, 2 * n_latent, hidden, layers)
        self.n_latent = n_latent
        self.amp: torch.dtype | None = None  # the MLP's autocast dtype (mixed precision), None: float32

    def forward(self, b: torch.Tensor, gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        eye = torch.eye(b.shape[-1], dtype=b.dtype, device=b.device)
        prec = gram + eye
        chol = torch.linalg.cholesky(prec)
        u = torch.cholesky_solve(b[..., None], chol)[..., 0]
        logp = torch.log(torch.diagonal(prec, dim1=-2, dim2=-1))
        out = run_mlp(self.net, torch.cat([u, logp], -1), self.amp)
        return out[:, : self.n_latent], out[:, self.n_latent :].clamp(-12.0, 6.0)


class Decoder(nn.Module):
    """``a(z) = A mlp(z) + c``; ``A`` and ``c`` are buffers that only :meth:`reparametrise` changes."""

    def __init__(self, n_latent: int, n_basis: int, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.net = mlp(n_latent, n_basis, hidden, layers)
        self.register_buffer("out_matrix", torch.eye(n_basis))
        self.register_buffer("out_offset", torch.zeros(n_basis))
        self.amp: torch.dtype | None = None  # the MLP's autocast dtype (mixed precision), None: float32

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        amp = getattr(self, "amp", None)  # decoders pickled before mixed precision (decoder.pt) have no ``amp``
        return run_mlp(self.net, z, amp) @ self.out_matrix.T + self.out_offset

    @torch.no_grad()
    def reparametrise(self, eta: np.ndarray, chol: np.ndarray) -> None:
        """The basis was re-expressed so that old coefficients are ``eta + L a_new``: output ``L^-1 (a - eta)``."""
        inv = torch.linalg.inv(torch.as_tensor(chol, dtype=torch.float64)).to(self.out_matrix)
        eta_t = torch.as_tensor(eta, dtype=self.out_offset.dtype, device=self.out_offset.device)
        self.out_matrix.copy_(inv @ self.out_matrix)
        self.out_offset.copy_(inv @ (self.out_offset - eta_t))


@dataclass
class TrainingSettings:
    """How :func:`train_networks` trains (see :class:`~.vae.VAEOptions` for the meaning and defaults)."""

    passes: int
    batch: int
    beta: float
    free_bits: float
    tilt_keep: float
    seed: int


def pooled(b: torch.Tensor, gram: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums over the kept tilts: ``b`` ``[n, T, B]``, ``gram`` ``[n, T, B, B]``, ``keep`` ``[n, T]`` (0/1)."""
    k = keep.to(b.dtype)
    return (b * k[..., None]).sum(1), (gram * k[..., None, None]).sum(1)


def negative_log_likelihood(a: torch.Tensor, b: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """``(a^T G a - 2 a^T b) / 2`` ``[n]`` (the Gaussian negative log-likelihood up to a constant)."""
    return 0.5 * torch.einsum("ni,nij,nj->n", a, gram, a) - (a * b).sum(-1)


def kl_per_dimension(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL divergence of ``N(mu, exp(logvar))`` to ``N(0, 1)`` per particle and latent dimension ``[n, Z]``."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)


def batches(n: int, size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    perm = torch.randperm(n, generator=generator)
    for lo in range(0, n, size):
        yield perm[lo : lo + size]


class _Networks(nn.Module):
    """Encoder and decoder as one module (what :class:`DistributedDataParallel` wraps): the posterior of a batch
    and the coefficients decoded from a draw of it."""

    def __init__(self, encoder: Encoder, decoder: Decoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, b, gram, eps):
        mu, logvar = self.encoder(b, gram)
        return mu, logvar, self.decoder(mu + eps * torch.exp(0.5 * logvar))


def _data_parallel(encoder: Encoder, decoder: Decoder) -> nn.Module:
    """The networks, wrapped for data-parallel training when this is one process of several (every process
    holds the same parameters; gradients are averaged across processes after every backward pass)."""
    nets = _Networks(encoder, decoder)
    if rank_and_size()[1] == 1:
        return nets
    from torch.nn.parallel import DistributedDataParallel

    dev = next(encoder.parameters()).device
    return DistributedDataParallel(nets, device_ids=[dev] if dev.type == "cuda" else None)


def train_networks(
    encoder: Encoder,
    decoder: Decoder,
    optimiser: torch.optim.Optimizer,
    b: torch.Tensor,
    gram: torch.Tensor,
    held_in: torch.Tensor,
    settings: TrainingSettings,
) -> dict:
    """Train on per-image statistics ``b`` ``[N, T, B]``, ``gram`` ``[N, T, B, B]`` (float32, on the networks'
    device); ``held_in`` ``[N, T]`` marks the visible images that may be used. Each step encodes every particle
    of a batch from a random ``tilt_keep`` fraction of its held-in tilts (tomoDRGN's tilt subsampling; at least
    one tilt) and scores the decoded coefficients on all of them. Deterministic with ``settings.seed``.

    In a distributed job (:mod:`.distributed`) every process draws the same batches and random numbers and
    takes every ``size``-th particle of each batch; its loss is its share of the batch's loss, so the averaged
    gradient is the whole batch's, as in one process (up to the order of floating-point sums).
    Returns the mean loss, negative log-likelihood and KL per particle over the last pass."""
    gen = torch.Generator().manual_seed(settings.seed)
    dev = b.device
    n = b.shape[0]
    rank, size = rank_and_size()
    nets = _data_parallel(encoder, decoder)
    full_b, full_g = pooled(b, gram, held_in)
    totals = {"loss": 0.0, "nll": 0.0, "kl": 0.0}
    nets.train()
    for p in range(settings.passes):
        last = p == settings.passes - 1
        for idx in batches(n, settings.batch, gen):
            hin = held_in[idx.to(dev)]
            draw = torch.rand(hin.shape, generator=gen).to(dev) < settings.tilt_keep
            eps = torch.randn((len(idx), encoder.n_latent), generator=gen).to(dev)
            mine = slice(rank, None, size)  # this process' share of the batch
            idx_d, hin, draw, eps = idx[mine].to(dev), hin[mine], draw[mine], eps[mine]
            sub = hin & draw
            sub = torch.where(sub.any(1, keepdim=True), sub, hin)
            eb, eg = pooled(b[idx_d], gram[idx_d], sub)
            mu, logvar, a = nets(eb, eg, eps)
            nll = negative_log_likelihood(a, full_b[idx_d], full_g[idx_d])
            kl = kl_per_dimension(mu, logvar)
            # free bits: a latent dimension whose batch-mean KL is below ``free_bits`` gets no KL gradient
            kl_mean = sum_over_processes(kl.sum(0).detach()) / len(idx)
            active = (kl_mean > settings.free_bits).to(kl.dtype)
            share = (nll.sum() + settings.beta * (kl.sum(0) * active).sum()) / len(idx)
            optimiser.zero_grad(set_to_none=True)
            (share * size).backward()  # DDP averages the processes' gradients: the sum of the shares'
            optimiser.step()
            if last:
                batch_nll = float(sum_over_processes(nll.detach().sum())) / len(idx)
                loss = batch_nll + settings.beta * float(kl_mean.clamp_min(settings.free_bits).sum())
                w = len(idx) / n
                totals["loss"] += w * loss
                totals["nll"] += w * batch_nll
                totals["kl"] += w * float(kl_mean.sum())
    return totals


@torch.no_grad()
def encode(encoder: Encoder, b: torch.Tensor, gram: torch.Tensor, held_in: torch.Tensor, batch: int = 4096):
    """Posterior means and log-variances ``([N, Z], [N, Z])`` from all held-in tilts."""
    encoder.eval()
    mus, lvs = [], []
    for lo in range(0, b.shape[0], batch):
        eb, eg = pooled(b[lo : lo + batch], gram[lo : lo + batch], held_in[lo : lo + batch])
        mu, lv = encoder(eb, eg)
        mus.append(mu)
        lvs.append(lv)
    return torch.cat(mus), torch.cat(lvs)


@torch.no_grad()
def coefficient_moments(
    encoder: Encoder, decoder: Decoder, b: torch.Tensor, gram: torch.Tensor, held_in: torch.Tensor,
    samples: int, generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Mean ``[n, B]`` and covariance ``[n, B, B]`` of ``a(z)`` under ``q(z | particle)`` (``samples`` draws; the
    moments the M-step of the basis needs)."""
    mu, logvar = encode(encoder, b, gram, held_in)
    decoder.eval()
    eps = torch.randn((samples, *mu.shape), generator=generator).to(mu.device)
    a = decoder((mu + eps * torch.exp(0.5 * logvar)).reshape(-1, mu.shape[1])).reshape(samples, mu.shape[0], -1)
    mean = a.mean(0)
    dev = a - mean
    cov = torch.einsum("sni,snj->nij", dev, dev) / max(samples - 1, 1)
    return mean, cov
