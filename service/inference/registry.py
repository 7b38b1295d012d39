"""The data plane's entry point: loads every configured model, knows which is the default, reports readiness.

A model that fails any check (manifest, sha256, onnxruntime load, tensor names and shapes, required provider,
warm-up) is not served; the reason is logged and shown on /readyz, and readiness stays false. Models are only
ever read from the configured models directory, never from a path or URL given in a request.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from service.config import Settings
from service.errors import ModelNotFound, NotReady
from service.inference.batcher import Batcher, BatchStats
from service.inference.model import VAEModel
from service.inference.runtime import Graph, ModelLoadError, session_options
from service.manifest import ManifestError, list_model_names, model_dir, verify_model_dir
from service.metrics import Metrics

log = logging.getLogger(__name__)

PREFERRED_DEFAULT = "mnist"


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.models: dict[str, VAEModel] = {}
        self.failures: dict[str, str] = {}
        self.names: list[str] = []
        self.loaded = False  # load() has finished
        self.draining = False  # shutdown has begun: readiness goes false before requests stop
        # Each graph's batcher has at most one call in flight, so one thread per graph means no call ever
        # waits for a thread; this pool is separate from Starlette's, which serves blocking request work.
        self._executor: ThreadPoolExecutor | None = None

    # --- lifecycle -----------------------------------------------------------------------------------------

    def load(self) -> None:
        """Load, verify and warm every model (blocking; the app runs it in a thread at startup)."""
        root = self.settings.models_dir
        self.names = list(self.settings.models or list_model_names(root))
        if not self.names:
            self.failures["*"] = f"no models found in {root.name or root}/"
            log.error("no models to serve in %s", root)
        self._executor = ThreadPoolExecutor(max(2, 2 * len(self.names)), thread_name_prefix="onnxruntime")
        for name in self.names:
            started = time.perf_counter()
            try:
                model = self._load_one(name)
            except (ManifestError, ModelLoadError) as exc:
                reason = str(exc).replace(str(root), root.name or "models")
                self.failures[name] = reason
                self.metrics.model_loaded.labels(name).set(0)
                log.error("model %s NOT loaded: %s", name, reason)
                continue
            self.models[name] = model
            self.metrics.model_loaded.labels(name).set(1)
            log.info(
                "model %s v%d loaded from %s in %.2fs; latent_dim=%d; providers=%s",
                name, model.manifest.version, model.path, time.perf_counter() - started,
                model.latent_dim, model.providers,
            )  # fmt: skip
        self.loaded = True
        if self.models and self.default_name not in self.models:
            log.error("default model %r is not loaded", self.default_name)

    def _load_one(self, name: str) -> VAEModel:
        s = self.settings
        try:
            path = model_dir(s.models_dir, name)
        except ManifestError as exc:
            raise ModelLoadError(f"model {name!r}: no version folder in {s.models_dir}") from exc
        manifest = verify_model_dir(path)
        if manifest.name != name:
            raise ModelLoadError(f"{path}: manifest names the model {manifest.name!r}, folder says {name!r}")
        options = session_options(s.intra_op_threads, s.inter_op_threads)
        encoder = Graph(path / manifest.encoder.file, manifest.encoder, options, s.provider)
        decoder = Graph(path / manifest.decoder.file, manifest.decoder, options, s.provider)
        model = VAEModel(
            manifest, path, encoder, decoder, self._batcher(name, "encoder", encoder),
            self._batcher(name, "decoder", decoder),
        )  # fmt: skip
        try:
            model.warm_up(tuple(sorted({1, s.max_batch_size})))
        except Exception as exc:
            raise ModelLoadError(f"{path}: warm-up failed ({type(exc).__name__}: {exc})") from exc
        return model

    def _batcher(self, name: str, role: str, graph: Graph) -> Batcher:
        s, m = self.settings, self.metrics
        assert self._executor is not None
        batch_size, seconds = m.batch_size.labels(name, role), m.inference_seconds.labels(name, role)

        def on_batch(items: int, elapsed: float) -> None:
            batch_size.observe(items)
            seconds.observe(elapsed)

        stats = BatchStats(
            on_queue=m.queue_items.labels(name, role).set,
            on_batch=on_batch,
            on_reject=m.rejected.labels(name, role).inc,
        )
        return Batcher(
            graph.run,
            name=f"{name}/{role}",
            executor=self._executor,
            max_batch_size=s.max_batch_size,
            max_delay_s=s.max_delay_ms / 1000,
            max_queue=s.max_queue,
            timeout_s=s.request_timeout_s,
            retry_after_s=s.retry_after_s,
            inline_below_s=s.inline_run_us / 1e6,
            stats=stats,
        )

    async def close(self) -> None:
        self.draining = True
        for model in self.models.values():
            await model.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    # --- queries -------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.loaded and not self.draining and bool(self.models) and not self.failures

    @property
    def default_name(self) -> str:
        if self.settings.default_model:
            return self.settings.default_model
        if PREFERRED_DEFAULT in self.names:
            return PREFERRED_DEFAULT
        return sorted(self.names)[0] if self.names else PREFERRED_DEFAULT

    def get(self, name: str | None) -> VAEModel:
        """The model to answer a request; `None` means the default model."""
        chosen = name or self.default_name
        model = self.models.get(chosen)
        if model is not None:
            return model
        if chosen in self.failures:
            raise NotReady(f"model {chosen!r} is not available: it failed to load")
        if not self.loaded:
            raise NotReady("models are still loading")
        raise ModelNotFound(f"unknown model {chosen!r}; served models: {sorted(self.models)}")

    def readiness(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "models": {name: name in self.models for name in self.names},
            "failures": dict(self.failures),
            "default_model": self.default_name,
        }
