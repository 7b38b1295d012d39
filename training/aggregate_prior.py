"""A published version again as a new version whose prior is its own aggregate posterior: the same graphs
byte for byte, plus a mixture prior made of the encoder's posteriors at training images, and classes drawn
from the components of their own images.

Why. The ELBO's KL term is minimised, over priors, by the aggregate posterior q(z) = 1/N sum_n q(z | x_n)
(Hoffman and Johnson 2016; Tomczak and Welling 2018 build the VampPrior as its approximation at K learned
pseudo-inputs). A model trained against N(0, I) leaves regions of N(0, I) that no image's posterior covers
(the "holes" of Rosca et al. 2018): prior draws that land there decode to blends no image looks like. Sampling
from the aggregate posterior itself (ex-post density estimation, Ghosh et al. 2020) draws only where images
are encoded. Here the mixture is exact on the chosen images: K - 1 = min(4095, N) training images picked by a
seeded draw, each component one image's posterior (a VampPrior whose pseudo-inputs are real images), plus
N(0, I) itself as one more component, all K of weight 1/K. The model is still one density p(z) p(x | z),
scored and measured as such: the test ELBO and IWAE bound are measured again under it.

Why N(0, I) stays in. A mixture of training posteriors alone overfits as a density (Tomczak and Welling
2018, section 3): a held-out image whose posterior falls between the components pays for it in KL (measured
on emoji/5 with 256 image components: the test KL rose from 50 to 209 nats). With the model's own prior as a
component of weight 1/K, p(z) >= N(z; 0, I) / K everywhere, so every image's code length is at most log K
nats (8.3 nats, 0.004 bits/dim of a 32x32 RGB image) above the model's before (defensive mixtures, Hesterberg
1995), while a prior draw comes from N(0, I) only once in K.

Classes. Each component belongs to its image's class, so a label draws from the class's own posteriors
(`prior_components_per_class`, vae_contract/classes.py) instead of one Gaussian fitted to them.

What changes for clients: /v1/sample's draws (unconditional and by label), and the reconstruct score's KL
(bound against the mixture; the novelty calibration is made again). Embeddings, decoded images of a given z
and the graphs do not change.

    python -m training.aggregate_prior models/emoji/5 --data-dir data       # -> models/emoji/6
"""

from __future__ import annotations

import argparse
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from training.config import TrainConfig
from training.datasets.images import ImageDataset
from training.errors import ExportError
from training.evaluate import eval_tensor, evaluate, evaluation_data
from training.export import (
    code_length_metrics,
    export_prior,
    manifest_metrics,
    write_preview,
)
from training.new_version import staged_version
from training.novelty import calibrate
from training.onnx_weights import rebuild
from training.priors import FixedMixture, VampPrior
from vae_contract.classes import CLASSES_FILE, COMPONENTS_KIND, write_class_components
from vae_contract.manifest import (
    MANIFEST_FILE,
    Manifest,
    sha256_file,
    write_manifest,
)
from vae_contract.novelty import NOVELTY_FILE
from vae_contract.priors import MAX_COMPONENTS, PRIOR_FILE, MixturePrior, read_mixture, write_mixture

log = logging.getLogger(__name__)
# Files the new version makes again; the graphs and everything else are copied byte for byte.
REMADE = (MANIFEST_FILE, "README.md", "preview.png", PRIOR_FILE, CLASSES_FILE, NOVELTY_FILE)


def chosen_images(train_count: int, images: int, seed: int) -> np.ndarray:
    """Sorted indices of the training images whose posteriors become components."""
    if train_count <= images:
        return np.arange(train_count)
    return np.sort(np.random.default_rng(seed).choice(train_count, images, replace=False))


def with_standard_normal(images: MixturePrior, path: Path) -> MixturePrior:
    """Write the image components and N(0, I) as one more, all of weight 1/K, to path; the mixture as read
    back, as the service will read it."""
    zeros = np.zeros((1, images.means.shape[1]), np.float32)
    k = images.components + 1
    means, log_vars = np.concatenate([images.means, zeros]), np.concatenate([images.log_vars, zeros])
    write_mixture(path, means, log_vars, np.full(k, 1 / k))
    return read_mixture(path, k, images.means.shape[1])


def publish(
    source: Path,
    data_dir: str | None = None,
    dataset: ImageDataset | None = None,
    components: int = MAX_COMPONENTS,
    iwae_k: int = 100,
    seed: int = 0,
    version: int | None = None,
) -> Path:
    """Copy `source` to a new version of the same model whose prior is its aggregate posterior."""
    source = Path(source)
    vae, manifest = rebuild(source)
    if vae.prior is not None or manifest.prior is not None:
        raise ExportError(
            f"{source} already has a prior ({manifest.prior.kind if manifest.prior else 'vamp'})"
        )
    config = TrainConfig.from_dict(manifest.training)
    if dataset is None:  # the one the version was trained on, as its training config names it
        dataset = evaluation_data(config, data_dir)
    picked = chosen_images(len(dataset.x_train), components - 1, seed)
    images = torch.from_numpy(dataset.x_train[picked].astype(np.float32) / 255)
    if images.ndim == 3:
        images = images[:, None]
    vae.prior = VampPrior(len(picked), vae.image_shape)
    with torch.no_grad():  # the images are in [0, 1], where the VampPrior's hard tanh is the identity
        vae.prior.pseudo_inputs.copy_(images)
    vae.eval()
    with staged_version(source, manifest.name, REMADE, version) as new:
        parity = dict(manifest.parity or {})
        how = (
            f"aggregate posterior: the encoder's posteriors at {len(picked)} of the {len(dataset.x_train)} "
            f"training images (numpy default_rng({seed}) draw) and N(0, I), {len(picked) + 1} components "
            "of equal weight (training/aggregate_prior.py)"
        )
        exported, images_only = export_prior(vae, new.folder, new.folder / manifest.encoder.file, parity, how)
        assert exported is not None and images_only is not None
        served = with_standard_normal(images_only, new.folder / PRIOR_FILE)
        prior_spec = exported.model_copy(
            update={"components": served.components, "sha256": sha256_file(new.folder / PRIOR_FILE)}
        )
        vae.prior = FixedMixture(
            *(torch.from_numpy(a) for a in (served.means, served.log_vars, served.weights))
        )
        raw = manifest.model_dump()
        raw.pop("novelty", None)  # made again below: the score's KL is against the new prior
        if manifest.conditional is not None and dataset.y_train is not None:
            names = tuple(manifest.conditional.classes)
            counts = np.bincount(dataset.y_train, minlength=len(names))
            owners = np.append(dataset.y_train[picked], -1)  # N(0, I) belongs to no class
            _, digest = write_class_components(names, counts, owners, new.folder)
            raw["conditional"] = {
                "kind": COMPONENTS_KIND,
                "file": CLASSES_FILE,
                "sha256": digest,
                "classes": list(names),
                "source": "each prior component belongs to its training image's class",
            }
        x_test = eval_tensor(dataset, config)
        evaluation = evaluate(vae, x_test, iwae_k=iwae_k, show_progress=True)
        metrics = manifest_metrics(
            evaluation, vae, f"python -m training.aggregate_prior --iwae-k {iwae_k} (under the new prior)"
        )
        metrics = metrics.model_copy(update=code_length_metrics(evaluation, vae, dataset))
        raw.update(
            version=new.version,
            created=datetime.now(UTC),
            description=f"{manifest.description}; prior: its aggregate posterior at {len(picked)} training "
            f"images, weights of {manifest.name}/{manifest.version}",
            prior=prior_spec.model_dump(),
            metrics=metrics.model_dump(),
            parity=parity,
        )
        published = Manifest.model_validate(raw)
        write_manifest(new.folder, published)
        write_preview(new.folder, published)
        if manifest.novelty is not None:
            calibrate(new.folder, data_dir)
    log.info("published %s: %s", new.target, json.dumps(evaluation))
    return new.target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a version folder, e.g. models/emoji/5")
    parser.add_argument("--data-dir", default=None, help="override the data directory in the manifest")
    parser.add_argument(
        "--components", type=int, default=MAX_COMPONENTS, help="training images in the mixture"
    )
    parser.add_argument("--iwae-k", type=int, default=100, help="samples per test image for the IWAE bound")
    parser.add_argument("--seed", type=int, default=0, help="which training images (numpy default_rng)")
    parser.add_argument("--version", type=int, default=None, help="the new version (default: latest + 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(publish(args.source, args.data_dir, None, args.components, args.iwae_k, args.seed, args.version))


if __name__ == "__main__":
    main()
