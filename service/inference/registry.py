"""The data plane's entry point: loads every configured model, knows which is the default, reports readiness.

A model that fails any check (manifest, sha256, onnxruntime load, tensor names and shapes, required provider,
warm-up) is not served; the reason is logged and shown on /readyz, and readiness stays false. Models are only
ever read from the configured models directory, never from a path or URL given in a request.

Hot reload: `reload()` (polled every `reload_interval_s`, and on SIGHUP) looks for a newer version folder of
each model, loads, verifies and warms it in a thread beside the serving one, then swaps it in with one dict
assignment on the event loop. Requests already holding the old version finish on it; its batchers close once
the request timeout has passed. A broken new version is logged and shown as `reload_failures` on /readyz and
as `reload_error` on /v1/models; the old version keeps serving and readiness is unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from service.config import Settings
from service.errors import ModelNotFound, NotReady
from service.inference.batcher import Batcher, BatchStats
from service.inference.model import VAEModel
from service.inference.runtime import Graph, ModelLoadError, session_options
from service.manifest import (
    ManifestError,
    latest_version,
    list_model_names,
    model_dir,
    verify_model_dir,
)
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
        # Hot reload: why the newest version of a model was refused (the old one still serves), and a stamp of
        # the refused folder so it is retried only once its files change (e.g. a copy that was still running).
        self.reload_failures: dict[str, str] = {}
        self._refused: dict[str, tuple[int, tuple[tuple[str, int, int], ...]]] = {}
        self._retired: list[VAEModel] = []
        self._retire_tasks: set[asyncio.Task[None]] = set()
        self._reload_lock: asyncio.Lock | None = None
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
                reason = self._client_safe(exc)
                self.failures[name] = reason
                if (newest := latest_version(root, name)) is not None:  # retried by reload() once changed
                    self._refused[name] = (newest, _folder_stamp(root / name / str(newest)))
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

    def _client_safe(self, exc: Exception) -> str:
        root = self.settings.models_dir
        return str(exc).replace(str(root), root.name or "models")

    def _load_one(self, name: str, version: int | None = None) -> VAEModel:
        s = self.settings
        try:
            path = model_dir(s.models_dir, name, version)
        except ManifestError as exc:
            raise ModelLoadError(f"model {name!r}: no version folder in {s.models_dir}") from exc
        manifest = verify_model_dir(path)
        if manifest.name != name:
            raise ModelLoadError(f"{path}: manifest names the model {manifest.name!r}, folder says {name!r}")
        if str(manifest.version) != path.name:
            raise ModelLoadError(f"{path}: manifest says version {manifest.version}, folder says {path.name}")
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

    # --- hot reload ---------------------------------------------------------------------------------------

    async def reload(self) -> list[str]:
        """Load and swap in every newer version found; returns 'name vN' for each model swapped."""
        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()
        async with self._reload_lock:  # a SIGHUP during a poll waits instead of loading twice
            swapped = []
            for name in self.names:
                if self.draining:
                    break
                if await self._reload_one(name):
                    swapped.append(f"{name} v{self.models[name].manifest.version}")
            return swapped

    async def _reload_one(self, name: str) -> bool:
        root = self.settings.models_dir
        newest = latest_version(root, name)
        current = self.models.get(name)
        if newest is None or (current is not None and newest <= current.manifest.version):
            return False
        stamp = (newest, _folder_stamp(root / name / str(newest)))
        if self._refused.get(name) == stamp:
            return False  # refused before and unchanged since
        started = time.perf_counter()
        try:
            model = await asyncio.to_thread(self._load_one, name, newest)
        except (ManifestError, ModelLoadError) as exc:
            reason = self._client_safe(exc)
            self._refused[name] = stamp
            if current is None:
                self.failures[name] = reason
            else:
                self.reload_failures[name] = f"version {newest}: {reason}"
            serving = f"still serving v{current.manifest.version}" if current else "not serving"
            log.error("model %s v%d NOT loaded (%s): %s", name, newest, serving, reason)
            return False
        if self.draining:
            await model.close()
            return False
        # The swap: one assignment on the event loop, so every request sees either the old or the new model.
        self.models[name] = model
        self.failures.pop(name, None)
        self.reload_failures.pop(name, None)
        self._refused.pop(name, None)
        self.metrics.model_loaded.labels(name).set(1)
        log.info(
            "model %s v%d loaded from %s in %.2fs and swapped in%s", name, model.manifest.version,
            model.path, time.perf_counter() - started,
            f" (replacing v{current.manifest.version})" if current else "",
        )  # fmt: skip
        if current is not None:
            self._retire(current)
        return True

    def _retire(self, model: VAEModel) -> None:
        """Close an old version's batchers once no request can still be waiting on them."""
        self._retired.append(model)

        async def later() -> None:
            await asyncio.sleep(self.settings.request_timeout_s + 1)
            self._retired.remove(model)
            await model.close()

        task = asyncio.get_running_loop().create_task(later(), name=f"retire:{model.name}")
        self._retire_tasks.add(task)
        task.add_done_callback(self._retire_tasks.discard)

    async def watch(self, interval_s: float) -> None:
        """Poll for new versions every interval_s seconds until cancelled; errors never stop the loop."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.reload()
            except Exception:
                log.exception("model reload failed")

    async def close(self) -> None:
        self.draining = True
        for task in list(self._retire_tasks):
            task.cancel()
        for model in [*self.models.values(), *self._retired]:
            await model.close()
        self._retired.clear()
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
            "draining": self.draining,
            "models": {name: name in self.models for name in self.names},
            "versions": {name: model.manifest.version for name, model in self.models.items()},
            "failures": dict(self.failures),
            "reload_failures": dict(self.reload_failures),
            "default_model": self.default_name,
        }


def _folder_stamp(path: Any) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime) of each file in a version folder: changes when a copy into it progresses."""
    try:
        return tuple(sorted((p.name, st.st_size, st.st_mtime_ns) for p in path.iterdir() if (st := p.stat())))
    except OSError:
        return ()
