"""Continuous landscapes by linear decomposition: the contract every landscape method follows, its registry,
and the helpers the ``landscape`` command uses for every method.

**The contract.** A landscape method is a function

    fit(dataset, options, *, progress=None, focus_mask=None, executor=None, checkpoint=None) -> Result

registered in :data:`LANDSCAPE_METHODS` under its name as a :class:`LandscapeMethod` (``fit``, ``options_cls``,
``inputs``: ``"2d"`` tilt-series stacks, ``"3d"`` subtomograms or ``"both"``). Its options class is a dataclass
that takes (at least) the fields of :class:`LandscapeOptions` as keywords. The returned
:class:`~tomohet.methods.result.Result` has

- ``method``, ``options`` (a dict), ``pixel_size``;
- ``latents`` ``[N, L]`` float64, one row per particle in dataset order, columns ordered by decreasing
  variance (component 0 first);
- ``volumes`` ``[L, D, D, D]`` float32 component maps, such that the map of a particle at latent ``z`` is
  ``extra["mean_map"] + sum_l z_l * volumes[l]`` (linear methods; the basis is orthonormal when the method
  says so in ``extra["orthonormal"]``);
- ``extra["mean_map"]`` ``[D, D, D]``; ``extra["explained_variance"]`` ``[L]``: the *eigenvalues*, i.e. the
  variance of each latent column (with an orthonormal basis: the variance of the maps along that component,
  density^2 summed over voxels); ``extra["explained_variance_ratio"]`` ``[L]``: the same as fractions (of the
  total variance where the method knows it, else of the sum over the L components; ``extra["ratio_of"]`` says
  which: ``"total"`` or ``"components"``); optionally ``extra["latent_sd"]`` ``[N, L]``, posterior standard
  deviations of the latents;
- ``log``: one dict per iteration/pass with ``iteration``, ``seconds``, ``images_per_s`` plus method keys.

**Registration.** A method module ends with ``register(LandscapeMethod("name", fit, Options, "2d"))``;
:func:`load_builtin` (called by :func:`get_method` and by :mod:`.registry`) imports the built-in method modules
(:data:`BUILTIN_MODULES`) on use rather than when this module is imported (a repeat is a ``sys.modules``
look-up), so that a built-in module
can be imported first (``from tomohet.methods.ppca import ...`` imports this module half-way through its own
import).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError
from .result import Result

INPUT_KINDS = ("2d", "3d", "both")
BUILTIN_MODULES = ("ppca", "wmd_pca", "msvd", "vae", "vae3d")


@dataclass
class LandscapeOptions:
    """Options every landscape method takes (methods subclass this and add their own). Resolutions in Angstrom,
    doses in e/A^2. ``n_iter`` is ignored by methods that do not iterate."""

    n_components: int = 8
    seed: int = 0
    resolution_limit_A: float | None = None  # band limit (default: the method's automatic band)
    n_iter: int = 15
    batch_size: int = 32
    max_dose: float | None = None  # images with more pre-exposure are ignored (2D methods)
    # particles per map/reduce partition (fixed: results do not depend on workers); small enough that a few
    # hundred particles keep several processes or Dask workers busy
    partition_size: int = 128


@dataclass(frozen=True)
class LandscapeMethod:
    """A registered landscape method (see the module docstring for the contract)."""

    name: str
    fit: Callable[..., Result]
    options_cls: type = LandscapeOptions
    inputs: str = "2d"  # "2d", "3d" or "both"
    description: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.inputs not in INPUT_KINDS:
            raise ValueError(f"inputs must be one of {INPUT_KINDS}, got {self.inputs!r}")

    def accepts(self, subtomograms: bool) -> bool:
        """Whether this method reads 3D subtomograms (``subtomograms=True``) or 2D tilt stacks."""
        return self.inputs == "both" or self.inputs == ("3d" if subtomograms else "2d")


LANDSCAPE_METHODS: dict[str, LandscapeMethod] = {}


def register(method: LandscapeMethod) -> LandscapeMethod:
    """Add (or replace) a method in :data:`LANDSCAPE_METHODS` and in the table of every method
    (:mod:`tomohet.methods.registry`, kind ``continuous``)."""
    from .registry import MethodSpec, registered
    from .registry import register as register_any

    LANDSCAPE_METHODS[method.name] = method
    if registered(method.name) is None:
        inputs = frozenset({"2d", "3d"}) if method.inputs == "both" else frozenset({method.inputs})
        takes = frozenset({"focus_mask", "executor"})
        register_any(MethodSpec(method.name, "continuous", inputs, method.options_cls, method.fit, takes=takes,
                                description=method.description))  # fmt: skip
    return method


def get_method(name: str, field_name: str = "--method") -> LandscapeMethod:
    """The registered method ``name``, or a one-line :class:`InputError` listing the known ones."""
    load_builtin()
    if name not in LANDSCAPE_METHODS:
        known = ", ".join(sorted(LANDSCAPE_METHODS)) or "none registered"
        raise InputError(None, f"unknown landscape method {name!r} (expected one of: {known})", field_name)
    return LANDSCAPE_METHODS[name]


# ------------------------------------------------------------------------------------------------- helpers


def orthonormalize_basis(
    mean_map: torch.Tensor,
    basis: torch.Tensor,
    latents: np.ndarray,
    latent_cov: np.ndarray | None = None,
) -> dict:
    """Re-express a linear landscape ``map(z) = mean + sum_l z_l basis[l]`` with an orthonormal basis (voxels as
    vectors) whose latent columns are centred, uncorrelated and ordered by decreasing variance.

    ``basis`` ``[L, D, D, D]``, ``latents`` ``[N, L]`` (e.g. posterior means), ``latent_cov`` ``[N, L, L]``
    (posterior covariances, optional). With ``basis^T = Q R`` and ``y = R z``, the covariance of the ``y`` (of the
    latents given, i.e. posterior means) is diagonalised, ``U^T cov(y) U = diag(lambda)``; the new basis is
    ``Q U``, the latents ``U^T (y - mean(y))`` and the mean map absorbs ``Q mean(y)``: every particle's map is
    unchanged. Returns ``mean_map``, ``volumes`` ``[L, D, D, D]``, ``latents`` ``[N, L]``, ``latent_sd``
    ``[N, L]`` (or None), ``variance`` ``[L]`` (the eigenvalues ``lambda``, descending), ``transform`` ``[L, L]`` and
    ``offset`` ``[L]`` (new latent = ``transform @ z - offset``)."""
    shape = basis.shape[1:]
    n_comp = basis.shape[0]
    w = basis.reshape(n_comp, -1).double().T  # [V, L]
    q, r = torch.linalg.qr(w)
    z = torch.as_tensor(np.asarray(latents), dtype=torch.float64)
    y = z @ r.T  # [N, L]
    ybar = y.mean(0)
    yc = y - ybar
    cov = yc.T @ yc / max(len(yc) - 1, 1)
    lam, u = torch.linalg.eigh(cov)
    order = torch.argsort(lam, descending=True)
    lam, u = lam[order].clamp_min(0), u[:, order]
    # a deterministic sign: the largest-magnitude voxel of each component is positive
    vols = q @ u  # [V, L]
    sign = torch.sign(vols.gather(0, vols.abs().argmax(0, keepdim=True))).reshape(-1)
    sign[sign == 0] = 1
    vols, u = vols * sign, u * sign
    new_latents = (yc @ u).numpy()
    t = u.T @ r  # z -> new latent: t z - offset
    sd = None
    if latent_cov is not None:
        c = torch.as_tensor(np.asarray(latent_cov), dtype=torch.float64)
        sd = torch.sqrt(torch.einsum("al,nlm,am->na", t, c, t).clamp_min(0)).numpy()
    mean = (mean_map.double().reshape(-1) + q @ ybar).reshape(shape).float()
    return {
        "mean_map": mean,
        "volumes": vols.T.reshape(n_comp, *shape).float().contiguous(),
        "latents": new_latents,
        "latent_sd": sd,
        "variance": lam.numpy(),
        "transform": t.numpy(),
        "offset": (u.T @ ybar).numpy(),
    }


def landscape_maps(result: Result, latents: np.ndarray) -> torch.Tensor:
    """Maps ``[n, D, D, D]`` at latent points ``[n, L]`` (in the coordinates of ``result.latents``): the decoder's
    (``extra["decoder"].maps``) for a non-linear landscape, else ``mean + sum_l z_l volumes[l]``."""
    z = np.atleast_2d(np.asarray(latents, dtype=np.float64))
    decoder = result.extra.get("decoder")
    if decoder is not None:
        return decoder.maps(z).float()
    zt = torch.as_tensor(z, dtype=torch.float32)
    return result.extra["mean_map"].float()[None] + torch.einsum("nl,lzyx->nzyx", zt, result.volumes.float())


def maps_along_component(
    result: Result, component: int, steps: int = 7, span_sd: float = 2.0
) -> tuple[np.ndarray, torch.Tensor]:
    """Maps along one component of a landscape (:func:`landscape_maps`) at ``steps`` values of that latent column
    evenly spaced over +-``span_sd`` standard deviations around its mean, the other columns at their means.
    Returns the latent values ``[steps]`` and the maps ``[steps, D, D, D]``."""
    zall = np.asarray(result.latents, dtype=np.float64)
    z = zall[:, component]
    sd = float(z.std()) if len(z) > 1 else 1.0
    values = float(z.mean()) + np.linspace(-span_sd, span_sd, steps) * sd
    points = np.repeat(zall.mean(0, keepdims=True), steps, 0)
    points[:, component] = values
    return values, landscape_maps(result, points)


def cluster_latents(
    latents: np.ndarray, k: int, method: str = "kmeans", seed: int = 0, information: dict | None = None
) -> np.ndarray:
    """Cluster labels ``[N]`` (0-based) of latents ``[N, L]``: ``"kmeans"`` (20 starts), ``"gmm"`` (Gaussian
    mixture, full covariances, 5 starts, initialised by k-means) or ``"xd"`` (a Gaussian mixture fitted through
    each particle's own likelihood, :mod:`.latent_mixture`; needs ``information``, the ``{"b", "G"}`` a PPCA
    result carries as ``extra["latent_information"]``); deterministic with ``seed``."""
    z = np.asarray(latents, dtype=np.float64)
    if k < 1 or k > len(z):
        raise InputError(None, f"cannot make {k} clusters of {len(z)} particles", "--clusters")
    if method == "xd":
        if information is None:
            raise InputError(None, "xd clustering needs the latents' likelihood (a ppca result)", "method")
        from .latent_mixture import fit_latent_mixture

        return fit_latent_mixture(information["b"], information["G"], k, seed=seed).labels.astype(int)
    if method == "kmeans":
        from sklearn.cluster import KMeans

        return KMeans(n_clusters=k, n_init=20, random_state=seed).fit_predict(z).astype(int)
    if method == "gmm":
        from sklearn.mixture import GaussianMixture

        gm = GaussianMixture(n_components=k, covariance_type="full", n_init=5, random_state=seed, reg_covar=1e-6)
        return gm.fit(z).predict(z).astype(int)
    raise InputError(None, f"unknown clustering {method!r} (kmeans, gmm, xd)", "method")


def load_builtin() -> None:
    """Import the built-in method modules (each registers itself into :data:`LANDSCAPE_METHODS`)."""
    for mod in BUILTIN_MODULES:
        name = f"{__package__}.{mod}"
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a built-in method not written yet; any other missing module is an error
            if exc.name != name:
                raise
