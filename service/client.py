"""A small typed client for the VAE service, sync (`VAEClient`) and async (`AsyncVAEClient`), on httpx.

    with VAEClient("http://127.0.0.1:8000") as vae:
        emb = vae.embeddings([open("digit.png", "rb").read()], version=1)  # (1, D) float32, pinned to v1
        images = vae.decode(emb.vectors, version=emb.version)              # (1, C, H, W) float32 in [0, 1]
        sample = vae.sample(16, seed=7)                                    # PNGs, latents and the seed

`pip install -e ".[client]"` in the checkout (or the wheel `make wheel` builds, with `[client]`) is all it
needs: importing this module loads httpx and numpy, never onnxruntime, FastAPI or the server's code;
Pillow is loaded only to turn numpy arrays into PNG uploads.
Latents travel as `.npy` or little-endian float32 where the service accepts it (exact, no JSON floats).
`version=` pins a model version (stored embeddings keep their meaning), `label=` asks a conditional model for
a class; both are sent only when given. Any 4xx/5xx answer raises `VAEServiceError` carrying the status, the
service's `error_type` and message.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import numpy as np

NPY = "application/x-npy"
ImageInput = bytes | np.ndarray
Label = str | int


class VAEServiceError(Exception):
    def __init__(self, status: int, error_type: str, message: str, request_id: str | None = None):
        super().__init__(f"{status} {error_type}: {message}")
        self.status = status
        self.error_type = error_type
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True)
class EncodeResult:
    model: str
    version: int
    mean: np.ndarray  # (N, D)
    log_var: np.ndarray  # (N, D)
    z: np.ndarray | None = None  # (N, D) when sampled
    seed: int | None = None


@dataclass(frozen=True)
class EmbeddingsResult:
    model: str
    version: int
    vectors: np.ndarray  # (N, D) float32 posterior means, or (N, dimensions) with `dimensions`
    dimensions: list[int] | None = None  # the latent indices kept, most informative first


@dataclass(frozen=True)
class SampleResult:
    model: str
    version: int
    images: list[bytes]  # PNGs
    latents: np.ndarray  # (N, D)
    seed: int
    pixels: str = "mean"  # "sample": drawn from p(x | z); "mean": the decoder's mean (older servers: mean)


@dataclass(frozen=True)
class ReconstructResult:
    model: str
    version: int
    images: list[bytes]  # PNG reconstructions
    scores: np.ndarray  # (N,) negative ELBO, nats
    mse: np.ndarray  # (N,)
    mean: np.ndarray  # (N, D)
    log_var: np.ndarray  # (N, D)
    novelty: np.ndarray | None = None  # (N,) higher = more novel (docs/novelty.md); None from older servers
    p_values: np.ndarray | None = None  # (N,) conformal p-values; None without a calibration file
    novel: np.ndarray | None = None  # (N,) bool, p_values <= alpha


@dataclass(frozen=True)
class InterpolateResult:
    model: str
    version: int
    method: str
    images: list[bytes]  # PNGs along the path
    latents: np.ndarray  # (steps, D)


def png_to_array(png: bytes) -> np.ndarray:
    """PNG bytes -> float32 (C, H, W) in [0, 1]."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        arr = np.asarray(img, dtype=np.float32) / 255.0
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _image_bytes(image: ImageInput) -> bytes:
    """Bytes pass through (PNG/JPEG); arrays: (C, H, W) or (H, W) floats in [0, 1], or uint8 for Pillow."""
    if isinstance(image, bytes | bytearray):
        return bytes(image)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        from vae_contract.imaging import (
            encode_png,
        )  # the service's own float -> 8-bit rule, loaded on first use

        return encode_png(arr[None] if arr.ndim == 2 else arr)
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _files(images: Sequence[ImageInput]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [
        ("files", (f"image{i}.png", _image_bytes(img), "application/octet-stream"))
        for i, img in enumerate(images)
    ]


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def _form(**fields: Any) -> dict[str, str]:
    out = {}
    for key, value in fields.items():
        if value is not None:
            out[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def _arr(value: Any) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


def _b64s(values: list[str]) -> list[bytes]:
    return [base64.b64decode(v) for v in values]


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    kwargs: dict[str, Any]


def _query(**fields: Any) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


class _Calls:
    """Request building and response parsing, shared by the sync and async clients."""

    @staticmethod
    def check(resp: httpx.Response) -> httpx.Response:
        if resp.status_code < 400:
            return resp
        try:
            body = resp.json()
            error_type, message = str(body.get("error_type", "unknown")), str(body.get("error", resp.text))
        except ValueError:
            error_type, message = "unknown", resp.text[:500]
        raise VAEServiceError(resp.status_code, error_type, message, resp.headers.get("x-request-id"))

    @staticmethod
    def encode(
        images: Sequence[ImageInput], model: str | None, version: int | None, sample: bool, seed: int | None
    ) -> _Call:
        data = _form(model=model, version=version, sample=sample, seed=seed)
        return _Call("POST", "/v1/encode", {"files": _files(images), "data": data})

    @staticmethod
    def parse_encode(resp: httpx.Response) -> EncodeResult:
        b = resp.json()
        z = _arr(b["z"]) if b.get("z") is not None else None
        return EncodeResult(b["model"], b["version"], _arr(b["mean"]), _arr(b["log_var"]), z, b.get("seed"))

    @staticmethod
    def encode_npy(
        images: Sequence[ImageInput], model: str | None, version: int | None, output: str
    ) -> _Call:
        data, params, headers = _form(model=model, version=version), {"output": output}, {"accept": NPY}
        kwargs = {"files": _files(images), "data": data, "params": params, "headers": headers}
        return _Call("POST", "/v1/encode", kwargs)

    @staticmethod
    def embeddings(
        images: Sequence[ImageInput], model: str | None, version: int | None, dimensions: int | None
    ) -> _Call:
        if version is not None and model is None:
            raise ValueError("version= needs model= (the model it is a version of)")
        ref = f"{model}@{version}" if version is not None else model
        inputs = [base64.b64encode(_image_bytes(img)).decode("ascii") for img in images]
        body = _query(model=ref, input=inputs, encoding_format="base64", dimensions=dimensions)
        return _Call("POST", "/v1/embeddings", {"json": body})

    @staticmethod
    def parse_embeddings(resp: httpx.Response) -> EmbeddingsResult:
        b = resp.json()
        rows = sorted(b["data"], key=lambda d: d["index"])
        vectors = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in rows])
        name, _, version = str(b["model"]).rpartition("@")
        kept = resp.headers.get("x-embedding-dimensions")
        dims = [int(i) for i in kept.split(",")] if kept else None
        return EmbeddingsResult(name, int(version), vectors.astype(np.float32), dims)

    @staticmethod
    def decode(latents: np.ndarray, model: str | None, version: int | None) -> _Call:
        params = _query(model=model, version=version)
        headers = {"content-type": NPY, "accept": NPY}
        return _Call("POST", "/v1/decode", {"content": _npy(latents), "params": params, "headers": headers})

    @staticmethod
    def parse_npy(resp: httpx.Response) -> np.ndarray:
        arr: np.ndarray = np.load(io.BytesIO(resp.content), allow_pickle=False)
        return arr

    @staticmethod
    def sample(
        n: int,
        model: str | None,
        version: int | None,
        seed: int | None,
        temperature: float,
        label: Label | None,
        pixels: str | None = None,
        pixel_temperature: float | None = None,
    ) -> _Call:
        body = _query(
            n=n, model=model, version=version, seed=seed, temperature=temperature, label=label, pixels=pixels,
            pixel_temperature=pixel_temperature,
        )  # fmt: skip
        return _Call("POST", "/v1/sample", {"json": body})

    @staticmethod
    def parse_sample(resp: httpx.Response) -> SampleResult:
        b = resp.json()
        images, latents = _b64s(b["images"]), _arr(b["latents"])
        return SampleResult(b["model"], b["version"], images, latents, b["seed"], b.get("pixels", "mean"))

    @staticmethod
    def reconstruct(
        images: Sequence[ImageInput], model: str | None, version: int | None, alpha: float | None = None
    ) -> _Call:
        data = _form(model=model, version=version, alpha=alpha)
        return _Call("POST", "/v1/reconstruct", {"files": _files(images), "data": data})

    @staticmethod
    def parse_reconstruct(resp: httpx.Response) -> ReconstructResult:
        b = resp.json()
        optional = {
            key: None if b.get(key) is None else np.asarray(b[key]) for key in ("novelty", "p_values")
        }
        novel = None if b.get("novel") is None else np.asarray(b["novel"], dtype=bool)
        return ReconstructResult(
            b["model"], b["version"], _b64s(b["images"]), _arr(b["scores"]), _arr(b["mse"]), _arr(b["mean"]),
            _arr(b["log_var"]), optional["novelty"], optional["p_values"], novel,
        )  # fmt: skip

    @staticmethod
    def interpolate(
        images: Sequence[ImageInput] | None,
        latents: np.ndarray | None,
        steps: int,
        method: str,
        model: str | None,
        version: int | None,
    ) -> _Call:
        if (images is None) == (latents is None):
            raise ValueError("give either two images or two latents")
        if latents is not None:
            body = _query(
                latents=_arr(latents).tolist(), steps=steps, method=method, model=model, version=version
            )
            return _Call("POST", "/v1/interpolate", {"json": body})
        assert images is not None
        data = _form(steps=steps, method=method, model=model, version=version)
        return _Call("POST", "/v1/interpolate", {"files": _files(images), "data": data})

    @staticmethod
    def parse_interpolate(resp: httpx.Response) -> InterpolateResult:
        b = resp.json()
        return InterpolateResult(
            b["model"], b["version"], b["method"], _b64s(b["images"]), _arr(b["latents"])
        )

    @staticmethod
    def manifold(model: str | None, version: int | None, size: int) -> _Call:
        params = _query(size=size, model=model, version=version)
        return _Call("GET", "/v1/manifold", {"params": params, "headers": {"accept": "image/png"}})


Method = Literal["lerp", "slerp"]


class VAEClient:
    """Blocking client. `api_key` is sent as a bearer token; extra keyword arguments go to httpx.Client.

    `model=None` is the service's default model; `version=None` the newest loaded version of it.
    """

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 60.0, **kwargs: Any):
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers=headers, **kwargs)

    def __enter__(self) -> VAEClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call) -> httpx.Response:
        return _Calls.check(self._http.request(call.method, call.path, **call.kwargs))

    def health(self) -> bool:
        return self._http.get("/healthz").status_code == 200

    def ready(self) -> bool:
        return self._http.get("/readyz").status_code == 200

    def models(self) -> dict[str, Any]:
        body: dict[str, Any] = self._send(_Call("GET", "/v1/models", {})).json()
        return body

    def model(self, name: str) -> dict[str, Any]:
        body: dict[str, Any] = self._send(_Call("GET", f"/v1/models/{name}", {})).json()
        return body

    def encode(
        self,
        images: Sequence[ImageInput],
        *,
        model: str | None = None,
        version: int | None = None,
        sample: bool = False,
        seed: int | None = None,
    ) -> EncodeResult:
        return _Calls.parse_encode(self._send(_Calls.encode(images, model, version, sample, seed)))

    def encode_npy(
        self,
        images: Sequence[ImageInput],
        *,
        model: str | None = None,
        version: int | None = None,
        output: str = "mean",
    ) -> np.ndarray:
        return _Calls.parse_npy(self._send(_Calls.encode_npy(images, model, version, output)))

    def embeddings(
        self,
        images: Sequence[ImageInput],
        *,
        model: str | None = None,
        version: int | None = None,
        dimensions: int | None = None,
    ) -> EmbeddingsResult:
        """Posterior means via /v1/embeddings (exact float32); `dimensions` keeps the most informative."""
        return _Calls.parse_embeddings(self._send(_Calls.embeddings(images, model, version, dimensions)))

    def decode(
        self, latents: np.ndarray, *, model: str | None = None, version: int | None = None
    ) -> np.ndarray:
        """(N, D) latents -> float32 (N, C, H, W) images in [0, 1]."""
        return _Calls.parse_npy(self._send(_Calls.decode(latents, model, version)))

    def sample(
        self,
        n: int = 1,
        *,
        model: str | None = None,
        version: int | None = None,
        seed: int | None = None,
        temperature: float = 1.0,
        label: Label | None = None,
        pixels: Literal["sample", "mean"] | None = None,
        pixel_temperature: float | None = None,
    ) -> SampleResult:
        """`label`: a class of a conditional model (when the server and model support it). `pixels`: images
        drawn from p(x | z) or the decoder's mean (None: the model's default; docs/samples.md)."""
        call = _Calls.sample(n, model, version, seed, temperature, label, pixels, pixel_temperature)
        return _Calls.parse_sample(self._send(call))

    def reconstruct(
        self,
        images: Sequence[ImageInput],
        *,
        model: str | None = None,
        version: int | None = None,
        alpha: float | None = None,
    ) -> ReconstructResult:
        return _Calls.parse_reconstruct(self._send(_Calls.reconstruct(images, model, version, alpha)))

    def interpolate(
        self,
        *,
        images: Sequence[ImageInput] | None = None,
        latents: np.ndarray | None = None,
        steps: int = 8,
        method: Method = "lerp",
        model: str | None = None,
        version: int | None = None,
    ) -> InterpolateResult:
        call = _Calls.interpolate(images, latents, steps, method, model, version)
        return _Calls.parse_interpolate(self._send(call))

    def manifold(self, *, model: str | None = None, version: int | None = None, size: int = 20) -> bytes:
        """The manifold grid as PNG bytes."""
        return self._send(_Calls.manifold(model, version, size)).content


class AsyncVAEClient:
    """The same operations for asyncio code."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 60.0, **kwargs: Any):
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=headers, **kwargs)

    async def __aenter__(self) -> AsyncVAEClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call) -> httpx.Response:
        return _Calls.check(await self._http.request(call.method, call.path, **call.kwargs))

    async def health(self) -> bool:
        return (await self._http.get("/healthz")).status_code == 200

    async def ready(self) -> bool:
        return (await self._http.get("/readyz")).status_code == 200

    async def models(self) -> dict[str, Any]:
        body: dict[str, Any] = (await self._send(_Call("GET", "/v1/models", {}))).json()
        return body

    async def model(self, name: str) -> dict[str, Any]:
        body: dict[str, Any] = (await self._send(_Call("GET", f"/v1/models/{name}", {}))).json()
        return body

    async def encode(
        self,
        images: Sequence[ImageInput],
        *,
        model: str | None = None,
        version: int | None = None,
        sample: bool = False,
        seed: int | None = None,
    ) -> EncodeResult:
        return _Calls.parse_encode(await self._send(_Calls.encode(images, model, version, sample, seed)))

    async def encode_npy(
        self,
        images: Sequence[ImageInput],
        *,
        model: str | None = None,
        version: int | None = None,
        output: str = "mean",
    ) -> np.ndarray:
        return _Calls.parse_npy(await self._send(_Calls.encode_npy(images, model, version, output)))

    async def embeddings(
        self,
        images: Sequence[ImageInput],
        *,
        model: str | None = None,
        version: int | None = None,
        dimensions: int | None = None,
    ) -> EmbeddingsResult:
        call = _Calls.embeddings(images, model, version, dimensions)
        return _Calls.parse_embeddings(await self._send(call))

    async def decode(
        self, latents: np.ndarray, *, model: str | None = None, version: int | None = None
    ) -> np.ndarray:
        return _Calls.parse_npy(await self._send(_Calls.decode(latents, model, version)))

    async def sample(
        self,
        n: int = 1,
        *,
        model: str | None = None,
        version: int | None = None,
        seed: int | None = None,
        temperature: float = 1.0,
        label: Label | None = None,
        pixels: Literal["sample", "mean"] | None = None,
        pixel_temperature: float | None = None,
    ) -> SampleResult:
        call = _Calls.sample(n, model, version, seed, temperature, label, pixels, pixel_temperature)
        return _Calls.parse_sample(await self._send(call))

    async def reconstruct(
        self,
        images: Sequence[ImageInput],
        *,
        model: str | None = None,
        version: int | None = None,
        alpha: float | None = None,
    ) -> ReconstructResult:
        return _Calls.parse_reconstruct(await self._send(_Calls.reconstruct(images, model, version, alpha)))

    async def interpolate(
        self,
        *,
        images: Sequence[ImageInput] | None = None,
        latents: np.ndarray | None = None,
        steps: int = 8,
        method: Method = "lerp",
        model: str | None = None,
        version: int | None = None,
    ) -> InterpolateResult:
        call = _Calls.interpolate(images, latents, steps, method, model, version)
        return _Calls.parse_interpolate(await self._send(call))

    async def manifold(
        self, *, model: str | None = None, version: int | None = None, size: int = 20
    ) -> bytes:
        return (await self._send(_Calls.manifold(model, version, size))).content
