"""Checkpoint -> `models/<name>/<version>/{encoder.onnx, decoder.onnx, model.json, preview.png}`.

Every export is verified before it is published: `onnx.checker`, then onnxruntime against PyTorch on random
and real inputs at batch sizes 1 and 7, with the largest absolute difference recorded in the manifest. The
version folder is assembled in a temporary sibling and renamed into place, so a reader (the service's hot
reload) never sees half an export, and an existing version is never overwritten unless forced.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import tempfile
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.datasets.images import ImageDataset
from training.errors import ExportError
from training.likelihoods import bits_per_dim, mean_image, param_channels
from training.losses import model_nll
from training.models import VAE
from training.priors import VampPrior
from vae_contract.manifest import (
    DECODER_FILE,
    ENCODER_FILE,
    PREVIEW_FILE,
    SAMPLER_FILE,
    SCORER_FILE,
    ConditionalSpec,
    DatasetSpec,
    EvaluationMetrics,
    GraphSpec,
    ImageSpec,
    Manifest,
    PriorSpec,
    TensorSpec,
    latest_version,
    sha256_file,
    verify_model_dir,
    write_manifest,
)
from vae_contract.priors import MIXTURE_KIND, PRIOR_FILE, MixturePrior, read_mixture, write_mixture

log = logging.getLogger(__name__)
for _chatty in ("onnxscript", "onnx_ir"):  # the exporter logs every optimisation pass at INFO
    logging.getLogger(_chatty).setLevel(logging.WARNING)

OPSET = 18
PARITY_TOLERANCE = 1e-4
PARITY_BATCHES = (1, 7)


class EncoderGraph(nn.Module):
    """x (B, C, H, W) -> mean, log_var (B, D). No sampling: the service draws z with its own seeded RNG."""

    def __init__(self, vae: VAE):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vae.encode(x)


class DecoderGraph(nn.Module):
    """z (B, D) -> the decoder's mean image (B, C, H, W) in [0, 1]; for the discretized logistic mixture
    also `params` (B, K(1+2C), H, W), or K(1 + 2C + C(C-1)/2) maps with channel coupling, the distribution's
    parameters that the reconstruct score needs."""

    def __init__(self, vae: VAE):
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if "params" in decoder_outputs(self.vae):
            params = self.vae.decode_logits(z)
            coupled = self.vae.config.channel_coupling
            return mean_image(params, self.vae.image_shape[0], coupled), params
        return self.vae.decode(z)


class ScorerGraph(nn.Module):
    """x (B, C, H, W) -> -log p(x | z = encoder mean of x) per image in nats, for pixel-group decoders,
    whose likelihood reads x's own pixels (the reconstruct score's first term)."""

    def __init__(self, vae: VAE):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, _ = self.vae.encode(x)
        return model_nll(self.vae, self.vae.decode_logits(mean, x), x)


class SamplerGraph(nn.Module):
    """z (B, D), noise (B, N, H, W) -> an image drawn from p(x | z) (B, C, H, W), 8-bit values in [0, 1]:
    the mixture drawn pixel group after pixel group (`training.likelihoods.draw_mixture` says what the noise
    maps are). The service draws the noise with its seeded RNG and scales it by the pixel temperature, so
    the graph stays free of random nodes and every answer is reproducible."""

    def __init__(self, vae: VAE):
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.vae.draw(z, noise)


def decoder_outputs(vae: VAE) -> list[str]:
    """The decoder graph's output names: `x`, and `params` where the likelihood needs more than a mean and
    z alone determines it (a pixel-group decoder's likelihood is the scorer graph's)."""
    if vae.config.likelihood == "discretized_logistic" and vae.pixel_decoder is None:
        return ["x", "params"]
    return ["x"]


def _export_graph(
    module: nn.Module,
    example: torch.Tensor | tuple[torch.Tensor, ...],
    input_name: str | list[str],
    outputs: list[str],
    path: Path,
) -> None:
    import onnx

    examples = example if isinstance(example, tuple) else (example,)
    names = input_name if isinstance(input_name, list) else [input_name]
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    program = torch.onnx.export(
        module,
        examples,
        dynamo=True,
        input_names=names,
        output_names=outputs,
        dynamic_shapes={name: {0: batch} for name in names},
        opset_version=OPSET,
        external_data=False,  # weights inside the .onnx file: one file per graph, nothing to lose beside it
        optimize=True,
    )
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path), full_check=True)
    stray = list(path.parent.glob("*.data"))
    if stray:
        raise ExportError(f"exporter left external data files beside the graph: {[p.name for p in stray]}")


def _ort_session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def sampler_spec(vae: VAE, path: Path) -> GraphSpec:
    c, h, w = vae.image_shape
    return GraphSpec(
        file=path.name,
        sha256=sha256_file(path),
        inputs=[
            TensorSpec(name="z", shape=["batch", vae.latent_dim]),
            TensorSpec(name="noise", shape=["batch", vae.noise_maps(), h, w]),
        ],
        outputs=[TensorSpec(name="x", shape=["batch", c, h, w])],
    )


def example_noise(vae: VAE, batch: int, seed: int, temperature: float = 1.0) -> np.ndarray:
    """Noise as the service draws it (vae_contract/pixel_draws.py), for parity checks."""
    from vae_contract.pixel_draws import sampler_noise

    c, h, w = vae.image_shape
    return sampler_noise(batch, vae.noise_maps(), c, h, w, np.random.default_rng(seed), temperature)


@torch.no_grad()
def export_sampler(vae: VAE, path: Path, seed: int = 0) -> float:
    """Write and verify the sampler graph; returns max |onnxruntime - torch| over the parity draws.

    A draw rounds to 8-bit values, so a difference in the last float bit can move a pixel by one level;
    the check counts pixels off by more than half a level (ExportError if any) and reports the largest
    difference among the others."""
    h, w = vae.image_shape[1:]
    example = (torch.zeros(2, vae.latent_dim), torch.zeros(2, vae.noise_maps(), h, w))
    _export_graph(SamplerGraph(vae).eval(), example, ["z", "noise"], ["x"], path)
    session = _ort_session(path)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for batch in PARITY_BATCHES:
        z = rng.standard_normal((batch, vae.latent_dim), dtype=np.float32)
        noise = example_noise(vae, batch, seed + batch)
        (x,) = session.run(None, {"z": z, "noise": noise})
        ref = vae.draw(torch.from_numpy(z), torch.from_numpy(noise)).numpy()
        diff = np.abs(x - ref)
        moved = float((diff > PARITY_TOLERANCE).mean())
        if moved > 0.01:  # a one-level flip now and then is rounding; more is a different graph
            raise ExportError(f"sampler: {moved:.2%} of pixels differ between onnxruntime and PyTorch")
        worst = max(worst, float(diff.max()))
    return float(f"{worst:.3g}")


def _max_abs_diff(what: str, onnx_out: np.ndarray, torch_out: np.ndarray) -> float:
    """Max |a - b|, refusing non-finite outputs: a NaN difference would otherwise compare as "within
    tolerance" (every comparison with NaN is false, so a running max() silently skips it)."""
    for runtime, out in (("onnxruntime", onnx_out), ("PyTorch", torch_out)):
        if not np.isfinite(out).all():
            raise ExportError(
                f"{what}: {runtime} output has {int((~np.isfinite(out)).sum())} non-finite values on "
                "ordinary inputs; the weights overflow, export a checkpoint from before training diverged"
            )
    return float(np.abs(onnx_out - torch_out).max())


@torch.no_grad()
def check_parity(
    vae: VAE, encoder_path: Path, decoder_path: Path, real_images: np.ndarray | None, seed: int = 0
) -> dict[str, float]:
    """Max |onnxruntime - torch| on random and real inputs, batch 1 and 7; ExportError past 1e-4."""
    rng = np.random.default_rng(seed)
    encoder, decoder = _ort_session(encoder_path), _ort_session(decoder_path)
    c, h, w = vae.image_shape
    worst = {"encoder": 0.0, "decoder": 0.0}
    inputs: list[np.ndarray] = [rng.random((b, c, h, w), dtype=np.float32) for b in PARITY_BATCHES]
    if real_images is not None and len(real_images):
        inputs += [np.ascontiguousarray(real_images[:b], dtype=np.float32) for b in PARITY_BATCHES]
    for x in inputs:
        mean, log_var = encoder.run(None, {"x": x})
        ref_mean, ref_log_var = vae.encode(torch.from_numpy(x))
        if mean.shape != (x.shape[0], vae.latent_dim):
            raise ExportError(f"encoder returned shape {mean.shape} for batch {x.shape[0]}")
        worst["encoder"] = max(
            worst["encoder"],
            _max_abs_diff("encoder mean", mean, ref_mean.numpy()),
            _max_abs_diff("encoder log_var", log_var, ref_log_var.numpy()),
        )
    latents = [rng.standard_normal((b, vae.latent_dim), dtype=np.float32) for b in PARITY_BATCHES]
    for z in latents:
        image, *params = decoder.run(None, {"z": z})
        if image.shape != (z.shape[0], c, h, w):
            raise ExportError(f"decoder returned shape {image.shape} for batch {z.shape[0]}")
        worst["decoder"] = max(
            worst["decoder"], _max_abs_diff("decoder", image, vae.decode(torch.from_numpy(z)).numpy())
        )
        if params:  # the likelihood's parameters, compared like the image
            ref = vae.decode_logits(torch.from_numpy(z)).numpy()
            worst["decoder"] = max(worst["decoder"], _max_abs_diff("decoder params", params[0], ref))
    for role, diff in worst.items():
        if not diff <= PARITY_TOLERANCE:
            raise ExportError(f"{role}: onnxruntime differs from PyTorch by {diff:.3g} > {PARITY_TOLERANCE}")
    return {f"{role}_max_abs_diff": float(f"{diff:.3g}") for role, diff in worst.items()}


@torch.no_grad()
def check_scorer_parity(vae: VAE, scorer_path: Path, real_images: np.ndarray | None, seed: int = 0) -> float:
    """Max relative |onnxruntime - torch| of the scorer's code lengths (thousands of nats, summed in float32)
    on random and real images; ExportError past 1e-4."""
    rng = np.random.default_rng(seed)
    scorer = _ort_session(scorer_path)
    c, h, w = vae.image_shape
    inputs = [rng.integers(0, 256, (b, c, h, w)).astype(np.float32) / 255 for b in PARITY_BATCHES]
    if real_images is not None and len(real_images):
        inputs += [np.ascontiguousarray(real_images[:b], dtype=np.float32) for b in PARITY_BATCHES]
    worst = 0.0
    for x in inputs:
        (nll,) = scorer.run(None, {"x": x})
        ref = ScorerGraph(vae)(torch.from_numpy(x)).numpy()
        worst = max(worst, _max_abs_diff("scorer", nll / np.abs(ref), ref / np.abs(ref)))
    if not worst <= PARITY_TOLERANCE:
        raise ExportError(f"scorer: onnxruntime differs from PyTorch by {worst:.3g} > {PARITY_TOLERANCE}")
    return float(f"{worst:.3g}")


def dataset_spec(dataset: ImageDataset) -> DatasetSpec:
    """The manifest's record of the data a model was trained and evaluated on (after any limits)."""
    from training.datasets import dataset_record

    extra: dict[str, Any] = dict(dataset_record(dataset.name))
    if extra and dataset.classes:
        extra["classes"] = list(dataset.classes)
    return DatasetSpec(
        name=dataset.name,
        source=dataset.source,
        train_examples=len(dataset.x_train),
        test_examples=len(dataset.x_test),
        **extra,
    )


def code_length_metrics(evaluation: dict[str, Any], vae: VAE, dataset: ImageDataset) -> dict[str, Any]:
    """For likelihoods whose NLL is a code length of the 8-bit test images: the VAE's bits/dim (IWAE bound,
    else the ELBO) and, on exactly the same test images, lossless WebP, PNG and PPCA (training.baselines)."""
    if vae.config.likelihood != "discretized_logistic":
        return {}
    from training.baselines import baseline_bits_per_dim

    nats = evaluation.get("iwae_nll", evaluation["neg_elbo"])
    dims = int(np.prod(vae.image_shape))
    return {
        "bits_per_dim": round(bits_per_dim(nats, dims), 4),
        "baselines_bits_per_dim": baseline_bits_per_dim(dataset.x_train, dataset.x_test, vae.latent_dim),
    }


def manifest_metrics(
    evaluation: dict[str, Any], model: VAE, measured_with: str | None = None
) -> EvaluationMetrics:
    """The manifest's test-set numbers from `training.evaluate.evaluate` output (plus `device`, `seconds`)."""
    config = model.config
    if measured_with is None:
        measured_with = f"python -m training eval on {evaluation['device']} in {evaluation['seconds']}s"
    examples = evaluation["examples"]
    return EvaluationMetrics(
        split=f"test[:{examples}]" if config.test_limit else "test",
        examples=examples,
        binarized=config.binarize,
        neg_elbo=evaluation["neg_elbo"],
        reconstruction=evaluation["reconstruction"],
        kl=evaluation["kl"],
        iwae_nll=evaluation.get("iwae_nll"),
        iwae_k=evaluation.get("iwae_k"),
        active_units=evaluation["active_units"],
        measured_with=measured_with,
    )


def read_evaluation(path: Path, dataset: ImageDataset) -> dict[str, Any]:
    """An evaluation already run (`python -m training eval ... > FILE`), checked to cover `dataset`."""
    import json

    evaluation = json.loads(Path(path).read_text())
    needed = ("examples", "neg_elbo", "reconstruction", "kl", "active_units", "device", "seconds")
    missing = [key for key in needed if key not in evaluation] if isinstance(evaluation, dict) else needed
    if missing:
        raise ValueError(
            f"{path}: not the output of `python -m training eval` (missing {', '.join(missing)})"
        )
    if evaluation["examples"] != len(dataset.x_test):
        raise ValueError(f"{path} covers {evaluation['examples']} test images, not {len(dataset.x_test)}")
    return dict(evaluation)


def export_run(
    vae: VAE,
    dataset: ImageDataset,
    evaluation: dict[str, Any],
    models_dir: Path,
    name: str,
    *,
    measured_with: str | None = None,
    version: int | None = None,
    description: str = "",
    force: bool = False,
) -> tuple[Path, EvaluationMetrics]:
    """Export a trained model with its test-set evaluation and data record; the CLI and the test fixtures.

    `dataset` is the data as trained and evaluated (limits applied); its first 16 test images join the
    random inputs of the parity check.
    """
    from training.evaluate import eval_tensor

    metrics = manifest_metrics(evaluation, vae, measured_with)
    extra = code_length_metrics(evaluation, vae, dataset)
    if extra:
        metrics = EvaluationMetrics.model_validate({**metrics.model_dump(), **extra})
    real = eval_tensor(dataset, vae.config)[:16].numpy()
    target = export_vae(
        vae,
        models_dir,
        name,
        dataset=dataset_spec(dataset),
        metrics=metrics,
        version=version,
        real_images=real,
        description=description,
        force=force,
        extras=_dataset_extras(vae, dataset),
    )
    return target, metrics


def _dataset_extras(vae: VAE, dataset: ImageDataset) -> dict[str, Any]:
    """What only some datasets bring: per-class latent Gaussians where classes are named, a background."""
    from training.datasets import image_background

    extras: dict[str, Any] = {"background": image_background(dataset.name)}
    if dataset.classes and len(dataset.x_train):
        from training.class_gaussians import fit_class_gaussians
        from training.data import to_float

        extras["conditional"] = fit_class_gaussians(
            vae, to_float(dataset.x_train), dataset.y_train, dataset.classes
        )
    return extras


def export_vae(
    vae: VAE,
    models_dir: Path,
    name: str,
    *,
    dataset: DatasetSpec,
    metrics: EvaluationMetrics | None = None,
    training_config: dict[str, Any] | None = None,
    version: int | None = None,
    real_images: np.ndarray | None = None,
    description: str = "",
    force: bool = False,
    extras: dict[str, Any] | None = None,
) -> Path:
    """Export, verify and publish one model version; returns its folder. version None = latest + 1.

    Refused with ExportError, nothing published: non-variational models, non-finite weights, metrics or
    graph outputs, parity past tolerance, and any failed write (a full disk: the staging folder is removed).
    """
    if not vae.config.variational:
        raise ExportError("only variational models are exported: the autoencoder baseline has no posterior")
    check_finite_weights(vae)
    if metrics is not None:
        check_finite_metrics(metrics)
    models_dir = Path(models_dir)
    chosen = version if version is not None else (latest_version(models_dir, name) or 0) + 1
    target = models_dir / name / str(chosen)
    if target.exists() and not force:
        raise ExportError(
            f"{target} already exists; model versions are immutable (use --force to replace it)"
        )
    vae = vae.eval()
    made_parent = not target.parent.exists()
    staging: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{chosen}.", dir=target.parent))
        parity = _assemble(
            vae, staging, name, chosen, dataset, metrics, training_config, real_images, description, extras
        )
        _publish(staging, target)
    except BaseException as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if made_parent:
            with contextlib.suppress(OSError):
                target.parent.rmdir()  # only if still empty: a model folder this export created
        if isinstance(exc, OSError):
            where = exc.filename or staging or target.parent
            raise ExportError(f"cannot write {where}: {exc.strerror or exc}; nothing was published") from exc
        raise
    log.info("exported %s (parity %s)", target, parity)
    return target


def _assemble(
    vae: VAE,
    staging: Path,
    name: str,
    version: int,
    dataset: DatasetSpec,
    metrics: EvaluationMetrics | None,
    training_config: dict[str, Any] | None,
    real_images: np.ndarray | None,
    description: str,
    extras: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Write and verify the graphs, preview and manifest into `staging`; returns the parity numbers.

    `extras` (optional): `conditional`, per-class latent Gaussians (training.class_gaussians) written to a
    hashed side file; `background`, the colour transparent pixels were composited onto in the training
    data."""
    extras = extras or {}
    c, h, w = vae.image_shape
    enc_path, dec_path = staging / ENCODER_FILE, staging / DECODER_FILE
    _export_graph(EncoderGraph(vae).eval(), torch.zeros(2, c, h, w), "x", ["mean", "log_var"], enc_path)
    outputs = decoder_outputs(vae)
    _export_graph(DecoderGraph(vae).eval(), torch.zeros(2, vae.latent_dim), "z", outputs, dec_path)
    parity = check_parity(vae, enc_path, dec_path, real_images)
    scorer_spec, sampler = None, None
    if vae.pixel_decoder is not None:
        scorer_path = staging / SCORER_FILE
        _export_graph(ScorerGraph(vae).eval(), torch.zeros(2, c, h, w), "x", ["nll"], scorer_path)
        parity["scorer_max_abs_diff"] = check_scorer_parity(vae, scorer_path, real_images)
        scorer_spec = GraphSpec(
            file=SCORER_FILE,
            sha256=sha256_file(scorer_path),
            inputs=[TensorSpec(name="x", shape=["batch", c, h, w])],
            outputs=[TensorSpec(name="nll", shape=["batch"])],
        )
        # The model's draws from p(x | z), pixel group after pixel group (the decoder returns their means).
        sampler_path = staging / SAMPLER_FILE
        parity["sampler_max_abs_diff"] = export_sampler(vae, sampler_path)
        sampler = sampler_spec(vae, sampler_path)
    prior_spec, _ = export_prior(vae, staging, enc_path, parity)
    latent = ["batch", vae.latent_dim]
    image = ["batch", c, h, w]
    manifest = Manifest(
        name=name,
        version=version,
        created=datetime.now(UTC),
        description=description,
        latent_dim=vae.latent_dim,
        image=ImageSpec(channels=c, height=h, width=w, **_background(extras)),  # type: ignore[arg-type]
        likelihood=vae.config.likelihood,
        gaussian_sigma=vae.config.gaussian_sigma if vae.config.likelihood == "gaussian" else None,
        encoder=GraphSpec(
            file=ENCODER_FILE,
            sha256=sha256_file(enc_path),
            inputs=[TensorSpec(name="x", shape=image)],  # type: ignore[arg-type]
            outputs=[TensorSpec(name="mean", shape=latent), TensorSpec(name="log_var", shape=latent)],  # type: ignore[arg-type]
        ),
        decoder=GraphSpec(
            file=DECODER_FILE,
            sha256=sha256_file(dec_path),
            inputs=[TensorSpec(name="z", shape=latent)],  # type: ignore[arg-type]
            outputs=[TensorSpec(name="x", shape=image), *_params_specs(vae, outputs)],  # type: ignore[arg-type]
        ),
        scorer=scorer_spec,
        sampler=sampler,
        prior=prior_spec,
        training=training_config if training_config is not None else vae.config.to_dict(),
        dataset=dataset,
        metrics=metrics,
        opset=OPSET,
        exporters=_exporter_versions(),
        parity=parity,
        **_likelihood_fields(vae),
        **_conditional_fields(extras, staging),
    )
    write_manifest(staging, manifest)
    write_preview(staging, manifest)
    verify_model_dir(staging)
    staging.chmod(0o755)
    return parity


def _params_specs(vae: VAE, outputs: list[str]) -> list[TensorSpec]:
    if "params" not in outputs:
        return []
    c, h, w = vae.image_shape
    maps = param_channels(c, vae.config.mixture_components, vae.config.channel_coupling)
    return [TensorSpec(name="params", shape=["batch", maps, h, w])]


def _background(extras: dict[str, Any]) -> dict[str, Any]:
    return {"background": extras["background"]} if extras.get("background") else {}


def _conditional_fields(extras: dict[str, Any], staging: Path) -> dict[str, Any]:
    """Write the per-class Gaussians beside the graphs; the manifest records the file's sha256."""
    gaussians = extras.get("conditional")
    if gaussians is None:
        return {}
    from vae_contract.classes import write_class_gaussians

    path, digest = write_class_gaussians(gaussians, staging)
    spec = ConditionalSpec(file=path.name, sha256=digest, classes=list(gaussians.names))
    return {"conditional": spec}


def _likelihood_fields(vae: VAE) -> dict[str, Any]:
    """Manifest fields only some likelihoods have (older manifests stay as they were)."""
    if vae.config.likelihood == "discretized_logistic":
        return {
            "mixture_components": vae.config.mixture_components,
            "channel_coupling": vae.config.channel_coupling,
            "pixel_groups": vae.config.pixel_groups,
        }
    return {}


def _publish(staging: Path, target: Path) -> None:
    """Rename `staging` to `target`. A forced replacement moves the old version aside first and puts it back
    if the rename fails, so the version folder is always either the old export or the new one, whole."""
    if not target.exists():
        staging.rename(target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent)) / target.name
    target.rename(aside)
    try:
        staging.rename(target)
    except BaseException:
        aside.rename(target)
        raise
    finally:
        shutil.rmtree(aside.parent, ignore_errors=True)


def check_finite_weights(vae: VAE) -> None:
    """ExportError naming the tensors that hold NaN or infinity (a diverged or corrupted checkpoint)."""
    bad = [
        f"{key} ({int((~torch.isfinite(t)).sum())} of {t.numel()})"
        for key, t in vae.state_dict().items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ExportError(f"non-finite weights in {shown}; export a checkpoint from before training diverged")


def check_finite_metrics(metrics: EvaluationMetrics) -> None:
    values = metrics.model_dump()
    bad = [k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise ExportError(f"non-finite test metrics ({', '.join(f'{k}={values[k]}' for k in bad)})")


@torch.no_grad()
def export_prior(
    vae: VAE, staging: Path, encoder_path: Path, parity: dict[str, float], source: str | None = None
) -> tuple[PriorSpec | None, MixturePrior | None]:
    """A learned prior as the service's diagonal Gaussian mixture file: the encoder's posteriors at the
    pseudo-inputs, computed here once. The exported encoder must give the same components (recorded in
    `parity` as prior_max_abs_diff), so the file agrees with the graph the service runs. `source`: how the
    pseudo-inputs were made (default: the VampPrior's, learned)."""
    components = vae.prior_components()
    if components is None or not isinstance(vae.prior, VampPrior):  # a given mixture has no pseudo-inputs
        return None, None
    means, log_vars, log_weights = (t.cpu().numpy() for t in components)
    pseudo = np.ascontiguousarray(vae.prior.inputs().cpu().numpy(), dtype=np.float32)
    onnx_mean, onnx_log_var = _ort_session(encoder_path).run(None, {"x": pseudo})
    diff = max(_max_abs_diff("prior means", onnx_mean, means), _max_abs_diff("prior", onnx_log_var, log_vars))
    if not diff <= PARITY_TOLERANCE:
        raise ExportError(f"prior: onnxruntime differs from PyTorch by {diff:.3g} > {PARITY_TOLERANCE}")
    parity["prior_max_abs_diff"] = float(f"{diff:.3g}")
    path = staging / PRIOR_FILE
    write_mixture(path, means, log_vars, np.exp(log_weights.astype(np.float64)))
    k = int(means.shape[0])
    spec = PriorSpec(
        kind=MIXTURE_KIND,
        components=k,
        file=PRIOR_FILE,
        sha256=sha256_file(path),
        source=source
        or f"VampPrior (Tomczak and Welling 2018): the encoder's posteriors at {k} learned pseudo-inputs",
    )
    return spec, read_mixture(path, k, vae.latent_dim)


def _exporter_versions() -> dict[str, str]:
    """The packages that built and checked the graphs; the onnxruntime build is whichever is installed."""
    found: dict[str, str] = {}
    for pkg in ("torch", "onnx", "onnxscript", "onnxruntime-gpu", "onnxruntime"):
        try:
            found[pkg] = package_version(pkg)
        except PackageNotFoundError:
            continue
    return found


def write_preview(folder: Path, manifest: Manifest) -> None:
    """`preview.png`: what /v1/sample answers for n 64 and seed 0. Seed 0's latents from the version's prior
    (service/inference/model.py draws them so), decoded as the service's default `pixels` is: drawn by the
    sampler at the default pixel temperature where the version has one, else the decoder's mean images."""
    from vae_contract.imaging import encode_png, make_grid
    from vae_contract.pixel_draws import DEFAULT_PIXEL_TEMPERATURE, pixel_rng, sampler_noise

    if (spec := manifest.prior) is not None:
        z = read_mixture(folder / spec.file, spec.components, manifest.latent_dim).draw(64, 0)
    else:
        z = np.random.default_rng(0).standard_normal((64, manifest.latent_dim), dtype=np.float32)
    if manifest.sampler is not None:
        c, h, w = manifest.image.shape
        maps = manifest.sampler.inputs[1].shape[1]
        assert isinstance(maps, int)
        noise = sampler_noise(64, maps, c, h, w, pixel_rng(0), DEFAULT_PIXEL_TEMPERATURE)
        (images,) = _ort_session(folder / manifest.sampler.file).run(None, {"z": z, "noise": noise})
    else:
        images = _ort_session(folder / manifest.decoder.file).run(["x"], {"z": z})[0]
    (folder / PREVIEW_FILE).write_bytes(encode_png(make_grid(images, columns=8), compress_level=9))
