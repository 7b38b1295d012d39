"""The IWAE bound computed through an exported model folder (the ONNX graphs and, for a learned prior, its
mixture file) with onnxruntime and numpy: the check that what is served has the likelihood PyTorch measured.

log w_i = log p(x | z_i) + log p(z_i) - log q(z_i | x), z_i ~ q(z|x), bound = log mean_i w_i (Burda et al.
2016). p(x|z) uses the decoder's mean image (Bernoulli or Gaussian, as `vae_contract.likelihoods`), p(z)
is N(0, I) or the manifest's mixture (`vae_contract.priors`). The noise comes from numpy's PCG64 with `seed`,
so the number is reproducible but not the same draw as PyTorch's: the two agree within the estimator's noise.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from vae_contract.likelihoods import LOG_2PI, reconstruction_nll
from vae_contract.manifest import verify_model_dir
from vae_contract.priors import read_mixture


def onnx_iwae_bound(model_dir: Path, x: np.ndarray, k: int, seed: int = 0, chunk: int = 100) -> np.ndarray:
    """(B,) the IWAE bound in nats for images x (B, C, H, W) float32, through the exported graphs."""
    import onnxruntime as ort

    model_dir = Path(model_dir)
    manifest = verify_model_dir(model_dir)
    if manifest.likelihood not in ("bernoulli", "gaussian"):
        raise ValueError(f"likelihood {manifest.likelihood!r}: only bernoulli and gaussian are evaluated")
    providers = ["CPUExecutionProvider"]
    encoder = ort.InferenceSession(str(model_dir / manifest.encoder.file), providers=providers)
    decoder = ort.InferenceSession(str(model_dir / manifest.decoder.file), providers=providers)
    spec = manifest.prior
    prior = read_mixture(model_dir / spec.file, spec.components, manifest.latent_dim) if spec else None
    mean, log_var = (a.astype(np.float64) for a in encoder.run(None, {"x": np.ascontiguousarray(x)}))
    b, d = mean.shape
    rng = np.random.default_rng(seed)
    total = np.full(b, -np.inf)
    done = 0
    while done < k:
        step = min(chunk, k - done)
        eps = rng.standard_normal((step, b, d))
        z = mean + np.exp(0.5 * log_var) * eps  # (step, B, D)
        (images,) = decoder.run(None, {"z": z.reshape(step * b, d).astype(np.float32)})
        x_rep = np.broadcast_to(x, (step, *x.shape)).reshape(step * b, *x.shape[1:])
        nll = reconstruction_nll(x_rep, images, manifest.likelihood, manifest.gaussian_sigma)
        log_pz = prior.log_density(z) if prior is not None else -0.5 * np.sum(LOG_2PI + z**2, axis=-1)
        log_qz = -0.5 * np.sum(LOG_2PI + log_var + eps**2, axis=-1)
        log_w = -nll.reshape(step, b) + log_pz - log_qz  # (step, B)
        top = log_w.max(axis=0)
        total = np.logaddexp(total, top + np.log(np.exp(log_w - top).sum(axis=0)))
        done += step
    return total - math.log(k)


def main(argv: list[str] | None = None) -> int:
    """`python -m training.onnx_eval models/mnist/2 --k 1000`: the bound on the folder's own test set (its
    training config names the data; binarized once with seed 0 when it was trained binarized)."""
    import argparse
    import json

    from training.config import TrainConfig
    from training.evaluate import eval_tensor, evaluation_data

    parser = argparse.ArgumentParser(prog="python -m training.onnx_eval", description=main.__doc__)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=0, help=">0: the first N test images only")
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args(argv)
    config = TrainConfig.from_dict(verify_model_dir(args.model_dir).training)
    x = eval_tensor(evaluation_data(config, args.data_dir, args.limit), config).numpy()
    total = 0.0
    for start in range(0, len(x), args.batch):
        batch = x[start : start + args.batch]
        total += float(onnx_iwae_bound(args.model_dir, batch, args.k, seed=start).sum())
    print(json.dumps({"examples": len(x), "iwae_k": args.k, "iwae_nll": round(-total / len(x), 4)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
