"""Image formation physics: rotations, CTF, exposure filter, Fourier slice projection and insertion,
reconstruction, FSC, masks and filters.

FFT convention (stated once, used everywhere): forward transforms are unnormalised (``torch.fft``
"backward" norm), inverse transforms carry 1/N. With this convention the 2D transform of a projection
(sum along z) equals the central slice of the 3D transform with no extra factor (central slice theorem).
Spectra are "centred half" layouts unless stated: the last axis holds kx = 0..D//2 (rfft), the other
axes are fftshifted so that k = 0 sits at index D//2.
"""

__all__ = [
    "bands",
    "ctf",
    "filters",
    "forward",
    "fourier",
    "insertion",
    "likelihood",
    "projector",
    "reconstruct",
    "rotations",
    "subtomogram",
]
