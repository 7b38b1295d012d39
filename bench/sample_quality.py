"""How good the served images are, measured as generative models are: against real held-out images, in the
feature space of a network trained here on the real training images (no Inception weights are reachable).

For each dataset, rows of images against the real test images:
- `real train`: real training images, the reference a perfect generator would reach;
- `mean`: prior samples as the decoder's mean image (`pixels: "mean"`, what the service answered before);
- `sample T=...`: prior samples drawn from p(x | z) at pixel temperature T (`pixels: "sample"`).

Columns:
- `FD`: Fréchet distance between Gaussians fitted to the features (Heusel et al. 2017's FID, with our
  network's 128-D penultimate layer instead of Inception's);
- `precision`, `recall`: Kynkäänniemi et al. 2019, k = 3: the share of generated images inside the real
  images' k-NN balls, and of real images inside the generated ones';
- `sharpness`: mean gradient energy (mean squared difference of horizontal and vertical neighbours, over
  pixels and channels) over that of the real test images: 1 is as sharp as real, below 1 blurrier;
- `recognised`: class-conditional samples (`label` on /v1/sample, the same number per class) the classifier
  labels as the class asked for; for `real train`, the classifier's accuracy on the real test images. The
  header also gives that accuracy averaged over classes (each class weighed equally, as the conditional
  draws are), the like-for-like reference where the test set's classes are unbalanced (emoji: People & Body
  is 56% of the test images);
- `MLP`: the same samples labelled by the model cards' classifier (`training.class_gaussians`' small MLP,
  3 epochs on the real training images), so that the cards' recognition figures compare like for like;
- `to train`: the median feature distance from an image to its nearest training image, over the same median
  for the real test images: 1 is as far from the training set as new real images are, well below 1 means
  copies of training images (a check that matters for priors built from training images' posteriors).

Every image comes from the service's data plane (`VAEModel.sample`, as /v1/sample answers, seeded), so the
table measures what clients get. Also the cost: milliseconds per image of a batch of 64 through the decoder
graph (mean) and through the sampler graph with its noise, on this CPU.

With `--label-temperatures`, a second table: class-conditional draws at those latent temperatures
(`temperature` with `label` on /v1/sample; the default pixel temperature), their recognition and distance to
the training set: a lower temperature keeps a draw closer to its class's encoded images (and copies).

    nice -n 10 python -m bench.sample_quality                         # emoji, fashion, mnist
    nice -n 10 python -m bench.sample_quality --datasets emoji --temperatures 0 0.3 0.5 1
    nice -n 10 python -m bench.sample_quality --datasets emoji --temperatures 0.5 --label-temperatures 1 0.5 0
    nice -n 10 python -m bench.sample_quality --datasets emoji --versions 5 7  # one classifier for both
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

MODELS = {"emoji": "emoji", "fashion": "fashion", "mnist": "mnist"}
FEATURES = 128
K_NEIGHBOURS = 3


# --- the feature network -----------------------------------------------------------------------------------


def train_classifier(x: np.ndarray, y: np.ndarray, classes: int, steps: int, seed: int = 0) -> Any:
    """A small CNN (3 convolutions, global average pooling, a 128-D feature layer) on real training images;
    Adam, light augmentation by shifting one pixel, so features do not hinge on exact positions."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    c = x.shape[1]
    net = nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(128, FEATURES), nn.ReLU(),
        nn.Linear(FEATURES, classes),
    )  # fmt: skip
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(math.ceil(steps * 128 / len(xt))):
        order = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(xt), 128):
            idx = order[start : start + 128]
            batch = xt[idx]
            shift = [int(s) for s in torch.randint(-1, 2, (2,), generator=generator)]
            batch = torch.roll(batch, shifts=shift, dims=(2, 3))
            loss = nn.functional.cross_entropy(net(batch), yt[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.eval()


def features_and_labels(net: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 128) penultimate features and (N,) predicted labels."""
    import torch

    feats, labels = [], []
    body, head = net[:-1], net[-1]
    with torch.no_grad():
        for start in range(0, len(x), 500):
            f = body(torch.from_numpy(np.ascontiguousarray(x[start : start + 500], dtype=np.float32)))
            feats.append(f.numpy().astype(np.float64))
            labels.append(head(f).argmax(1).numpy())
    return np.concatenate(feats), np.concatenate(labels)


def _card_classifier(x: np.ndarray, y: np.ndarray, classes: int) -> Any:
    """The model cards' classifier: `python -m training.class_gaussians`' MLP, trained as it trains it."""
    import torch

    from training.class_gaussians import train_classifier as train_mlp

    return train_mlp(torch.from_numpy(np.ascontiguousarray(x)), y, classes)


def _mlp_labels(net: Any, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        chunks = [x[i : i + 1000] for i in range(0, len(x), 1000)]
        labels = [net(torch.from_numpy(np.ascontiguousarray(c))).argmax(1).numpy() for c in chunks]
    return np.concatenate(labels)


# --- the statistics ----------------------------------------------------------------------------------------


def per_class_rate(predicted: np.ndarray, labels: np.ndarray) -> tuple[float, dict[int, float]]:
    """The share labelled correctly in each class present, and its mean over those classes: the accuracy
    that weighs each class equally, as conditional draws do (the same number per class), where plain
    accuracy weighs them by their share of the test set."""
    rates = {int(c): float(np.mean(predicted[labels == c] == c)) for c in np.unique(labels)}
    return float(np.mean(list(rates.values()))), rates


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of Gaussians fitted to feature rows a and b."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr((S_a S_b)^(1/2)) = sum of sqrt of the eigenvalues of S_a^(1/2) S_b S_a^(1/2), symmetric PSD.
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    cross = np.sum(np.sqrt(np.clip(middle, 0, None)))
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2 * cross)


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = np.sum(a**2, 1)[:, None] + np.sum(b**2, 1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.clip(sq, 0, None))


def _coverage(reference: np.ndarray, query: np.ndarray, k: int) -> float:
    """The share of `query` rows inside some reference row's ball of radius its k-th nearest neighbour."""
    radii = np.sort(_distances(reference, reference), axis=1)[:, k]  # column 0 is the point itself
    return float(np.mean(np.any(_distances(query, reference) <= radii[None, :], axis=1)))


def nearest_distance(query: np.ndarray, reference: np.ndarray, chunk: int = 1024) -> float:
    """Median over `query` rows of the distance to the nearest `reference` row."""
    nearest = [_distances(query[i : i + chunk], reference).min(axis=1) for i in range(0, len(query), chunk)]
    return float(np.median(np.concatenate(nearest)))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = K_NEIGHBOURS) -> tuple[float, float]:
    """Kynkäänniemi et al. 2019: precision = fakes inside the real manifold, recall = reals inside the
    fake one."""
    return _coverage(real, fake, k), _coverage(fake, real, k)


def gradient_energy(x: np.ndarray) -> float:
    """Mean squared neighbour difference, horizontal and vertical, over images, channels and pixels."""
    x = x.astype(np.float64)
    dx = np.diff(x, axis=3) ** 2
    dy = np.diff(x, axis=2) ** 2
    return float(dx.mean() + dy.mean())


# --- images from the service's data plane ------------------------------------------------------------------


def _load(models_dir: Path, name: str, version: int | None = None) -> tuple[Any, Any]:
    from service.config import Settings
    from service.inference import ModelRegistry

    settings = Settings(models_dir=models_dir, models=[name], max_batch_size=64)
    if version is not None:
        settings = settings.model_copy(update={"version_policy": f"specific:{version}"})
    registry = ModelRegistry(settings)
    registry.load()
    if name not in registry.models:
        raise SystemExit(f"model {name!r} did not load: {registry.failures}")
    return registry, registry.models[name]


def prior_images(vae: Any, n: int, seed: int, pixel_temperature: float | None) -> np.ndarray:
    async def run() -> np.ndarray:
        parts = []
        for i, start in enumerate(range(0, n, 256)):
            images, _ = await vae.sample(min(256, n - start), seed + i, 1.0, None, pixel_temperature)
            parts.append(images)
        return np.concatenate(parts)

    return asyncio.run(run())


def conditional_images(
    vae: Any, per_class: int, seed: int, pixel_temperature: float | None, temperature: float = 1.0
) -> tuple:
    async def run() -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for index, name in enumerate(vae.classes.names):
            drawn, _ = await vae.sample(per_class, seed + index, temperature, name, pixel_temperature)
            images.append(drawn)
            labels.append(np.full(per_class, index))
        return np.concatenate(images), np.concatenate(labels)

    return asyncio.run(run())


def cost_ms_per_image(vae: Any, batch: int = 64, repeats: int = 5) -> dict[str, float]:
    """Best-of-`repeats` milliseconds per image of one batch: the mean image, and a draw (noise included)."""
    z = np.random.default_rng(0).standard_normal((batch, vae.latent_dim)).astype(np.float32)
    out: dict[str, float] = {}
    from vae_contract.pixel_draws import PixelDraw

    for label, draw in (("mean", None), ("sample", PixelDraw(0, 1.0))):
        if draw is not None and not vae.can_draw():
            continue
        best = math.inf
        for _ in range(repeats):
            started = time.perf_counter()
            asyncio.run(vae.decode(z, draw))
            best = min(best, time.perf_counter() - started)
        out[label] = round(1000 * best / batch, 3)
    return out


# --- one dataset -------------------------------------------------------------------------------------------


def measure(
    dataset_name: str,
    models_dir: Path,
    data_dir: Path,
    temperatures: list[float],
    n: int,
    per_class: int,
    steps: int,
    label_temperatures: tuple[float, ...] = (),
    versions: tuple[int, ...] = (),
) -> list[dict[str, Any]]:
    """One report per version (default: the newest), all measured with the same classifier and images."""
    from training.data import load_dataset
    from vae_contract.pixel_draws import DEFAULT_PIXEL_TEMPERATURE

    loaded = [_load(models_dir, MODELS[dataset_name], v)[1] for v in versions or (None,)]
    c, h, _ = loaded[0].manifest.image.shape
    data = load_dataset(dataset_name, data_dir, h, c)
    x_train = data.x_train.astype(np.float32) / 255
    x_test = data.x_test.astype(np.float32) / 255
    if x_train.ndim == 3:
        x_train, x_test = x_train[:, None], x_test[:, None]
    rng = np.random.default_rng(0)
    n = min(n, len(x_test))
    real = x_test[rng.choice(len(x_test), n, replace=False)]
    train_subset = x_train[rng.choice(len(x_train), n, replace=False)]
    started = time.perf_counter()
    net = train_classifier(x_train, data.y_train, int(data.y_train.max()) + 1, steps)
    trained_s = time.perf_counter() - started
    real_feats, real_pred = features_and_labels(net, x_test)
    test_accuracy = float(np.mean(real_pred == data.y_test))
    balanced_accuracy = per_class_rate(real_pred, data.y_test)[0]
    real_feats = features_and_labels(net, real)[0]
    train_feats = features_and_labels(net, x_train)[0]
    test_to_train = nearest_distance(real_feats, train_feats)
    real_energy = gradient_energy(real)
    mlp = _card_classifier(x_train, data.y_train, int(data.y_train.max()) + 1)
    mlp_test_labels = _mlp_labels(mlp, x_test)
    mlp_accuracy = float(np.mean(mlp_test_labels == data.y_test))
    mlp_balanced = per_class_rate(mlp_test_labels, data.y_test)[0]

    def row(images: np.ndarray, recognised: tuple[float, float] | None) -> dict[str, Any]:
        feats = features_and_labels(net, images)[0]
        precision, recall = precision_recall(real_feats, feats)
        return {
            "FD": round(frechet_distance(real_feats, feats), 3),
            "precision": round(precision, 3),
            "recall": round(recall, 3),
            "sharpness": round(gradient_energy(images) / real_energy, 3),
            "recognised": None if recognised is None else round(recognised[0], 3),
            "recognised_mlp": None if recognised is None else round(recognised[1], 3),
            "to_train": round(nearest_distance(feats, train_feats) / test_to_train, 3),
        }

    def one(vae: Any) -> dict[str, Any]:
        def recognised(pixel_temperature: float | None) -> tuple[float, float] | None:
            if vae.classes is None:
                return None
            images, labels = conditional_images(vae, per_class, 1000, pixel_temperature)
            cnn = float(np.mean(features_and_labels(net, images)[1] == labels))
            return cnn, float(np.mean(_mlp_labels(mlp, images) == labels))

        by_label: dict[str, dict[str, Any]] = {}
        for t in label_temperatures if vae.classes is not None else []:
            pixels = DEFAULT_PIXEL_TEMPERATURE if vae.can_draw() else None
            images, labels = conditional_images(vae, per_class, 1000, pixels, t)
            feats, predicted = features_and_labels(net, images)
            by_label[f"label, temperature {t:g}"] = {
                "recognised": round(float(np.mean(predicted == labels)), 3),
                "per_class": {
                    vae.classes.names[c]: round(rate, 3)
                    for c, rate in per_class_rate(predicted, labels)[1].items()
                },
                "recognised_mlp": round(float(np.mean(_mlp_labels(mlp, images) == labels)), 3),
                "to_train": round(nearest_distance(feats, train_feats) / test_to_train, 3),
            }
        rows = {"real train": row(train_subset, (test_accuracy, mlp_accuracy))}
        rows["mean"] = row(prior_images(vae, n, 0, None), recognised(None))
        if vae.can_draw():
            for t in temperatures:
                rows[f"sample T={t:g}"] = row(prior_images(vae, n, 0, t), recognised(t))
        return {
            "model": f"{vae.name}/{vae.manifest.version}",
            "images": n,
            "classifier": {
                "steps": steps,
                "test_accuracy": round(test_accuracy, 4),
                "balanced_accuracy": round(balanced_accuracy, 4),
                "seconds": round(trained_s),
            },
            "card_classifier_test_accuracy": round(mlp_accuracy, 4),
            "card_classifier_balanced_accuracy": round(mlp_balanced, 4),
            "rows": rows,
            "by_label": by_label,
            "ms_per_image_batch_64": cost_ms_per_image(vae),
        }

    return [one(vae) for vae in loaded]


def markdown(name: str, report: dict[str, Any]) -> str:
    lines = [
        f"**{name}** (`{report['model']}`, {report['images']} images per row; classifier test accuracy "
        f"{report['classifier']['test_accuracy']:.3f}, {report['classifier']['balanced_accuracy']:.3f} "
        "averaged over classes; ms/image at batch 64: "
        f"{report['ms_per_image_batch_64']})",
        "",
        "| images | FD | precision | recall | sharpness | recognised | MLP | to train |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, r in report["rows"].items():
        rec = [("" if r[key] is None else f"{r[key]:.3f}") for key in ("recognised", "recognised_mlp")]
        cells = [label, f"{r['FD']:.2f}", f"{r['precision']:.3f}", f"{r['recall']:.3f}"]
        lines.append(
            "| " + " | ".join([*cells, f"{r['sharpness']:.3f}", *rec, f"{r['to_train']:.2f}"]) + " |"
        )
    if report["by_label"]:
        lines += ["", "| conditional draws | recognised | MLP | to train |", "| --- | --- | --- | --- |"]
        for label, r in report["by_label"].items():
            cells = [label, f"{r['recognised']:.3f}", f"{r['recognised_mlp']:.3f}", f"{r['to_train']:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sample_quality", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--datasets", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--temperatures", nargs="+", type=float, default=[0.0, 0.3, 0.5, 0.7, 1.0])
    parser.add_argument("--images", type=int, default=2000, help="images per row (at most the test set)")
    parser.add_argument("--per-class", type=int, default=100, help="conditional samples per class")
    parser.add_argument(
        "--label-temperatures",
        nargs="*",
        type=float,
        default=[],
        help="latent temperatures of extra conditional rows (recognition and distance to the training set)",
    )
    parser.add_argument(
        "--versions",
        nargs="*",
        type=int,
        default=[],
        help="versions to measure side by side with one classifier (default: the newest)",
    )
    parser.add_argument("--steps", type=int, default=1500, help="classifier steps of 128 (whole epochs)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the reports here")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    reports = {}
    for name in args.datasets:
        reports[name] = measure(
            name,
            args.models_dir,
            args.data_dir,
            args.temperatures,
            args.images,
            args.per_class,
            args.steps,
            tuple(args.label_temperatures),
            tuple(args.versions),
        )
        for report in reports[name]:
            print(markdown(name, report), flush=True)
            print(flush=True)
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
