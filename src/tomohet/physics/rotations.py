"""Rotations in RELION's conventions.

RELION's ZYZ Euler angles (rot, tilt, psi) give the matrix ``A = Rz(psi) Ry(tilt) Rz(rot)`` (passive
rotations), as in RELION's ``Euler_angles2matrix``. ``A`` maps reference coordinates to image (projection)
coordinates: ``x_img = A @ x_ref``; the projection is along the image z axis, so a 2D image frequency
``(kx, ky)`` samples the reference transform at ``A.T @ (kx, ky, 0)``. Vectors are ordered (x, y, z).
Angles are in degrees at the API surface (files) and converted here.
"""

from __future__ import annotations

import numpy as np
import torch


def euler_to_matrix(rot: torch.Tensor | np.ndarray, tilt, psi, degrees: bool = True) -> torch.Tensor:
    """RELION ZYZ Euler angles -> rotation matrices ``[..., 3, 3]`` (float64 if inputs are numpy)."""
    rot, tilt, psi = (
        torch.as_tensor(np.array(a, copy=True) if isinstance(a, np.ndarray) else a) for a in (rot, tilt, psi)
    )
    if not torch.is_floating_point(rot):
        rot, tilt, psi = rot.double(), tilt.double(), psi.double()
    if degrees:
        rot, tilt, psi = torch.deg2rad(rot), torch.deg2rad(tilt), torch.deg2rad(psi)
    ca, sa = torch.cos(rot), torch.sin(rot)
    cb, sb = torch.cos(tilt), torch.sin(tilt)
    cg, sg = torch.cos(psi), torch.sin(psi)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    m = torch.stack(
        [
            torch.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], -1),
            torch.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], -1),
            torch.stack([sc, ss, cb], -1),
        ],
        -2,
    )
    return m


def matrix_to_euler(m: torch.Tensor, degrees: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`euler_to_matrix` (RELION's ``Euler_matrix2angles``); tilt in [0, 180]."""
    m = torch.as_tensor(m)
    tilt = torch.arccos(torch.clamp(m[..., 2, 2], -1.0, 1.0))
    sb = torch.sin(tilt)
    regular = sb.abs() > 1e-6
    rot = torch.where(regular, torch.atan2(m[..., 2, 1], m[..., 2, 0]), torch.zeros_like(tilt))
    psi = torch.where(
        regular,
        torch.atan2(m[..., 1, 2], -m[..., 0, 2]),
        # gimbal lock: only rot + psi (tilt 0) or psi - rot (tilt 180) is defined; put it all in psi
        torch.atan2(-m[..., 1, 0], m[..., 0, 0]),
    )
    if degrees:
        return torch.rad2deg(rot), torch.rad2deg(tilt), torch.rad2deg(psi)
    return rot, tilt, psi


def rotation_about_y(angle_deg: float | torch.Tensor) -> torch.Tensor:
    """Active rotation of vectors about the y axis (a tilt-series tilt), ``[..., 3, 3]`` float64."""
    a = torch.deg2rad(torch.as_tensor(angle_deg, dtype=torch.float64))
    c, s = torch.cos(a), torch.sin(a)
    z, o = torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([torch.stack([c, z, s], -1), torch.stack([z, o, z], -1), torch.stack([-s, z, c], -1)], -2)


def random_rotations(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` rotation matrices drawn uniformly from SO(3) (via uniform unit quaternions), float64."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def tilt_angle_of(projection: torch.Tensor) -> torch.Tensor:
    """Specimen tilt (degrees) seen by a tilt image whose 3x3 projection rotation is ``projection``: the angle
    between the beam (image z) and the tomogram z axis, signed as :func:`rotation_about_y` (a projection
    ``rotation_about_y(t)`` has tilt ``t``)."""
    zz = projection[..., 2, 2].clamp(-1, 1)
    ang = torch.rad2deg(torch.arccos(zz))
    return torch.where(projection[..., 2, 0] > 0, -ang, ang)


def mirror_z() -> torch.Tensor:
    """``diag(1, 1, -1)``: right-multiplied onto image rotations it mirrors the reconstructed map in z
    (the ``--flip-hand`` option)."""
    return torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))


def rotation_vector_to_matrix(v: torch.Tensor) -> torch.Tensor:
    """Active rotations ``[..., 3, 3]`` by ``|v|`` radians about the axis ``v / |v|`` (Rodrigues' formula), for
    rotation vectors ``v`` ``[..., 3]`` (the identity for ``v = 0``)."""
    v = torch.as_tensor(v)
    angle = v.norm(dim=-1, keepdim=True)
    axis = v / angle.clamp_min(1e-30)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([torch.stack([zero, -z, y], -1), torch.stack([z, zero, -x], -1),
                     torch.stack([-y, x, zero], -1)], -2)  # fmt: skip
    s, c = torch.sin(angle)[..., None], torch.cos(angle)[..., None]
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand(k.shape)
    return eye + s * k + (1 - c) * (k @ k)


def rotation_angle(r: torch.Tensor) -> torch.Tensor:
    """Angle (radians) of rotation matrices ``[..., 3, 3]``: ``arccos((trace - 1) / 2)``."""
    tr = r.diagonal(dim1=-2, dim2=-1).sum(-1)
    return torch.arccos(((tr - 1) / 2).clamp(-1.0, 1.0))
