"""Frequency analysis (paper Fig. 4): radially averaged power spectra of image sets.

For each image: luma (BT.601) in [0, 1], minus its mean, times a 2-D Hann window; power
``|FFT|^2 / sum(window^2)``; then the power averaged over rings of integer radius
``k = round(sqrt(u^2 + v^2))`` in frequency-index units, for k = 0 .. S/2 (frequency ``k / S``
cycles per pixel; the corners beyond the Nyquist ring are dropped). A set's spectrum is the mean of
its images' spectra.

The spectral distance between two sets is the mean absolute difference of their log power over the
rings k = 1 .. S/2 (DC excluded), in decibels:

    D(a, b) = mean_k |10 log10 P_a(k) - 10 log10 P_b(k)|.

A regressor's over-smoothed outputs lose power at high k, so their distance to the real photos grows.
"""

from __future__ import annotations

import numpy as np

LUMA = np.array([0.299, 0.587, 0.114])
_TINY = 1e-20  # floor on power before taking logs


def to_luma(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) or (N, H, W) uint8/float -> (N, H, W) float64 luma in [0, 1] (uint8 scaled by 1/255)."""
    x = np.asarray(images)
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    x = x.astype(np.float64) / scale
    if x.ndim == 4:
        x = x[..., :3] @ LUMA if x.shape[-1] == 3 else x[..., 0]
    if x.ndim != 3:
        raise ValueError(f"images must be (N, H, W, 3) or (N, H, W), got {np.asarray(images).shape}")
    return x


def radial_power_spectrum(images: np.ndarray, window: bool = True, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum of each image.

    Parameters
    ----------
    images : ndarray, (N, S, S, 3) or (N, S, S)
        Square images (uint8 in [0, 255] or float in [0, 1]).
    window : bool
        Multiply by a 2-D Hann window first (less leakage from the image borders).
    batch_size : int
        Images transformed at once.

    Returns
    -------
    freqs : ndarray, (S // 2 + 1,)
        Ring frequencies k / S in cycles per pixel (0 .. 0.5).
    power : ndarray, (N, S // 2 + 1) float64
        Mean power on each ring.
    """
    x = to_luma(images)
    n, h, w = x.shape
    if h != w:
        raise ValueError(f"images must be square, got {h}x{w}")
    s = h
    win = np.outer(np.hanning(s), np.hanning(s)) if window else np.ones((s, s))
    norm = (win ** 2).sum()
    fy = np.fft.fftfreq(s) * s
    radius = np.rint(np.sqrt(fy[:, None] ** 2 + fy[None, :] ** 2)).astype(int)  # (S, S) ring index
    nbins = s // 2 + 1
    keep = radius < nbins
    ring = radius[keep]
    counts = np.bincount(ring, minlength=nbins).astype(np.float64)
    out = np.empty((n, nbins), np.float64)
    for i in range(0, n, batch_size):
        b = x[i:i + batch_size]
        b = (b - b.mean(axis=(1, 2), keepdims=True)) * win
        p = np.abs(np.fft.fft2(b)) ** 2 / norm  # (B, S, S)
        pk = p[:, keep]  # (B, M)
        for j in range(len(b)):
            out[i + j] = np.bincount(ring, weights=pk[j], minlength=nbins) / counts
    return np.arange(nbins) / s, out


def mean_spectrum(images: np.ndarray, window: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A set's spectrum: (freqs (K,), mean power over the images (K,)); see :func:`radial_power_spectrum`."""
    freqs, p = radial_power_spectrum(images, window=window)
    return freqs, p.mean(axis=0)


def spectral_distance(spec_a: np.ndarray, spec_b: np.ndarray) -> float:
    """Mean absolute difference of log power, in dB, over the rings k >= 1 (DC excluded).

    Parameters
    ----------
    spec_a, spec_b : ndarray, (K,)
        Set spectra from :func:`mean_spectrum` (same image size).
    """
    a, b = np.asarray(spec_a, np.float64), np.asarray(spec_b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"spectra must be 1-D of the same length >= 2, got {a.shape} and {b.shape}")
    la = 10 * np.log10(np.maximum(a[1:], _TINY))
    lb = 10 * np.log10(np.maximum(b[1:], _TINY))
    return float(np.abs(la - lb).mean())


def plot_spectra(path, spectra: dict[str, tuple[np.ndarray, np.ndarray]], title: str = "Radially averaged power spectrum"):
    """Plot log power vs frequency for named sets and save it as a PNG (atomically).

    Parameters
    ----------
    path : path-like
        Destination ``.png``.
    spectra : dict of str -> (freqs (K,), power (K,))
        One line per set, labelled by its name (DC ring omitted).
    title : str
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pixelnn.io import atomic_path

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, (freqs, power) in spectra.items():
        ax.plot(freqs[1:], 10 * np.log10(np.maximum(power[1:], _TINY)), label=name, lw=1.6)
    ax.set_xlabel("frequency (cycles / pixel)")
    ax.set_ylabel("power (dB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
