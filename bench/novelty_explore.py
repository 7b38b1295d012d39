"""Exploration: which per-image statistic separates a served model's own test images from real images of
other kinds? AUROC of the old reconstruct score (negative ELBO) and of candidate statistics, in-process
(numpy + onnxruntime, no HTTP), 1,000 images a side where the data has them, seeded.

    PYTHONPATH=$PWD VAE_DATA_DIR=/work/main/data python -m bench.novelty_explore --ood-dir /tmp/i28

Candidates (higher = more novel):
- score: the old negative ELBO (nats);
- S_<codec>: input complexity (Serra et al. 2020), -log2 p(x) - L(x), the ELBO's code length in bits
  minus a lossless codec's: PNG and lossless WebP files at several settings, zlib and bz2 on the raw bytes
  (channel-major or interleaved), zlib after PNG's Sub or Up filter (zlib_up is the one served);
- S_*_nll: the same with the reconstruction term alone;
- ratio_*: code length over the codec's, a scale-free variant;
- typ: typicality, |score - mean| / std on held-out in-distribution images (two-sided);
- maha: DoSE-like, the Mahalanobis distance of (nll, kl, L_png) bits/dim fitted on held-out images.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import math
import os
import time
import zlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from vae_contract.imaging import prepare_image
from vae_contract.likelihoods import discretized_logistic_nll, kl_to_prior, reconstruction_nll
from vae_contract.manifest import Manifest, verify_model_dir
from vae_contract.novelty import zlib_bits
from vae_contract.priors import read_mixture

LN2 = math.log(2)


def auroc(inn: np.ndarray, out: np.ndarray) -> float:
    """P(out > in) + P(tie) / 2 (Mann-Whitney), out = positives."""
    both = np.concatenate([inn, out])
    order = both.argsort(kind="mergesort")
    ranks = np.empty(len(both))
    ranks[order] = np.arange(1, len(both) + 1)
    # average ranks for ties
    _, inv, counts = np.unique(both, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    ranks = (sums / counts)[inv]
    r_out = ranks[len(inn) :].sum()
    n1, n0 = len(out), len(inn)
    return float((r_out - n1 * (n1 + 1) / 2) / (n0 * n1))


def idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    n, h, w = (int.from_bytes(data[i : i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(data, np.uint8, offset=16).reshape(n, 1, h, w)


def data(data_dir: Path, ood_dir: Path) -> dict[str, np.ndarray]:
    """uint8 (N, C, H, W) arrays (or lists of PIL images for the mixed-size photo sets)."""
    out: dict[str, np.ndarray] = {}
    with np.load(data_dir / "mnist.npz") as npz:
        out["mnist"] = npz["x_test"]
    out["fashion"] = idx(data_dir / "fashion-mnist" / "t10k-images-idx3-ubyte.gz")
    return out


def emoji_test(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    from training.datasets.emoji import split_groups

    with np.load(data_dir / "emoji-64.npz") as npz:
        x, group = npz["x"], npz["group"]
    test = split_groups(group)
    return x[test], group[test]


def photos(ood_dir: Path, rng: np.random.Generator) -> list[Image.Image]:
    """CIFAR-10/100 and ImageNet PNGs from foolbox's wheel, and 32x32..128x128 crops of scikit-image's
    photographs."""
    fb = sorted((ood_dir / "fb/foolbox/data").glob("*.png"))
    imgs = [Image.open(p).convert("RGB") for p in fb if p.name.startswith(("cifar", "imagenet"))]
    sk = ood_dir / "sk/skimage/data"
    names = ["astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png",
             "grass.png", "gravel.png", "hubble_deep_field.jpg", "moon.png", "motorcycle_left.png",
             "page.png", "retina.jpg", "rocket.jpg", "text.png", "ihc.png", "logo.png",
             "cell.png"]  # fmt: skip
    for name in names:
        im = Image.open(sk / name).convert("RGB")
        for _ in range(25):
            s = int(rng.integers(32, 129))
            s = min(s, im.width, im.height)
            x0, y0 = int(rng.integers(0, im.width - s + 1)), int(rng.integers(0, im.height - s + 1))
            imgs.append(im.crop((x0, y0, x0 + s, y0 + s)))
    return imgs


def lfw(ood_dir: Path) -> list[Image.Image]:
    a = np.load(ood_dir / "sk/skimage/data/lfw_subset.npy")
    return [Image.fromarray((f * 255 + 0.5).astype(np.uint8)) for f in a]


class Runner:
    def __init__(self, path: Path):
        self.m: Manifest = verify_model_dir(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        s = lambda f: ort.InferenceSession(str(path / f), opts, providers=["CPUExecutionProvider"])  # noqa: E731
        self.enc, self.dec = s(self.m.encoder.file), s(self.m.decoder.file)
        self.scorer = s(self.m.scorer.file) if self.m.scorer else None
        self.prior = (
            read_mixture(path / self.m.prior.file, self.m.prior.components, self.m.latent_dim)
            if self.m.prior
            else None
        )

    def terms(self, x: np.ndarray, batch: int = 200) -> dict[str, np.ndarray]:
        nll, kl = [], []
        for i in range(0, len(x), batch):
            xb = x[i : i + batch]
            mean, log_var = self.enc.run(None, {"x": xb})
            if self.scorer is not None:
                n = self.scorer.run(None, {"x": xb})[0].astype(np.float64)
            elif self.m.likelihood == "discretized_logistic":
                _, params = self.dec.run(None, {"z": mean})
                n = discretized_logistic_nll(xb, params, self.m.channel_coupling)
            else:
                rec = self.dec.run(None, {"z": mean})[0]
                n = reconstruction_nll(xb, rec, self.m.likelihood, self.m.gaussian_sigma)
            k = kl_to_prior(mean, log_var) if self.prior is None else self.prior.kl_bound(mean, log_var)
            nll.append(n)
            kl.append(k)
        return {"nll": np.concatenate(nll), "kl": np.concatenate(kl)}


def to_pil(u8: np.ndarray) -> Image.Image:
    return Image.fromarray(u8[0] if u8.shape[0] == 1 else u8.transpose(1, 2, 0))


PIL_CODECS = {
    "png": {"format": "PNG", "optimize": True, "compress_level": 9},
    "png6": {"format": "PNG", "compress_level": 6},
    "webp": {"format": "WEBP", "lossless": True, "quality": 100, "method": 6},
    "webp4": {"format": "WEBP", "lossless": True, "quality": 100, "method": 4},
    "webp0": {"format": "WEBP", "lossless": True, "quality": 0, "method": 0},
}


def _sub_filtered(u8: np.ndarray) -> np.ndarray:
    """PNG's Sub filter per channel: each pixel minus its left neighbour, mod 256."""
    rows = u8.astype(np.int16)
    rows[..., 1:] -= u8[..., :-1]
    return (rows & 0xFF).astype(np.uint8)


BYTE_CODECS = {  # on the (C, H, W) bytes, channel-major unless named
    "zlib": lambda img: len(zlib.compress(img.tobytes(), 9)),
    "zlib_interleaved": lambda img: len(zlib.compress(img.transpose(1, 2, 0).tobytes(), 9)),
    "zlib_sub": lambda img: len(zlib.compress(_sub_filtered(img[None])[0].tobytes(), 9)),
    "bz2": lambda img: len(bz2.compress(img.tobytes(), 9)),
}
CODECS = [*PIL_CODECS, *BYTE_CODECS, "zlib_up"]


def code_bits(u8: np.ndarray, codec: str) -> np.ndarray:
    if codec == "zlib_up":  # the served background (vae_contract.novelty)
        return zlib_bits(u8)
    out = np.empty(len(u8))
    for i, img in enumerate(u8):
        if codec in BYTE_CODECS:
            out[i] = 8 * BYTE_CODECS[codec](img)
            continue
        buf = io.BytesIO()
        to_pil(img).save(buf, **PIL_CODECS[codec])  # type: ignore[arg-type]
        out[i] = 8 * buf.tell()
    return out


def stats(runner: Runner, x: np.ndarray) -> dict[str, np.ndarray]:
    t = runner.terms(x)
    u8 = np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)
    t["score"] = t["nll"] + t["kl"]
    for c in CODECS:
        t["L_" + c] = code_bits(u8, c)
    return t


def candidates(t: dict[str, np.ndarray], ref: dict[str, np.ndarray], dims: int) -> dict[str, np.ndarray]:
    bits = t["score"] / LN2
    c = {"score": t["score"], "kl": t["kl"], "nll": t["nll"]}
    for codec in CODECS:
        c[f"S_{codec}"] = bits - t["L_" + codec]
        c[f"S_{codec}_nll"] = t["nll"] / LN2 - t["L_" + codec]
        c[f"ratio_{codec}"] = bits / t["L_" + codec]
    mu, sd = ref["score"].mean(), ref["score"].std()
    c["typ"] = np.abs(t["score"] - mu) / sd
    feats = lambda d: np.stack([d["nll"], d["kl"], d["L_png"]], axis=1) / dims  # noqa: E731
    f0 = feats(ref)
    m0, cov = f0.mean(0), np.cov(f0.T)
    inv = np.linalg.inv(cov)
    d = feats(t) - m0
    c["maha"] = np.einsum("ij,jk,ik->i", d, inv, d)
    s_ref = ref["score"] / LN2 - ref["L_png"]
    c["typ_S_png"] = np.abs(bits - t["L_png"] - s_ref.mean()) / s_ref.std()
    return c


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default=os.environ.get("VAE_DATA_DIR", "data"))
    p.add_argument("--ood-dir", default="/tmp/i28")
    p.add_argument("--models", default="mnist/1,mnist/2,mnist-2d/1,fashion/1,emoji/3,emoji/4")
    p.add_argument("--n", type=int, default=1000)
    args = p.parse_args()
    data_dir, ood_dir = Path(args.data_dir), Path(args.ood_dir)
    rng = np.random.default_rng(0)
    raw = data(data_dir, ood_dir)
    pick = lambda a, n: a[np.sort(np.random.default_rng(1).permutation(len(a))[:n])]  # noqa: E731
    grey = {k: pick(v, 2 * args.n).astype(np.float32) / 255 for k, v in raw.items()}
    flat_g = np.repeat(np.random.default_rng(2).integers(0, 256, args.n), 28 * 28).reshape(args.n, 1, 28, 28)
    noise_g = np.random.default_rng(3).integers(0, 256, (args.n, 1, 28, 28))
    grey["flat"], grey["noise"] = flat_g.astype(np.float32) / 255, noise_g.astype(np.float32) / 255
    for ref in args.models.split(","):
        runner = Runner(Path("models") / ref)
        spec = runner.m.image
        dims = math.prod(spec.shape)
        if spec.channels == 1:
            own = "mnist" if runner.m.dataset.name == "mnist" else "fashion"
            inn = grey[own]
            fit, inn = inn[: args.n], inn[args.n :]
            outs = {k: v[: args.n] for k, v in grey.items() if k != own}
        else:
            x, _ = emoji_test(data_dir)
            conv = lambda ims, spec=spec: np.stack([prepare_image(im, spec) for im in ims])  # noqa: E731
            allx = conv([to_pil(i) for i in x])
            half = np.random.default_rng(4).permutation(len(allx))
            fit, inn = allx[half[: len(allx) // 2]], allx[half[len(allx) // 2 :]]
            outs = {
                "mnist-rgb": conv([to_pil(i) for i in raw["mnist"][: args.n]]),
                "fashion-rgb": conv([to_pil(i) for i in raw["fashion"][: args.n]]),
                "photos": conv(photos(ood_dir, rng)),
                "lfw": conv(lfw(ood_dir)),
                "flat": np.repeat(
                    np.random.default_rng(2).integers(0, 256, (args.n, 3, 1, 1)), 32 * 32, axis=2
                )
                .reshape(args.n, 3, 32, 32)
                .astype(np.float32)
                / 255,
                "noise": np.random.default_rng(3).integers(0, 256, (args.n, 3, 32, 32)).astype(np.float32)
                / 255,
            }
        started = time.perf_counter()
        t_fit, t_in = stats(runner, fit), stats(runner, inn)
        print(f"== {ref}  in={len(inn)} fit={len(fit)}  ({time.perf_counter() - started:.1f}s)")
        c_in = candidates(t_in, t_fit, dims)
        rows = {}
        for name, xo in outs.items():
            t_out = stats(runner, xo)
            c_out = candidates(t_out, t_fit, dims)
            rows[name] = {k: auroc(c_in[k], c_out[k]) for k in c_in}
        keys = list(c_in)
        print(f"{'stat':14}" + "".join(f"{n[:11]:>12}" for n in rows))
        for k in keys:
            print(f"{k:14}" + "".join(f"{rows[n][k]:12.3f}" for n in rows))
        # codec timings per image
        u8 = np.clip(inn[:200] * 255 + 0.5, 0, 255).astype(np.uint8)
        for codec in CODECS:
            t0 = time.perf_counter()
            code_bits(u8, codec)
            print(f"  {codec}: {(time.perf_counter() - t0) / len(u8) * 1e6:.0f} us/image", end="")
        print(flush=True)


if __name__ == "__main__":
    main()
