"""Model-free metrics, each as its reference implementation computes it.

Images are float tensors [N, 3, H, W] in [0, 1] unless said otherwise.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR [N] in dB of images in [0, 1]: 20 log10(1 / sqrt(mse)) (3DGS ``psnr``)."""
    mse = ((a.float() - b.float()) ** 2).reshape(a.shape[0], -1).mean(dim=1)
    return 20 * torch.log10(1.0 / torch.sqrt(mse))


def _gaussian_window(size: int, sigma: float, channels: int, dtype: torch.dtype) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    gauss = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    gauss = gauss / gauss.sum()
    window = torch.outer(gauss, gauss).to(dtype)
    return window.expand(channels, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM [N] of images in [0, 1], as the 3DGS code (HumanVid's TikTok script) computes it.

    Gaussian window 11x11 (sigma 1.5) applied per channel with zero padding (so the borders
    see darker neighbours), C1 = 0.01^2, C2 = 0.03^2, mean of the SSIM map over C, H, W.
    """
    a = a.float()
    b = b.float()
    channels = a.shape[1]
    window = _gaussian_window(window_size, sigma, channels, a.dtype).to(a.device)
    pad = window_size // 2

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, padding=pad, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    mu_a2, mu_b2, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
    var_a = blur(a * a) - mu_a2
    var_b = blur(b * b) - mu_b2
    cov_ab = blur(a * b) - mu_ab
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ssim_map = ((2 * mu_ab + c1) * (2 * cov_ab + c2)) / ((mu_a2 + mu_b2 + c1) * (var_a + var_b + c2))
    return ssim_map.reshape(a.shape[0], -1).mean(dim=1)


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (``np.cov(rowvar=False)``, divisor N-1) of features [N, D]."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need at least two feature vectors [N, D], got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance of two Gaussians: |mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)).

    As pytorch-fid's ``calculate_frechet_distance`` (the formula of FID and StyleGAN-V's FVD):
    the matrix square root by ``scipy.linalg.sqrtm``; when it is not finite (a singular
    product), eps on both diagonals; the tiny imaginary part numerical error leaves is dropped.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"feature sizes differ: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm(linalg, sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm(linalg, (sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Fréchet distance: imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _sqrtm(linalg, matrix: np.ndarray) -> np.ndarray:
    import warnings

    with warnings.catch_warnings():
        # fewer samples than dimensions make the product singular: expected, handled as pytorch-fid does
        warnings.simplefilter("ignore")
        result = linalg.sqrtm(matrix)
    # scipy < 1.12 may return (sqrtm, errest) when asked; the plain call returns the matrix only
    return result[0] if isinstance(result, tuple) else result


def frechet_distance_of_features(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance of two feature sets [Na, D], [Nb, D] (float64 statistics)."""
    mu_a, sigma_a = feature_stats(feats_a)
    mu_b, sigma_b = feature_stats(feats_b)
    return frechet_distance(mu_a, sigma_a, mu_b, sigma_b)


def temporal_flickering(frames: np.ndarray | torch.Tensor) -> float:
    """VBench temporal flickering of one video, frames uint8 [T, H, W, 3] (T >= 2), in [0, 1].

    (255 - mean over consecutive pairs of the mean absolute difference, in float32) / 255:
    1 is a still video.
    """
    frames = torch.as_tensor(np.asarray(frames)).float()
    if frames.ndim != 4 or frames.shape[0] < 2:
        raise ValueError(f"need at least two frames [T, H, W, C], got shape {tuple(frames.shape)}")
    per_pair = [float((frames[i] - frames[i + 1]).abs().mean()) for i in range(frames.shape[0] - 1)]
    return (255.0 - float(np.mean(np.asarray(per_pair, dtype=np.float32)))) / 255.0


def mean_or_nan(values) -> float:
    """Mean of a list of numbers, NaN when it is empty."""
    values = list(values)
    return float(np.mean(values)) if values else math.nan
