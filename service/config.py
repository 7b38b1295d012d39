"""Service settings: one validated class, every field documented, read from `VAE_*` environment variables.

Defaults are safe for a public-facing host: every request dimension has a cap, CORS is off, and a full queue
answers 503 instead of growing without bound.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Provider = Literal["auto", "cuda", "cpu"]
AUTH_OFF = "none"  # VAE_API_KEYS=none: authentication explicitly off


def _split_csv(value: object) -> object:
    # `VAE_MODELS=mnist,mnist-2d` reads better in a shell than a JSON list; JSON lists still work.
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    # hide_input_in_errors: a validation error names the setting and the problem, never its value (which may
    # be an API key).
    model_config = SettingsConfigDict(
        env_prefix="VAE_", extra="ignore", validate_default=True, hide_input_in_errors=True
    )

    # --- network -------------------------------------------------------------------------------------------
    host: str = Field(
        default="127.0.0.1", description="Address to bind; loopback unless you mean to expose it."
    )
    port: int = Field(
        default=8000, ge=0, le=65535, description="TCP port to listen on (0 picks a free port)."
    )
    grpc_port: int = Field(
        default=8081,
        ge=0,
        le=65535,
        description="TCP port of the Open Inference Protocol over gRPC (KServe's GRPCInferenceService; "
        "8081 is KServe's gRPC port), served by the same process with the same models, limits, API keys "
        "and metrics as HTTP; 0 turns gRPC off. Worker processes share it (SO_REUSEPORT).",
    )
    tracing: bool = Field(
        default=False,
        description="OpenTelemetry tracing (needs the `tracing` extra): a span per request with queue wait, "
        "batch size, inference and encoding, W3C traceparent honoured, exported over OTLP as the standard "
        "OTEL_* variables say. Also on when OTEL_TRACES_EXPORTER or OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT "
        "is set (unless OTEL_SDK_DISABLED=true). Off: opentelemetry is never imported.",
    )
    # Connection guard (service.server.connections, under `vae-serve`): every connection ends on its own
    # unless it is idle, and idle ones make room for new clients, so sockets never exhaust file descriptors.
    idle_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="Seconds a connection with no request in progress (a new one that sends nothing, or a "
        "keep-alive one between requests) stays open. Behind a load balancer, set it above the balancer's "
        "own idle timeout (e.g. 65 for an AWS ALB's 60) so the balancer is the side that closes.",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="Seconds from a request's first byte until its headers must be complete (408 and close "
        "beyond): a client trickling headers (slowloris) holds a connection this long at most.",
    )
    max_header_bytes: int = Field(
        default=32 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Largest request line plus headers in bytes (431 and close beyond), checked on every "
        "read before parsing more; nginx's default buffers allow the same 32 KiB.",
    )
    body_timeout_s: float = Field(
        default=15.0,
        gt=0,
        le=600,
        description="Longest gap (seconds) between two reads of a request body while the service waits for "
        "it (408 and close beyond); the request timeout bounds the whole request besides.",
    )
    send_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Longest the service waits for a client to take more of its response (the write buffer "
        "full) before dropping the connection, so a client that stops reading cannot hold a connection and "
        "its buffered response forever.",
    )
    max_connections: int = Field(
        default=2048,
        ge=16,
        le=1_000_000,
        description="Open connections per worker process. At the cap a new connection closes the one idle "
        "the longest, or gets 503 when none is idle; refusals are logged (at most one line per 10 s). The "
        "open-file limit is raised to fit it at startup, and the cap shrinks if the hard limit is lower.",
    )

    # --- models --------------------------------------------------------------------------------------------
    models_dir: Path = Field(
        default=Path("models"), description="The models/ folder: <name>/<version>/ exports."
    )
    models: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="Model names to serve (comma-separated or JSON list); unset serves every model found. "
        "The latest version of each is loaded.",
    )
    default_model: str | None = Field(
        default=None,
        description="Model that answers requests naming none; unset: 'mnist' if served, else the first name "
        "alphabetically.",
    )

    reload_interval_s: float = Field(
        default=5.0,
        ge=0,
        le=86400,
        description="How often (seconds) to look in models_dir for a newer version of each served model; a "
        "new version is loaded, verified and warmed beside the old one, then swapped in atomically (a broken "
        "one leaves the old version serving). 0: only on SIGHUP.",
    )
    version_policy: str = Field(
        default="latest:2",
        pattern=r"^(latest:[1-9][0-9]{0,2}|specific:[1-9][0-9]{0,8}(,[1-9][0-9]{0,8}){0,63})$",
        description="Which versions of each model stay loaded, as Triton's version policy: 'latest:N' keeps "
        "the newest N that load (a new version is loaded beside them and the oldest is retired), "
        "'specific:1,3' exactly those. Requests may pin any loaded version; unpinned ones get the newest. "
        "Two by default, so clients pinned to the previous version keep their exact vectors across a "
        "release; each loaded version costs its sessions' memory.",
    )
    follow_symlinks: bool = Field(
        default=False,
        description="Serve model and version folders (and their files) that are symbolic links resolving "
        "outside models_dir. Off: such a version is refused, so a link planted in models/ cannot make the "
        "service read files elsewhere on the host.",
    )
    allow_latent_change: bool = Field(
        default=False,
        description="Let a new version whose latent_dim differs from the serving version's replace it. Off: "
        "it is refused (logged, and shown on /readyz), because clients that store embeddings would get "
        "vectors of another size under the same model name; publish it under a new name instead.",
    )

    # --- onnxruntime ---------------------------------------------------------------------------------------
    provider: Provider = Field(
        default="auto",
        description="Execution provider: 'auto' uses CUDA when the NVIDIA driver, CUDA and cuDNN libraries "
        "load and onnxruntime lists it, else CPU without asking (one log line says which and why; a later "
        "fallback to CPU is a warning); 'cuda' refuses to serve a model that is not on CUDA; "
        "'cpu' never touches CUDA.",
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        le=256,
        description="Threads onnxruntime uses inside one operator (0: onnxruntime's default, one per "
        "physical core). Left unset, `vae-serve` sets it with its worker plan (service/server/workers.py: 1 "
        "per worker process on a CPU host, one worker per core).",
    )
    cpu_arena: bool = Field(
        default=False,
        description="onnxruntime's CPU memory arena for every session. On, each session keeps the buffers "
        "of its largest run for its whole life (a worker serving the default models idled at 1.6 GB with it "
        "and warm-up runs at the largest batch); off, they go back to malloc after each run, with no "
        "measurable cost per request (docs/benchmarks.md).",
    )
    batch_padding: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Pad each onnxruntime call's batch with zero rows to the next of a few sizes (powers of "
        "two up to max_batch_size, and max_batch_size), each run at load, so a GPU sees no new input shape "
        "after warm-up (the CUDA provider chooses convolution algorithms per new shape); the padding rows "
        "are dropped before anything reads the outputs. 'auto': on CUDA only (on CPU the padded rows cost "
        "their work, and CPU sessions are warmed at batch 1 only); 'on' / 'off': everywhere / nowhere.",
    )
    gpu_mem_limit_mb: int = Field(
        default=0,
        ge=0,
        le=16 * 1024 * 1024,
        description="Cap (MiB) on each CUDA session's memory arena (onnxruntime's gpu_mem_limit); 0: none. "
        "Left unset, `vae-serve` on a GPU host sets it to each worker's share of its card "
        "(service/server/workers.py), so that no arena of a worker grows past what the workers sharing the "
        "card can spare; bench/gpu_workers.py measures what a worker really holds.",
    )
    inter_op_threads: int = Field(
        default=1,
        ge=0,
        le=256,
        description="Threads for running independent graph nodes in parallel; the exported graphs are "
        "chains, so 1 (sequential execution) wastes nothing.",
    )

    # --- dynamic batching -----------------------------------------------------------------------------------
    max_batch_size: int = Field(
        default=256, ge=1, le=65536, description="Most items (images or latents) in one onnxruntime call."
    )
    max_delay_ms: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description="Longest the oldest queued item waits for more to fill a batch when the graph is idle. "
        "0 dispatches at once: requests that arrive while a batch runs queue and form the next batch anyway, "
        "so batches grow with load without adding latency at low load. A few ms can help a GPU at moderate "
        "load.",
    )
    max_queue: int = Field(
        default=16384,
        ge=1,
        description="Items waiting per model graph before new requests get 503 + Retry-After. Must admit "
        "the largest single request.",
    )
    inline_run_us: float = Field(
        default=100.0,
        ge=0,
        le=10_000,
        description="onnxruntime calls expected to take less than this (microseconds, from a moving average "
        "per item) run on the event loop instead of a worker thread, whose hop costs more than a tiny "
        "model's run. 0: always use the thread.",
    )
    retry_after_s: int = Field(
        default=1, ge=1, le=3600, description="Retry-After seconds sent with 503 responses."
    )
    request_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Longest one request may take, from the start of reading its body through decoding, "
        "queueing, inference and encoding the response, before 504; work still queued for it is dropped.",
    )

    drain_s: float = Field(
        default=3.0,
        ge=0,
        le=600,
        description="On SIGTERM, seconds /readyz answers 503 while requests are still accepted (so load "
        "balancers stop sending), before the server stops listening and waits for in-flight requests.",
    )

    # --- request limits (docs/limits.md is generated from these descriptions) -----------------------------
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Largest request body in bytes (413 beyond it), checked on Content-Length and on the "
        "bytes actually received for chunked uploads.",
    )
    max_image_pixels: int = Field(
        default=16_000_000,
        ge=16,
        le=89_000_000,
        description="Largest image (width*height, from its header, 422 beyond) accepted; below Pillow's "
        "own decompression-bomb limit (89 M pixels). Default: a 16-megapixel photo.",
    )
    max_images_per_request: int = Field(
        default=256,
        ge=1,
        description="Most images in one request (422 beyond); the batch size a GPU fills well, and with "
        "max_request_image_bytes it bounds a request's decoding work.",
    )
    max_request_image_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="Budget of decoded image memory per request (422 beyond): the sum over its images of "
        "width*height times the bytes per pixel Pillow holds (1 for 8-bit grey or palette, 2 for 16-bit "
        "grey, 4 for RGB, RGBA, CMYK), plus the float32 model input they become. Read from each image's "
        "header before any image is decoded, so 256 small files that each claim 4000x4000 cost nothing. "
        "Default 64 MiB: one 4000x4000 RGB photo, or 256 images of 500x500 RGB.",
    )
    image_decode_workers: int = Field(
        default=2,
        ge=1,
        le=256,
        description="Threads that decode uploaded images, shared by every request; decoding is CPU work "
        "that must not starve inference or the event loop.",
    )
    image_decode_queue: int = Field(
        default=1024,
        ge=1,
        description="Images waiting for or in decoding before new requests get 503 + Retry-After; images "
        "of a request whose client left or whose timeout passed are dropped from the queue. Must admit the "
        "largest request (max_images_per_request).",
    )
    max_latents_per_request: int = Field(
        default=4096,
        ge=1,
        description="Most latent vectors in one request (422 beyond, 400 on /v2); checked from the shape "
        "(JSON list, .npy header or OIP shape) before the values are read.",
    )
    max_sample_n: int = Field(
        default=256,
        ge=1,
        description="Largest `n` for /v1/sample (422 beyond): each sample is one decoded image.",
    )
    max_interpolate_steps: int = Field(
        default=128,
        ge=2,
        description="Largest `steps` for /v1/interpolate (422 beyond): each step is one decoded image.",
    )
    max_manifold_size: int = Field(
        default=40,
        ge=2,
        description="Largest `size` (grid edge) for /v1/manifold (422 beyond): size^2 decoded images in one "
        "PNG (1,600 at the default 40).",
    )
    max_latent_abs: float = Field(
        default=100.0,
        gt=0,
        description="Largest |value| accepted in a latent vector (422 beyond, 400 on /v2); the prior is "
        "N(0, I), so anything near this is already far outside what the decoder has seen.",
    )
    novelty_alpha: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="Default significance level of /v1/reconstruct's `novel` flags (a request's `alpha` "
        "overrides it): an image is flagged when its conformal p-value is at most alpha, so on images like "
        "the model's own data about this fraction is flagged (docs/novelty.md).",
    )
    max_response_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="Largest response a request may ask for (422, or 400 on /v2, beyond), computed from the "
        "request before any work: items times the largest size of each output (float32 arrays, PNGs, JSON "
        "numbers at 16 bytes each). Default 64 MiB: 4096 MNIST images as float32 arrays fit; the same count "
        "of 64x64 colour images does not. Each /v2 output may be named once.",
    )

    # --- security ------------------------------------------------------------------------------------------
    api_keys: Annotated[list[SecretStr] | None, NoDecode] = Field(
        default=None,
        description="Accepted API keys (comma-separated or JSON list), sent as 'Authorization: Bearer <key>' "
        "or 'X-API-Key: <key>'; unset or 'none': no authentication. Set but empty (or holding an empty key) "
        "refuses to start, so a templating mistake never silently turns authentication off. Health, "
        "readiness and metrics stay open.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed by CORS (comma-separated or JSON list); empty: CORS headers are off.",
    )

    # --- logging -------------------------------------------------------------------------------------------
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log threshold."
    )
    log_json: bool = Field(default=False, description="One JSON object per log line (with the request id).")

    @field_validator("models", "cors_origins", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys(cls, value: object) -> object:
        # Messages here never include the value: it holds secrets.
        if isinstance(value, str) and value.strip().lower() == AUTH_OFF:
            return None
        try:
            keys = _split_csv(value)
        except ValueError:
            raise ValueError("neither a JSON list of strings nor comma-separated (value not shown)") from None
        if value is not None and (not isinstance(keys, list) or not keys):
            raise ValueError(f"set but holds no key; unset it or set it to '{AUTH_OFF}' to run without keys")
        if isinstance(keys, list) and any(not isinstance(k, str) or not k.strip() for k in keys):
            raise ValueError("every key must be a non-empty string (value not shown)")
        return [k.strip() for k in keys] if isinstance(keys, list) else keys

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _queue_admits_largest_request(self) -> Settings:
        largest = max(
            self.max_images_per_request,
            self.max_latents_per_request,
            self.max_sample_n,
            self.max_interpolate_steps,
            self.max_manifold_size**2,
        )
        if self.max_queue < largest:
            raise ValueError(f"max_queue ({self.max_queue}) must admit the largest request ({largest} items)")
        return self

    @model_validator(mode="after")
    def _image_queue_admits_largest_request(self) -> Settings:
        if self.image_decode_queue < self.max_images_per_request:
            raise ValueError(
                f"image_decode_queue ({self.image_decode_queue}) must admit the largest request "
                f"({self.max_images_per_request} images)"
            )
        return self

    def api_key_values(self) -> list[bytes]:
        return [key.get_secret_value().encode() for key in self.api_keys or []]


def shown_default(field: Any) -> str:
    """A Settings field's default as written in the environment (`vae-serve --help`, docs/settings.md)."""
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "empty"
    return str(value)
