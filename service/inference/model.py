"""One served VAE: its two graphs behind batchers, and the operations the routes offer, on numpy arrays.

Shapes: images are float32 (N, C, H, W) in the manifest's pixel range; latents are float32 (N, D).
Randomness (prior samples, the reparameterization noise) is drawn here with a seeded numpy Generator, never in
the graphs, so the same seed gives the same result on every host.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from service.errors import InvalidInput, shown
from service.inference.batcher import Batcher
from service.inference.limits import check_finite_outputs
from service.inference.offload import off_loop
from service.inference.runtime import Graph
from vae_contract.classes import ClassConditional
from vae_contract.latents import lerp, manifold_latents, slerp
from vae_contract.likelihoods import discretized_logistic_nll, kl_to_prior, reconstruction_nll
from vae_contract.manifest import Manifest
from vae_contract.novelty import Calibration, NoveltyReport, assess_novelty, default_statistic, to_uint8
from vae_contract.pixel_draws import (
    PixelDraw,
    PixelMode,
    draw_bernoulli,
    draw_gaussian,
    draw_mixture,
    pixel_rng,
    sampler_noise,
)
from vae_contract.priors import MixturePrior


def new_seed() -> int:
    """A fresh seed for requests that give none; below 2**31 so every client language can echo it back."""
    return secrets.randbelow(2**31)


def draw_prior(n: int, latent_dim: int, seed: int, temperature: float = 1.0) -> np.ndarray:
    """(n, D) draws from N(0, temperature^2 I) with numpy's PCG64 Generator."""
    rng = np.random.default_rng(seed)
    draws = rng.standard_normal((n, latent_dim), dtype=np.float32)
    return (draws * np.float32(temperature)).astype(np.float32)


def reparameterize(mean: np.ndarray, log_var: np.ndarray, seed: int) -> np.ndarray:
    """z = mean + exp(log_var / 2) * eps, eps ~ N(0, I) (Kingma and Welling 2014, eq. 10), seeded."""
    eps = np.random.default_rng(seed).standard_normal(mean.shape, dtype=np.float32)
    return (mean + np.exp(0.5 * log_var) * eps).astype(np.float32)


@dataclass(frozen=True)
class Encoding:
    mean: np.ndarray  # (N, D)
    log_var: np.ndarray  # (N, D)
    z: np.ndarray | None = None  # (N, D) when a seed was given
    seed: int | None = None


@dataclass(frozen=True)
class Reconstruction:
    images: np.ndarray  # (N, C, H, W) the decoder's mean at z = encoder mean
    scores: np.ndarray  # (N,) negative ELBO in nats, single-sample estimate at the mean
    mse: np.ndarray  # (N,) mean squared error per pixel
    mean: np.ndarray  # (N, D)
    log_var: np.ndarray  # (N, D)
    nll: np.ndarray  # (N,) float64, -log p(x | z = mean) in nats, the score's first term
    kl: np.ndarray  # (N,) float64, KL(q(z|x) || p(z)) in nats (the bound under a mixture), its second


class VAEModel:
    """A loaded, verified model version. Methods are async because they wait on the batchers."""

    def __init__(
        self,
        manifest: Manifest,
        path: Path,
        encoder: Graph,
        decoder: Graph,
        encoder_batcher: Batcher,
        decoder_batcher: Batcher,
        prior: MixturePrior | None = None,
        classes: ClassConditional | None = None,
        scorer: tuple[Graph, Batcher] | None = None,
        calibration: Calibration | None = None,
        sampler: tuple[Graph, Batcher] | None = None,
    ):
        self.manifest = manifest
        self.path = path
        self.encoder = encoder
        self.decoder = decoder
        self.encoder_batcher = encoder_batcher
        self.decoder_batcher = decoder_batcher
        self.prior = prior  # None: N(0, I); else the manifest's mixture, read and checked at load
        self.classes = classes  # p(z | class) of the manifest's `conditional` section, if any
        # The manifest's scorer graph (pixel groups): x -> -log p(x | z = encoder mean), nats per image.
        self.scorer: Graph | None = scorer[0] if scorer is not None else None
        self.scorer_batcher: Batcher | None = scorer[1] if scorer is not None else None
        # The manifest's novelty calibration (vae_contract/novelty.py), checked at load; None: no p-values.
        self.calibration = calibration
        # The manifest's sampler graph: (z, noise) -> an image drawn from p(x | z), pixel group by group.
        self.sampler: Graph | None = sampler[0] if sampler is not None else None
        self.sampler_batcher: Batcher | None = sampler[1] if sampler is not None else None

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def latent_dim(self) -> int:
        return self.manifest.latent_dim

    @property
    def providers(self) -> list[str]:
        # Both graphs are created with the same request; report the union in case they differ.
        return list(dict.fromkeys(self.encoder.providers + self.decoder.providers))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.manifest.version,
            "latent_dim": self.latent_dim,
            "providers": self.providers,
            "manifest": self.manifest.model_dump(mode="json"),
            "prior": self.describe_prior(),
            "pixels": {
                "default": self.default_pixels,
                "choices": ["sample", "mean"] if self.can_draw() else ["mean"],
            },
        }

    def describe_prior(self) -> dict[str, Any]:
        """What `sample` draws from and the reconstruct score's KL is taken against."""
        if self.prior is None:
            return {"kind": "standard_normal", "kl": "closed form"}
        spec = self.manifest.prior
        return {
            "kind": spec.kind if spec is not None else "mixture_of_gaussians",
            "components": self.prior.components,
            "source": spec.source if spec is not None else "",
            "kl": "upper bound -log sum_k w_k exp(-KL(q || p_k)), closed form per component",
        }

    @property
    def graphs(self) -> list[Graph]:
        optional = (self.scorer, self.sampler)
        return [self.encoder, self.decoder, *(g for g in optional if g is not None)]

    def warm_up(self, batch_sizes: tuple[int, ...]) -> None:
        """Run each graph at the given batch sizes so the first request pays no lazy initialisation."""
        c, h, w = self.manifest.image.shape
        for n in batch_sizes:
            self.encoder.run(np.zeros((n, c, h, w), dtype=np.float32))
            self.decoder.run(np.zeros((n, self.latent_dim), dtype=np.float32))
            if self.scorer is not None:
                self.scorer.run(np.zeros((n, c, h, w), dtype=np.float32))
            if self.sampler is not None:
                self.sampler.run(np.zeros((n, sum(self.sampler.row_sizes)), dtype=np.float32))

    async def close(self) -> None:
        await self.encoder_batcher.close()
        await self.decoder_batcher.close()
        if self.scorer_batcher is not None:
            await self.scorer_batcher.close()
        if self.sampler_batcher is not None:
            await self.sampler_batcher.close()

    # --- pixels: the decoder's mean or a draw from p(x | z) ------------------------------------------------

    @property
    def default_pixels(self) -> PixelMode:
        """What a request that does not choose gets. A sampler graph draws each pixel group given the groups
        drawn before, so neighbours agree and a draw is an image, sharper than the mean that blends every
        likely image (docs/samples.md measures it). A factorised decoder draws every pixel independently
        given z, which speckles the image: its mean is the better picture, and stays the default."""
        return "sample" if self.sampler is not None else "mean"

    def can_draw(self) -> bool:
        """Whether pixels can be drawn: a sampler graph, or a factorised likelihood drawn here in numpy."""
        return self.sampler is not None or self.manifest.pixel_groups == 1

    def check_pixels(self, mode: PixelMode) -> None:
        """InvalidInput, before any work, for a draw this version cannot make."""
        if mode == "sample" and not self.can_draw():
            raise InvalidInput(
                f"pixels: model {self.name!r} v{self.manifest.version} decodes pixel groups but has no "
                'sampler graph; use pixels "mean" or a version whose /v1/models manifest lists a sampler'
            )

    async def _decode_drawn(self, latents: np.ndarray, draw: PixelDraw) -> np.ndarray:
        """(N, D) -> (N, C, H, W) drawn from p(x | z) with the request's seed and pixel temperature."""
        rng, t, shared = pixel_rng(draw.seed), draw.temperature, draw.shared
        c, h, w = self.manifest.image.shape
        # The noise for 256 colour images is 13 MB of random draws (~85 ms of CPU): drawn off the event loop.
        if self.sampler is not None and self.sampler_batcher is not None:
            sampler, maps = self.sampler, self.sampler.row_shapes[1][0]

            def packed() -> np.ndarray:
                return sampler.pack(latents, sampler_noise(len(latents), maps, c, h, w, rng, t, shared))

            x = await off_loop(len(latents) * maps * c * h * w, packed)
            return (await self.sampler_batcher.submit(x))[0]
        likelihood = self.manifest.likelihood
        if likelihood == "discretized_logistic":
            params = (await self.decoder_batcher.submit(latents))[1]
            k = self.manifest.mixture_components or 1
            coupled = self.manifest.channel_coupling

            def drawn() -> np.ndarray:
                noise = sampler_noise(len(latents), k + c, c, h, w, rng, t, shared)
                return draw_mixture(params, c, coupled, noise)

            return await off_loop(params.size, drawn)
        mean = await self.decode(latents)
        if likelihood == "bernoulli":
            return await off_loop(mean.size, draw_bernoulli, mean, rng, t, shared)
        sigma = self.manifest.gaussian_sigma or 0.1
        return await off_loop(mean.size, draw_gaussian, mean, sigma, rng, t, shared)

    # --- operations ----------------------------------------------------------------------------------------

    async def encode(self, images: np.ndarray, sample_seed: int | None = None) -> Encoding:
        """(N, C, H, W) -> the posterior's mean and log_var (N, D); with a seed, also a draw z from it."""
        mean, log_var = await self.encoder_batcher.submit(images)
        if sample_seed is None:
            return Encoding(mean, log_var)
        z = reparameterize(mean, log_var, sample_seed)
        check_finite_outputs("encoder's sample", z)
        return Encoding(mean, log_var, z, sample_seed)

    async def decode(self, latents: np.ndarray, draw: PixelDraw | None = None) -> np.ndarray:
        """(N, D) -> (N, C, H, W) in the pixel range: the decoder's mean, or with `draw` an image drawn from
        p(x | z)."""
        if draw is not None:
            self.check_pixels("sample")
            return await self._decode_drawn(latents, draw)
        images = (await self.decoder_batcher.submit(latents))[0]  # `x`; a mixture's `params` follow it
        low, high = self.manifest.image.pixel_range
        # In place: these rows of the batch output belong to this request alone.
        return np.clip(images, low, high, out=images)

    def class_index(self, label: str) -> int:
        """The index of a class name, or InvalidInput saying which names this model has."""
        if self.classes is None:
            raise InvalidInput(
                f"model {self.name!r} v{self.manifest.version} has no classes: label needs a model whose "
                "/v1/models entry lists classes"
            )
        index = self.classes.index(label)
        if index is None:
            valid = ", ".join(repr(name) for name in self.classes.names)
            raise InvalidInput(f"unknown label {shown(label)} for model {self.name!r}; valid labels: {valid}")
        return index

    async def sample(
        self,
        n: int,
        seed: int,
        temperature: float,
        label: str | None = None,
        pixel_temperature: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """n seeded draws from the prior, or with a label from that class's distribution (its Gaussian, or the
        prior's components of that class), and their images (with a pixel temperature: drawn from p(x | z),
        seeded by the same seed)."""
        if label is not None:
            index = self.class_index(label)
            assert self.classes is not None
            latents = self.classes.draw(index, n, seed, temperature)
        elif self.prior is not None:  # a component per draw, then a Gaussian draw (vae_contract/priors.py)
            latents = self.prior.draw(n, seed, temperature)
        else:
            latents = draw_prior(n, self.latent_dim, seed, temperature)
        draw = None if pixel_temperature is None else PixelDraw(seed, pixel_temperature)
        return await self.decode(latents, draw), latents

    async def reconstruct(self, images: np.ndarray, draw: PixelDraw | None = None) -> Reconstruction:
        """Decode at the posterior mean and score each image by its negative ELBO.

        score = -log p(x | z = mean) + KL(q(z|x) || p(z)): the reconstruction term estimated with the single
        point z = mean (no sampling, so the score is deterministic), the KL term exact against N(0, I). Under
        a mixture prior (a VampPrior) the KL has no closed form; the score then uses the deterministic upper
        bound -log sum_k w_k exp(-KL(q || p_k)) (see `vae_contract/priors.py`), exact for one component.
        Higher means the model finds the image less plausible, which makes it usable for novelty detection.
        With `draw`, the images returned (and their mse) are drawn from p(x | z = mean); the score is the
        same.
        """
        encoding = await self.encode(images)
        mean, log_var = encoding.mean, encoding.log_var
        if self.scorer_batcher is not None:  # pixel groups: the likelihood reads the image's own pixels
            recon = await self.decode(mean)
            nll = (await self.scorer_batcher.submit(images))[0].astype(np.float64)  # finite: Graph.run checks
        elif self.manifest.likelihood == "discretized_logistic":
            recon, params = await self.decoder_batcher.submit(mean)
            low, high = self.manifest.image.pixel_range
            recon = np.clip(recon, low, high, out=recon)
            coupled = self.manifest.channel_coupling
            nll = discretized_logistic_nll(images, params, coupled)  # the 8-bit image's code length, nats
        else:
            recon = await self.decode(mean)
            nll = reconstruction_nll(images, recon, self.manifest.likelihood, self.manifest.gaussian_sigma)
        if self.prior is None:
            kl = kl_to_prior(mean, log_var)
        else:  # (images, components) KLs: a thread's work for a batch against thousands of components
            kl = await off_loop(len(mean) * self.prior.components, self.prior.kl_bound, mean, log_var)
        scores = nll + kl
        if draw is not None:
            recon = await self.decode(mean, draw)
        flat = (images - recon).reshape(len(images), -1).astype(np.float64)
        mse = np.mean(flat**2, axis=1)
        return Reconstruction(
            recon, scores.astype(np.float32), mse.astype(np.float32), mean, log_var, nll, np.asarray(kl)
        )

    @property
    def novelty_statistic(self) -> str:
        """The statistic `novelty` answers: the calibration file's, else the likelihood's default."""
        if self.calibration is not None:
            return self.calibration.statistic
        return default_statistic(self.manifest.likelihood)

    def novelty(self, images: np.ndarray, rec: Reconstruction, alpha: float) -> NoveltyReport:
        """Novelty of images (N, C, H, W) from their reconstruction's terms, with conformal p-values and
        flags at `alpha` where this version ships a calibration file (vae_contract/novelty.py)."""
        u8 = to_uint8(images, self.manifest.image.pixel_range)
        why_not = (
            None
            if self.calibration is not None
            else f"model {self.name!r} v{self.manifest.version} ships no novelty calibration file (its "
            "manifest has no `novelty` section): novelty is answered without p-values"
        )
        return assess_novelty(
            self.novelty_statistic, rec.nll + rec.kl, rec.kl, u8, alpha, self.calibration, why_not
        )

    async def interpolate(
        self,
        start: np.ndarray,
        end: np.ndarray,
        steps: int,
        method: Literal["lerp", "slerp"],
        draw: PixelDraw | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Two (D,) latents -> images (steps, C, H, W) and latents (steps, D), endpoints exact."""
        path = slerp(start, end, steps) if method == "slerp" else lerp(start, end, steps)
        return await self.decode(path, draw), path

    async def manifold(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The decoded (size*size) inverse-CDF grid of a 2-D latent model (Kingma and Welling, fig. 4)."""
        if self.latent_dim != 2:
            raise InvalidInput(f"model {self.name!r} has latent_dim {self.latent_dim}; the manifold needs 2")
        latents = manifold_latents(size)
        return await self.decode(latents), latents
