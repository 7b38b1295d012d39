"""The `models/` contract: the manifest schema and the on-disk layout, in one place for both halves.

Layout: `models/<name>/<version>/{encoder.onnx, decoder.onnx, model.json, preview.png}`, plus the files a
manifest names and hashes (a learned prior's parameters, per-class Gaussians, a pixel-group model's
scorer.onnx, the novelty calibration). Training writes it (`training.export`, `training.novelty`), the
service reads it; both validate with the same `Manifest` model so they can never disagree on what a field
means.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vae_contract.classes import COMPONENTS_KIND, CONDITIONAL_KINDS
from vae_contract.novelty import MAX_CALIBRATION, MIN_CALIBRATION, STATISTICS
from vae_contract.priors import MAX_COMPONENTS, PRIOR_KINDS

MANIFEST_FILE = "model.json"
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
SCORER_FILE = "scorer.onnx"
SAMPLER_FILE = "sampler.onnx"
PREVIEW_FILE = "preview.png"

# Every file a manifest names carries its SHA-256, as lowercase hex.
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
SCHEMA_VERSION: Literal[1] = 1
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN.removesuffix("$") + r"\Z")  # `$` would also match before a final newline
# A version is 1 to 999,999,999: nine digits, no leading zero (a folder name, a pin, a policy's list).
VERSION_DIGITS = r"[1-9][0-9]{0,8}"
MAX_VERSION = 999_999_999
VERSION_PATTERN = re.compile(VERSION_DIGITS + r"\Z", re.ASCII)
# A manifest is a few KiB; anything past this is not one, and is refused before it is read.
MAX_MANIFEST_BYTES = 1024 * 1024
# Real manifests nest 4 levels (training config, tensor shapes); orjson refuses to write more than 255.
MAX_MANIFEST_DEPTH = 32


class ManifestError(Exception):
    """A model directory that does not satisfy the contract. The message says what and where."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageSpec(_Strict):
    channels: Literal[1, 3]
    height: int = Field(ge=4, le=1024)
    width: int = Field(ge=4, le=1024)
    # Pixel values the encoder expects and the decoder produces; [0, 1] for every model we export.
    pixel_range: tuple[float, float] = (0.0, 1.0)
    # The colour transparent pixels were composited onto in the training data; uploads get the same.
    background: Literal["black", "white"] = "black"

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


class TensorSpec(_Strict):
    name: str
    dtype: Literal["float32"] = "float32"
    # "batch" marks the dynamic axis; every other entry is a fixed size.
    shape: list[int | Literal["batch"]]


class DataFileSpec(_Strict):
    """A file a graph reads its weights from (ONNX external data), beside the graph and hashed like it."""

    file: str
    sha256: Sha256


class GraphSpec(_Strict):
    file: str
    sha256: Sha256
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # Weights are embedded in `file` unless the graph is too large for one protobuf (2 GiB): then every file
    # its tensors name as external data is listed here, and a graph that names any other file is refused.
    # Left out of the file when empty, so a manifest without external data reads in services older than it.
    external_data: list[DataFileSpec] = Field(default_factory=list, exclude_if=lambda files: not files)


class DatasetSpec(_Strict):
    name: str
    source: str
    train_examples: int = Field(ge=0)
    test_examples: int = Field(ge=0)
    license: str | None = None
    split: str | None = None  # how train and test were separated, where it is not the published split
    classes: list[str] | None = None  # label names by index


def _known(value: object, known: tuple[str, ...], what: str, does: str, note: str = "") -> object:
    """`value` if this service knows it; else the error that refuses the model, naming what it knows: an old
    service never serves a newer model's field as something else."""
    if value not in known:
        raise ValueError(
            f"unknown {what} {value!r}: this service {does} {', '.join(known)}{note}; "
            "upgrade the service to serve this model"
        )
    return value


class PriorSpec(_Strict):
    """A prior other than N(0, I); a manifest without `prior` means N(0, I).

    mixture_of_gaussians: a diagonal Gaussian mixture of `components` components whose means, log-variances
    and weights are in `file` (a float32 .npy array (K, 2 latent_dim + 1), layout in vae_contract/priors.py).
    A kind this service does not know refuses the model: sampling it as anything else would be wrong.
    """

    kind: Literal["mixture_of_gaussians"]
    components: int = Field(ge=1, le=MAX_COMPONENTS)
    file: str
    sha256: Sha256
    # How the mixture was made, e.g. the VampPrior's encoder at its learned pseudo-inputs.
    source: str = ""

    @field_validator("kind", mode="before")
    @classmethod
    def _known_kind(cls, value: object) -> object:
        return _known(value, PRIOR_KINDS, "prior kind", "samples only", " (and N(0, I) without a prior)")


class EvaluationMetrics(_Strict):
    """Test-set numbers measured by `training.evaluate`, in nats per image (lower is better)."""

    split: str
    examples: int = Field(ge=1)
    binarized: bool
    neg_elbo: float
    reconstruction: float
    kl: float
    iwae_nll: float | None = None
    iwae_k: int | None = None
    active_units: int | None = None
    measured_with: str
    # For likelihoods that are code lengths of the 8-bit images: iwae_nll (else neg_elbo) / (C H W ln 2), and
    # on exactly the same test images lossless WebP, PNG and probabilistic PCA (training/baselines.py).
    bits_per_dim: float | None = None
    baselines_bits_per_dim: dict[str, float] | None = None


class ConditionalSpec(_Strict):
    """p(z | class) for conditional sampling, a hashed .npz of plain arrays (layouts: vae_contract/classes.py)

    gaussian_per_class: a Gaussian per class of the aggregate posterior (training/class_gaussians.py), z =
    mean[c] + temperature * cholesky[c] @ eps. prior_components_per_class: the class of each component of the
    manifest's mixture prior, drawn as the prior restricted to the class's components (needs `prior`). A kind
    this service does not know refuses the model: drawing it as another kind would answer the wrong class.
    """

    kind: Literal["gaussian_per_class", "prior_components_per_class"] = "gaussian_per_class"
    file: str
    sha256: Sha256
    classes: list[str]
    # How the class distributions were made, e.g. which training images' posteriors.
    source: str = ""

    @field_validator("kind", mode="before")
    @classmethod
    def _known_kind(cls, value: object) -> object:
        return _known(value, CONDITIONAL_KINDS, "conditional kind", "draws only")


class NoveltySpec(_Strict):
    """The novelty statistic on held-out in-distribution images, for conformal p-values (novelty.py here):
    `file` is an .npz of plain arrays (statistic, scores (count,) float64 sorted). Absent: reconstruct
    answers the statistic without p-values. A statistic this service does not compute
    refuses the model: p-values of another statistic would be wrong."""

    statistic: Literal["complexity_zlib_up", "neg_elbo_bits"]
    file: str
    sha256: Sha256
    count: int = Field(ge=MIN_CALIBRATION, le=MAX_CALIBRATION)
    # Which images, and how they were held out from training, e.g. half of the test split by a seeded draw.
    source: str = ""

    @field_validator("statistic", mode="before")
    @classmethod
    def _known_statistic(cls, value: object) -> object:
        return _known(value, STATISTICS, "novelty statistic", "computes")


class Manifest(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1)
    created: datetime
    description: str = ""
    latent_dim: int = Field(ge=1, le=4096)
    image: ImageSpec
    likelihood: Literal["bernoulli", "gaussian", "discretized_logistic"]
    # Standard deviation of the Gaussian likelihood p(x|z); only for likelihood == "gaussian".
    gaussian_sigma: float | None = Field(default=None, gt=0)
    # Components K of the discretized logistic mixture (PixelCNN++), only for that likelihood: the decoder's
    # second output `params` (batch, K(1+2C), H, W) holds K mixture logits, K*C mean logits and K*C log-scales
    # per pixel (vae_contract/likelihoods.py); its first output `x` is the mixture's mean image.
    mixture_components: int | None = Field(default=None, ge=1, le=64)
    # PixelCNN++'s linear coupling of the channels (only with the mixture): `params` then appends K*C(C-1)/2
    # coefficient maps, (batch, K(1 + 2C + C(C-1)/2), H, W). Absent: no coupling.
    channel_coupling: bool = False
    # Pixel groups (training/pixel_groups.py): 4 decodes the pixels of each 2x2 cell one group after another,
    # each conditioned on z and the groups before it (7: the first group split the same way again), so an
    # image's likelihood needs its own pixels, not only z. The decoder graph then outputs the image `x` alone
    # (decoded group by group), and the `scorer` graph gives the reconstruct score's first term: x (batch, C,
    # H, W) -> `nll` (batch,), -log p(x | z = the encoder's mean of x) in nats under the mixture (and its
    # neighbour anchors, if the training config has them). Absent: 1 and no scorer, the factorised decoder.
    pixel_groups: Literal[1, 4, 7] = 1
    conditional: ConditionalSpec | None = None
    encoder: GraphSpec
    decoder: GraphSpec
    scorer: GraphSpec | None = None
    # A discretized logistic model's draws from p(x | z), not its mean (training.export.SamplerGraph): inputs
    # `z` (batch, D) and `noise` (batch, N, H, W), N = M + C: per pixel, M Gumbel draws (one per mixture
    # component, neighbour anchors included) then C logistic draws, each already multiplied by the pixel
    # temperature (vae_contract/pixel_draws.py); output `x` (batch, C, H, W), 8-bit values in [0, 1].
    # Absent: the service draws a factorised model's pixels from `params` itself.
    sampler: GraphSpec | None = None
    prior: PriorSpec | None = None  # None: N(0, I)
    novelty: NoveltySpec | None = None  # None: novelty without p-values
    training: dict[str, Any]
    dataset: DatasetSpec
    metrics: EvaluationMetrics | None = None
    opset: int = Field(ge=7)
    exporters: dict[str, str]
    # Largest |onnxruntime - PyTorch| seen when the export was verified, per graph.
    parity: dict[str, float] | None = None

    @field_validator("created")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    @model_validator(mode="after")
    def _classes_need_their_prior(self) -> Manifest:
        if self.conditional is not None and self.conditional.kind == COMPONENTS_KIND and self.prior is None:
            raise ValueError(
                f"conditional kind {COMPONENTS_KIND} names components of a prior: it needs `prior`"
            )
        return self

    def graphs(self) -> dict[str, GraphSpec]:
        """The model's graphs by role: encoder, decoder and, with pixel groups, scorer and sampler."""
        found = {"encoder": self.encoder, "decoder": self.decoder}
        if self.scorer is not None:
            found["scorer"] = self.scorer
        if self.sampler is not None:
            found["sampler"] = self.sampler
        return found

    def expected_graphs(self) -> None:
        """Check that tensor names and shapes agree with latent_dim and image; raise ManifestError if not."""
        img = list(self.image.shape)
        decoded: list[list[Any]] = [["batch", *img]]
        if (self.likelihood == "discretized_logistic") != (self.mixture_components is not None):
            raise ManifestError("mixture_components is given exactly when likelihood is discretized_logistic")
        if self.channel_coupling and self.mixture_components is None:
            raise ManifestError("channel_coupling needs likelihood discretized_logistic")
        if self.mixture_components is not None and self.pixel_groups == 1:
            c, h, w = self.image.shape
            pairs = c * (c - 1) // 2 if self.channel_coupling else 0
            decoded.append(["batch", self.mixture_components * (1 + 2 * c + pairs), h, w])
        if (self.pixel_groups > 1) != (self.scorer is not None):
            raise ManifestError("a scorer graph is given exactly when pixel_groups is above 1")
        if self.pixel_groups > 1 and self.mixture_components is None:
            raise ManifestError("pixel_groups needs likelihood discretized_logistic")
        want = {
            "encoder": ([["batch", *img]], [["batch", self.latent_dim], ["batch", self.latent_dim]]),
            "decoder": ([["batch", self.latent_dim]], decoded),
        }
        if self.scorer is not None:
            want["scorer"] = ([["batch", *img]], [["batch"]])
        if self.sampler is not None:
            if self.mixture_components is None:
                raise ManifestError("a sampler graph needs likelihood discretized_logistic")
            noise = self.sampler.inputs[1].shape[1] if len(self.sampler.inputs) == 2 else 0
            c, h, w = self.image.shape
            if not isinstance(noise, int) or noise < self.mixture_components + c:
                raise ManifestError(f"sampler noise needs at least {self.mixture_components + c} maps")
            want["sampler"] = ([["batch", self.latent_dim], ["batch", noise, h, w]], [["batch", *img]])
        for role, (ins, outs) in want.items():
            graph: GraphSpec = getattr(self, role)
            got = ([t.shape for t in graph.inputs], [t.shape for t in graph.outputs])
            if got != (ins, outs):
                raise ManifestError(
                    f"{role} tensor shapes {got} disagree with latent_dim/image {(ins, outs)}"
                )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(model_dir: Path) -> Manifest:
    """Read and validate a version folder's manifest; every way it can be wrong is a ManifestError.

    The file is read only up to MAX_MANIFEST_BYTES (a manifest is a few KiB), must be a regular file (a FIFO
    or device would block or never end), UTF-8, and JSON no deeper than the parser's recursion limit.
    """
    path = Path(model_dir) / MANIFEST_FILE
    try:
        if not path.is_file():
            problem = "not a regular file" if path.exists() else "no manifest"
            raise ManifestError(f"{path}: {problem}")
        with path.open("rb") as fh:
            data = fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ManifestError(f"{path}: unreadable manifest ({exc.strerror or type(exc).__name__})") from exc
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: manifest is not UTF-8 (byte {exc.start})") from exc
    except RecursionError as exc:
        raise ManifestError(f"{path}: manifest nested too deeply") from exc
    except ValueError as exc:  # json.JSONDecodeError
        raise ManifestError(f"{path}: manifest is not JSON ({exc})") from exc
    if _depth(raw) > MAX_MANIFEST_DEPTH:  # deeper than any real manifest, and than JSON encoders accept
        raise ManifestError(f"{path}: manifest nested too deeply (more than {MAX_MANIFEST_DEPTH} levels)")
    try:
        manifest = Manifest.model_validate(raw)
    except RecursionError as exc:
        raise ManifestError(f"{path}: manifest nested too deeply") from exc
    except ValidationError as exc:
        raise ManifestError(f"{path}: invalid manifest: {_summarize(exc)}") from exc
    manifest.expected_graphs()
    return manifest


def write_manifest(model_dir: Path, manifest: Manifest) -> Path:
    # Round-trip through validation so an invalid manifest is never written.
    checked = Manifest.model_validate(manifest.model_dump())
    checked.expected_graphs()
    path = Path(model_dir) / MANIFEST_FILE
    path.write_text(checked.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path


def verify_model_dir(model_dir: Path) -> Manifest:
    """Read the manifest and check each graph file (and each side file: prior, class statistics, novelty
    calibration) exists and matches its sha256."""
    manifest = read_manifest(model_dir)
    hashed: list[tuple[str, GraphSpec | PriorSpec | ConditionalSpec | NoveltySpec | DataFileSpec]] = []
    for role, graph in manifest.graphs().items():
        hashed.append((f"{role} graph", graph))
        hashed.extend((f"{role} external data", data) for data in graph.external_data)
    if manifest.prior is not None:
        hashed.append(("prior parameter file", manifest.prior))
    if manifest.conditional is not None:
        hashed.append(("class statistics file", manifest.conditional))
    if manifest.novelty is not None:
        hashed.append(("novelty calibration file", manifest.novelty))
    for what, spec in hashed:
        path = Path(model_dir) / spec.file
        if path.name != spec.file or not path.is_file():
            raise ManifestError(f"{path}: {what} missing")
        actual = sha256_file(path)
        if actual != spec.sha256:
            raise ManifestError(
                f"{path}: sha256 mismatch (manifest {spec.sha256[:12]}..., file {actual[:12]}...); "
                "the file was modified or truncated after export"
            )
    return manifest


def list_versions(models_dir: Path, name: str) -> list[int]:
    """Versions of one model, ascending. A version folder is named by a positive integer in ASCII digits
    without a leading zero; anything else beside them (`.DS_Store`, `README`, `tmp/`, `latest`, an export's
    hidden staging folder `.<version>.<random>`) is not a version and is ignored."""
    root = Path(models_dir) / name
    try:
        entries = list(root.iterdir())
    except OSError:  # absent, not a folder, unreadable
        return []
    return sorted(int(p.name) for p in entries if VERSION_PATTERN.match(p.name) and _is_dir(p))


def latest_version(models_dir: Path, name: str) -> int | None:
    versions = list_versions(models_dir, name)
    return versions[-1] if versions else None


def list_model_names(models_dir: Path) -> list[str]:
    """Folders of models_dir whose names are valid model names (files and other names are ignored)."""
    try:
        entries = list(Path(models_dir).iterdir())
    except OSError:
        return []
    return sorted(p.name for p in entries if is_model_name(p.name) and _is_dir(p))


def is_model_name(name: str) -> bool:
    """Whether `name` is a valid model name (and so a plain folder name: no separators, no `..`)."""
    return bool(_NAME_RE.match(name))


def model_dir(models_dir: Path, name: str, version: int | None = None) -> Path:
    """The folder of `name` at `version`, or at its latest version when version is None."""
    chosen = version if version is not None else latest_version(models_dir, name)
    if chosen is None:
        raise ManifestError(f"{Path(models_dir) / name}: no versions")
    return Path(models_dir) / name / str(chosen)


def is_inside(root: Path, path: Path) -> bool:
    """Whether path, with every symbolic link resolved, is root itself or lies under it (resolved too)."""
    try:
        return Path(path).resolve().is_relative_to(Path(root).resolve())
    except (OSError, RuntimeError):  # unreadable, or a symlink loop
        return False


def _depth(value: object) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _summarize(exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]]
    return "; ".join(parts)
