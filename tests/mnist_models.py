"""Linear VAEs fitted to real MNIST in closed form, for tests that serve models: no torch, under a second.

Encoder: the posterior of probabilistic PCA (Tipping and Bishop 1999, section 3.2). With the maximum-
likelihood W = U (L - s2 I)^(1/2), M = W^T W + s2 I = L, so q(z|x) = N(L^-1 (L - s2 I)^(1/2) U^T (x - mean),
s2 L^-1): a linear mean and a constant log-variance. U and L, the top principal axes and variances, come from
a randomized range finder (Halko, Martinsson and Tropp 2011, algorithms 4.4 and 5.1), a few thin matrix
products instead of the 784 x 784 covariance and its eigendecomposition; s2, the mean of the discarded
variances, from the covariance's trace.
Decoder: x = sigmoid(z @ W_d + b_d), a logistic regression per pixel on the training images' posterior means,
fitted by iteratively reweighted least squares (Newton's method on the Bernoulli log-likelihood of the grey
levels) from the least-squares fit of their logits. Samples of N(0, I) decode to blurry digits, and a
reconstruction is clearly closer to its own digit than to other classes, as a small trained VAE's are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx_models import LinearVAE, write_linear_vae

from vae_contract.manifest import DatasetSpec, EvaluationMetrics

IMAGE = (1, 28, 28)
# Names and latent sizes the service tests address: the default model, and a 2-D one for the manifold.
MODELS = {"tiny": 8, "tiny-2d": 2}
NEWTON_STEPS = 2  # the Bernoulli log-likelihood barely moves after two steps from the least-squares start
LOGIT_CLIP = 0.05  # grey levels are clipped to [0.05, 0.95] for the least-squares start's logits
RIDGE = 1e-4  # keeps each pixel's Hessian invertible where a border pixel is always 0
OVERSAMPLE, POWER_ITERATIONS = 10, 3  # the range finder's usual settings: the top axes to float32 accuracy


def principal_axes(centered: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top-k principal axes (D, k) and variances (k,) of centered data (N, D)."""
    n, dims = centered.shape
    probe = np.random.default_rng(0).standard_normal((dims, k + OVERSAMPLE))
    basis = np.linalg.qr(centered.T @ (centered @ probe))[0]  # (D, k + p): spans the top axes
    for _ in range(POWER_ITERATIONS):
        basis = np.linalg.qr(centered.T @ (centered @ basis))[0]
    _, singular, vt = np.linalg.svd(centered @ basis, full_matrices=False)
    return (basis @ vt.T)[:, :k], singular[:k] ** 2 / n


def fit_linear_vae(x_train: np.ndarray, latent_dim: int) -> LinearVAE:
    """A LinearVAE from flattened training images (N, D) in [0, 1]."""
    x = np.asarray(x_train, dtype=np.float64)
    mean = x.mean(axis=0)
    centered = x - mean
    axes, lam = principal_axes(centered, latent_dim)
    total = float((centered**2).sum()) / len(x)  # the covariance's trace: the sum of all its variances
    s2 = (total - lam.sum()) / (x.shape[1] - latent_dim)
    w_enc = axes * (np.sqrt(lam - s2) / lam)  # (D, q)
    b_enc = -mean @ w_enc
    z = np.hstack([x @ w_enc + b_enc, np.ones((len(x), 1))])  # posterior means, and 1 for the bias
    clipped = np.clip(x, LOGIT_CLIP, 1 - LOGIT_CLIP)
    theta = np.linalg.lstsq(z, np.log(clipped / (1 - clipped)), rcond=None)[0]  # (q + 1, D)
    k = z.shape[1]
    outer = (z[:, :, None] * z[:, None, :]).reshape(len(z), k * k)
    for _ in range(NEWTON_STEPS):
        p = 1 / (1 + np.exp(-(z @ theta)))
        grad = z.T @ (p - x)  # (k, D)
        hessians = (outer.T @ (p * (1 - p))).T.reshape(-1, k, k) + RIDGE * len(z) * np.eye(k)  # (D, k, k)
        theta -= np.linalg.solve(hessians, grad.T[:, :, None])[:, :, 0].T
    return LinearVAE(
        w_enc=w_enc.astype(np.float32),
        b_enc=b_enc.astype(np.float32),
        log_var=np.log(s2 / lam).astype(np.float32),
        w_dec=theta[:-1].astype(np.float32),
        b_dec=theta[-1].astype(np.float32),
    )


def measured_metrics(vae: LinearVAE, x_test: np.ndarray) -> EvaluationMetrics:
    """The service's reconstruct score on `x_test` (N, D): BCE at the decoded posterior mean plus the KL."""
    x = np.asarray(x_test, dtype=np.float64)
    mean = x @ vae.w_enc + vae.b_enc
    p = np.clip(1 / (1 + np.exp(-(mean @ vae.w_dec + vae.b_dec))), 1e-7, 1 - 1e-7)
    reconstruction = -(x * np.log(p) + (1 - x) * np.log(1 - p)).sum(axis=1).mean()
    log_var = vae.log_var.astype(np.float64)
    kl = (-0.5 * (1 + log_var - mean**2 - np.exp(log_var)).sum(axis=1)).mean()
    return EvaluationMetrics(
        split=f"test[:{len(x)}]",
        examples=len(x),
        binarized=False,
        neg_elbo=round(float(reconstruction + kl), 4),
        reconstruction=round(float(reconstruction), 4),
        kl=round(float(kl), 4),
        measured_with="tests/mnist_models.py: BCE at the posterior mean plus the closed-form KL",
    )


def write_mnist_models(models_dir: Path, x_train: np.ndarray, x_test: np.ndarray, source: str) -> Path:
    """`tiny/1` (latent 8) and `tiny-2d/1` (latent 2) in `models_dir`, fitted to uint8 (N, 1, 28, 28)
    MNIST images."""
    train = x_train.reshape(len(x_train), -1).astype(np.float32) / 255.0
    test = x_test.reshape(len(x_test), -1).astype(np.float32) / 255.0
    dataset = DatasetSpec(name="mnist", source=source, train_examples=len(train), test_examples=len(test))
    for name, latent_dim in MODELS.items():
        vae = fit_linear_vae(train, latent_dim)
        write_linear_vae(
            models_dir,
            name,
            vae,
            image=IMAGE,
            dataset=dataset,
            metrics=measured_metrics(vae, test),
            description=f"probabilistic PCA encoder and logistic decoder, latent {latent_dim}, on real MNIST",
        )
    return Path(models_dir)
