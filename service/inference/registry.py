"""The data plane's entry point: loads every configured model, knows which is the default, reports readiness.

Models are only ever read from the configured models directory, never from a path or URL given in a request.
Every model and every version folder is judged on its own: a version that fails any check (manifest, sha256,
onnxruntime load, tensor names and shapes, required provider, warm-up, a symbolic link out of models_dir, a
latent size that differs from the serving version's) is refused with a logged, client-safe reason shown on
/readyz, and nothing else is affected. What is not a version is ignored: files (`.DS_Store`, `README`),
folders whose names are not positive integers (`tmp/`, `latest/`, an export's hidden staging folder
`.<version>.<random>` left by a killed export), and, when `models` is unset, model folders with no version
folder at all.

Versions: the version policy (`version_policy`, as Triton's) says which versions stay loaded: 'latest:N' (the
newest N that pass every check) or 'specific:1,3'. `get(name, version)` answers a pinned request from any
loaded version (ModelNotFound naming the loaded ones otherwise); unpinned requests get the newest loaded one.

Startup loads what the policy wants of each model; refused versions it wanted are listed under
`reload_failures` (the model serves, readiness holds). A model with no loadable version is a `failure` and
readiness is false.

Hot reload: `reload()` (polled every `reload_interval_s`, and on SIGHUP) looks for version folders newer than
the newest loaded one (or, with 'specific', listed ones that appeared), loads, verifies and warms them in a
thread beside the loaded ones, then makes them available with one dict assignment on the event loop; with
'latest:N' the versions beyond the newest N are retired. Requests already holding a retired version finish on
it; its batchers close once the request timeout has passed. A refused folder is retried only once its files
change. Version numbers only move forward: a folder older than the newest loaded version (a republished old
number, or what is left after the serving version's folder was deleted) is logged once and not loaded, so
clients that store embeddings never get an older model's vectors under the same name without a restart; a
loaded version whose folder is deleted keeps answering from memory (its files were verified when it loaded).
Entries for folders that no longer exist are dropped from the reported state. When `models` is unset, model
folders that appear later are loaded, and discovered models whose folders are removed while not serving are
forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from service.config import Settings
from service.errors import ModelNotFound, NotReady, shown
from service.inference.batcher import Batcher, BatchStats, JobObserver
from service.inference.model import VAEModel
from service.inference.model_files import ModelFileError, check_external_data, check_file_sizes
from service.inference.runtime import Graph, ModelLoadError, session_options
from service.inference.shapes import batch_shapes
from service.metrics import Metrics
from vae_contract.classes import ClassConditional, ClassFileError, read_conditional
from vae_contract.manifest import (
    MANIFEST_FILE,
    ManifestError,
    is_inside,
    is_model_name,
    list_model_names,
    list_versions,
    read_manifest,
    verify_model_dir,
)
from vae_contract.novelty import Calibration, NoveltyFileError, read_calibration
from vae_contract.priors import MixturePrior, PriorFileError, read_mixture

log = logging.getLogger(__name__)
T = TypeVar("T")

PREFERRED_DEFAULT = "mnist"

Stamp = tuple[tuple[str, int, int], ...]


class ModelRegistry:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        *,
        alone: Callable[[], bool] | None = None,
        job_observer: JobObserver | None = None,
    ):
        """`alone` and `job_observer` are handed to every batcher (service.inference.batcher)."""
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._alone, self._job_observer = alone, job_observer
        self.models: dict[str, VAEModel] = {}  # per model, the newest loaded version: unpinned requests
        self.versions: dict[str, dict[int, VAEModel]] = {}  # per model, every loaded version
        self.failures: dict[str, str] = {}
        self.names: list[str] = []
        self.loaded = False  # load() has finished
        self.draining = False  # shutdown has begun: readiness goes false before requests stop
        # Why a version newer than the serving one was refused (the serving one still answers).
        self.reload_failures: dict[str, str] = {}
        # Refused version folders, with a stamp of their files so each is retried only once they change.
        self._refused: dict[str, dict[int, tuple[Stamp, str]]] = {}
        self._noted: set[tuple[str, int, str]] = set()  # one-time log lines already written
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
        self.names = list(self.settings.models) if self.settings.models else self._discover()
        if not self.names:
            self.failures["*"] = f"no models found in {root.name or root}/"
            log.error("no models to serve in %s", root)
        # Threads start only when needed: a generous cap costs nothing and leaves room for models found later.
        self._executor = ThreadPoolExecutor(max(16, 4 * len(self.names)), thread_name_prefix="onnxruntime")
        for name in self.names:
            if is_model_name(name):
                self._load_initial(name)
            else:  # a configured name that is no folder name (e.g. '../x'): never joined to a path
                self._fail(name, "not a model name (lowercase letters, digits, '.', '_', '-'; at most 64)")
        self.names = [name for name in self.names if is_model_name(name)]
        self.loaded = True
        if self.models and self.default_name not in self.models:
            log.error("default model %r is not loaded", self.default_name)

    def _discover(self) -> list[str]:
        """Model folders holding at least one version folder; anything else in models_dir is ignored."""
        root = self.settings.models_dir
        names = []
        for name in list_model_names(root):
            if list_versions(root, name):
                names.append(name)
            else:
                self._note_once(name, 0, "empty", logging.INFO, "ignoring %s/: no version folder", name)
        return names

    def _policy(self) -> tuple[int, frozenset[int]]:
        """(N, set()) for 'latest:N'; (0, the versions) for 'specific:...'."""
        kind, _, arg = self.settings.version_policy.partition(":")
        if kind == "latest":
            return int(arg), frozenset()
        return 0, frozenset(int(v) for v in arg.split(","))

    def _load_initial(self, name: str) -> None:
        """Load what the version policy wants of `name`: the newest N versions that pass every check, or the
        listed ones (startup, and models found later)."""
        versions = list_versions(self.settings.models_dir, name)
        if not versions:
            self._fail(name, f"no version folder in {self._shown(self.settings.models_dir / name)}/")
            return
        keep, wanted = self._policy()
        candidates = [v for v in reversed(versions) if keep or v in wanted]
        for version in candidates:
            if keep and len(self.versions.get(name, {})) >= keep:
                break
            started = time.perf_counter()
            result = self._attempt(name, version, None)
            if isinstance(result, VAEModel):
                self._add(name, result)
                log.info(
                    "model %s v%d loaded from %s in %.2fs; latent_dim=%d; providers=%s",
                    name, version, result.path, time.perf_counter() - started, result.latent_dim,
                    result.providers,
                )  # fmt: skip
            elif len(candidates) > 1:
                log.error("model %s v%d NOT loaded: %s", name, version, result)
        if name not in self.models:
            if candidates:
                self._fail(name, self._refused[name][candidates[0]][1])
            else:
                self._fail(name, f"no version folder matches {self.settings.version_policy}")
        self._report_refusals(name)

    def _attempt(self, name: str, version: int, serving: VAEModel | None) -> VAEModel | str:
        """Load one version folder, or say (client-safe) why not and remember the refusal. Blocking."""
        path = self.settings.models_dir / name / str(version)
        stamp = _folder_stamp(path)
        try:
            return self._load_one(name, version, serving)
        except (ManifestError, ModelLoadError) as exc:
            reason = self._client_safe(str(exc))
        except OSError as exc:  # unreadable files: permissions, I/O errors
            reason = f"{self._shown(path)}: cannot read ({exc.strerror or type(exc).__name__})"
        except Exception as exc:  # a check we did not foresee: log the traceback once per folder state
            log.exception("model %s v%d: unexpected error while loading", name, version)
            reason = f"{self._shown(path)}: unexpected error while loading ({type(exc).__name__})"
        self._refused.setdefault(name, {})[version] = (stamp, reason)
        return reason

    def _load_one(self, name: str, version: int, serving: VAEModel | None = None) -> VAEModel:
        s = self.settings
        path = s.models_dir / name / str(version)
        self._check_inside(path, path / MANIFEST_FILE)
        manifest = read_manifest(path)
        graphs = manifest.graphs().values()
        self._check_inside(*[path / f for g in graphs for f in (g.file, *(d.file for d in g.external_data))])
        try:
            check_file_sizes(path, manifest, s.max_model_bytes)  # before hashing reads the files whole
            manifest = verify_model_dir(path)
            check_external_data(path, manifest, s.max_model_bytes)  # before onnxruntime reads any of it
        except ModelFileError as exc:
            raise ModelLoadError(str(exc)) from None
        if manifest.name != name:
            raise ModelLoadError(f"{path}: manifest names the model {manifest.name!r}, folder says {name!r}")
        if manifest.version != version:
            raise ModelLoadError(f"{path}: manifest says version {manifest.version}, folder says {version}")
        if serving is not None and manifest.latent_dim != serving.latent_dim:
            change = (
                f"latent_dim {manifest.latent_dim} differs from the serving v{serving.manifest.version}'s"
            )
            if not s.allow_latent_change:
                raise ModelLoadError(
                    f"{path}: {change} {serving.latent_dim}: a breaking change for clients that store "
                    "embeddings (publish it under a new model name, or set VAE_ALLOW_LATENT_CHANGE=true)"
                )
            log.warning("model %s v%d: %s %d (allowed by VAE_ALLOW_LATENT_CHANGE)", name, version, change,
                        serving.latent_dim)  # fmt: skip
        d, prior_spec, cond = manifest.latent_dim, manifest.prior, manifest.conditional
        prior: MixturePrior | None = None
        if prior_spec is not None:
            k = prior_spec.components
            prior = self._side_file(path / prior_spec.file, lambda f: read_mixture(f, k, d))
        classes: ClassConditional | None = None
        if cond is not None:
            classes = self._side_file(
                path / cond.file, lambda f: read_conditional(f, cond.kind, cond.classes, d, prior)
            )
        calibration: Calibration | None = None
        if (spec := manifest.novelty) is not None:
            calibration = self._side_file(
                path / spec.file, lambda f: read_calibration(f, spec.statistic, spec.count)
            )
        options = session_options(s.intra_op_threads, s.inter_op_threads, s.cpu_arena)
        limit = s.gpu_mem_limit_mb
        encoder = Graph(path / manifest.encoder.file, manifest.encoder, options, s.provider, limit)
        decoder = Graph(path / manifest.decoder.file, manifest.decoder, options, s.provider, limit)
        scorer: tuple[Graph, Batcher] | None = None
        if manifest.scorer is not None:
            graph = Graph(path / manifest.scorer.file, manifest.scorer, options, s.provider, limit)
            scorer = (graph, self._batcher(name, version, "scorer", graph))
        sampler: tuple[Graph, Batcher] | None = None
        if manifest.sampler is not None:
            graph = Graph(path / manifest.sampler.file, manifest.sampler, options, s.provider, limit)
            sampler = (graph, self._batcher(name, version, "sampler", graph))
        model = VAEModel(
            manifest, path, encoder, decoder, self._batcher(name, version, "encoder", encoder),
            self._batcher(name, version, "decoder", decoder), prior, classes, scorer, calibration, sampler,
        )  # fmt: skip
        pad = s.batch_padding == "on" or (s.batch_padding == "auto" and encoder.on_cuda)
        shapes = batch_shapes(s.max_batch_size) if pad else None
        for graph in model.graphs:
            graph.shapes = shapes
        try:
            # Padded: every shape the graphs will ever see. Else batch 1 only: a CPU session's first run at
            # a new size costs no search, and a warm-up at the largest batch only raised the startup peak.
            model.warm_up(shapes or (1,))
        except Exception as exc:
            raise ModelLoadError(f"{path}: warm-up failed ({type(exc).__name__}: {exc})") from exc
        return model

    def _side_file(self, file: Path, read: Callable[[Path], T]) -> T:
        """A side file beside the graphs (prior, class statistics, novelty calibration), inside models/ and
        read by `read`, whose own refusal becomes this version's load error."""
        self._check_inside(file)
        try:
            return read(file)
        except (PriorFileError, ClassFileError, NoveltyFileError) as exc:
            raise ModelLoadError(str(exc)) from exc

    def _check_inside(self, *paths: Path) -> None:
        if self.settings.follow_symlinks:
            return
        root = self.settings.models_dir
        for path in paths:
            if not is_inside(root, path):
                raise ModelLoadError(
                    f"{path}: a symbolic link leading out of {root} (VAE_FOLLOW_SYMLINKS=true serves it)"
                )

    def _batcher(self, name: str, version: int, role: str, graph: Graph) -> Batcher:
        s, m = self.settings, self.metrics
        assert self._executor is not None
        labels = (name, str(version), role)
        batch_size, seconds = m.batch_size.labels(*labels), m.inference_seconds.labels(*labels)

        def on_batch(items: int, elapsed: float) -> None:
            batch_size.observe(items)
            seconds.observe(elapsed)

        stats = BatchStats(
            on_queue=m.queue_items.labels(*labels).set,
            on_batch=on_batch,
            on_reject=m.rejected.labels(*labels).inc,
            on_drop=m.dropped.labels(*labels).inc,
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
            alone=self._alone,
            job_observer=self._job_observer,
        )

    # --- state ---------------------------------------------------------------------------------------------

    def _add(self, name: str, model: VAEModel) -> None:
        """Make a loaded version available; the newest loaded one answers unpinned requests."""
        loaded = self.versions.setdefault(name, {})
        loaded[model.manifest.version] = model
        # The swap: one assignment, so every request sees either the old or the new model.
        self.models[name] = loaded[max(loaded)]
        self.failures.pop(name, None)
        self._refused.get(name, {}).pop(model.manifest.version, None)
        self.metrics.model_loaded.labels(name).set(1)

    def _fail(self, name: str, reason: str) -> None:
        self.failures[name] = reason
        self.metrics.model_loaded.labels(name).set(0)
        log.error("model %s NOT loaded: %s", name, reason)

    def _report_refusals(self, name: str) -> None:
        """reload_failures: the refused versions the policy wants while the model serves (with 'latest:N',
        those newer than the oldest loaded one), newest first."""
        loaded = self.versions.get(name, {})
        refused = self._refused.get(name, {})
        if not loaded:
            self.reload_failures.pop(name, None)
            return
        keep, wanted = self._policy()
        newer = sorted((v for v in refused if (v > min(loaded) if keep else v in wanted)), reverse=True)
        if newer:
            self.reload_failures[name] = "; ".join(f"version {v}: {refused[v][1]}" for v in newer)
        else:
            self.reload_failures.pop(name, None)

    def _forget_missing(self, name: str, versions: list[int]) -> None:
        """Drop what is known about version folders that no longer exist."""
        refused = self._refused.get(name, {})
        for version in [v for v in refused if v not in versions]:
            del refused[version]
            log.info("model %s v%d: refused folder removed; forgotten", name, version)
        # Notes about folders that are gone go too (so a republished folder is logged again); the note that
        # the serving version's folder is gone stays, so it is written once.
        kept = {n for n in self._noted if n[0] != name or n[1] in versions or n[1] <= 0 or n[2] == "gone"}
        self._noted = kept

    def _note_once(self, name: str, version: int, what: str, level: int, msg: str, *args: Any) -> None:
        key = (name, version, what)
        if key not in self._noted:
            self._noted.add(key)
            log.log(level, msg, *args)

    def _shown(self, path: Path) -> str:
        return self._client_safe(str(path))

    def _client_safe(self, text: str) -> str:
        root = self.settings.models_dir
        return text.replace(str(root), root.name or "models")

    # --- hot reload ---------------------------------------------------------------------------------------

    async def reload(self) -> list[str]:
        """Load and swap in every newer version found; returns 'name vN' for each model swapped."""
        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()
        async with self._reload_lock:  # a SIGHUP during a poll waits instead of loading twice
            swapped = []
            for name in self._names_to_watch():
                if self.draining:
                    break
                try:
                    if await self._reload_one(name):
                        swapped.append(f"{name} v{self.models[name].manifest.version}")
                except Exception as exc:  # one model never stops the others; logged once per model and error
                    what = type(exc).__name__
                    self._note_once(name, -1, what, logging.ERROR, "model %s: reload failed (%s)", name, what)
                    log.debug("model %s: reload failed", name, exc_info=True)
            return swapped

    def _names_to_watch(self) -> list[str]:
        if self.settings.models:
            return self.names
        found = self._discover()
        for name in found:
            if name not in self.names:
                self.names.append(name)
                log.info("model folder %s/ appeared", name)
        for name in [n for n in self.names if n not in found and n not in self.models]:
            self.names.remove(name)  # a discovered model that is gone and never served: forget it
            self.failures.pop(name, None)
            self.reload_failures.pop(name, None)
            self._refused.pop(name, None)
            with contextlib.suppress(KeyError):
                self.metrics.model_loaded.remove(name)
            log.info("model folder %s/ removed; forgotten", name)
        if self.names:
            self.failures.pop("*", None)
        return list(self.names)

    async def _reload_one(self, name: str) -> bool:
        root = self.settings.models_dir
        versions = list_versions(root, name)
        self._forget_missing(name, versions)
        keep, wanted = self._policy()
        loaded = self.versions.get(name, {})
        current = self.models.get(name)
        for version in [v for v in loaded if v not in versions]:
            newest = f"the newest on disk is v{versions[-1]}" if versions else "no version is on disk"
            self._note_once(
                name, version, "gone", logging.WARNING,
                "model %s v%d: its folder is gone; still serving it from memory (%s; versions only move "
                "forward: restart to serve an older one)", name, version, newest,
            )  # fmt: skip
        if current is not None and keep:
            serving = current.manifest.version
            for older in (v for v in versions if v < serving and v not in loaded):
                self._note_once(
                    name, older, "older", logging.INFO,
                    "model %s v%d is older than the serving v%d: not loaded (versions only move forward)",
                    name, older, serving,
                )  # fmt: skip
        elif current is None and not versions and name not in self.failures:
            self._fail(name, f"no version folder in {self._shown(root / name)}/")
        if keep:
            candidates = [v for v in versions if current is None or v > current.manifest.version]
        else:
            candidates = [v for v in versions if v in wanted and v not in loaded]
        added: list[int] = []
        for version in reversed(candidates):
            if keep and len(added) >= keep:
                break
            refused = self._refused.get(name, {}).get(version)
            if refused is not None and refused[0] == _folder_stamp(root / name / str(version)):
                continue  # refused before and unchanged since
            started = time.perf_counter()
            result = await asyncio.to_thread(self._attempt, name, version, current)
            if isinstance(result, str):
                state = f"still serving v{current.manifest.version}" if current else "not serving"
                log.error("model %s v%d NOT loaded (%s): %s", name, version, state, result)
                if current is None:
                    self.failures[name] = result
                continue
            if self.draining:
                await result.close()
                return False
            self._add(name, result)
            if self.models[name] is not result:
                how = " beside the newer versions"
            elif current is not None:
                how = f" and swapped in (replacing v{current.manifest.version} as the newest)"
            else:
                how = " and swapped in"
            log.info(
                "model %s v%d loaded from %s in %.2fs%s", name, version, result.path,
                time.perf_counter() - started, how,
            )  # fmt: skip
            added.append(version)
        if added and keep:
            loaded = self.versions[name]
            for version in sorted(loaded)[:-keep]:
                log.info(
                    "model %s v%d retired (version policy %s)", name, version, self.settings.version_policy
                )
                self._retire(loaded.pop(version))
        self._report_refusals(name)
        return bool(added) and self.models[name].manifest.version == max(added)

    def _retire(self, model: VAEModel) -> None:
        """Close an old version's batchers once no request can still be waiting on them."""
        self._retired.append(model)

        async def later() -> None:
            await asyncio.sleep(self.settings.request_timeout_s + 1)
            self._retired.remove(model)
            await model.close()
            for role in ("encoder", "decoder"):  # a retired version's queue is gone, not empty
                with contextlib.suppress(KeyError):
                    self.metrics.queue_items.remove(model.name, str(model.manifest.version), role)

        task = asyncio.get_running_loop().create_task(later(), name=f"retire:{model.name}")
        self._retire_tasks.add(task)
        task.add_done_callback(self._retire_tasks.discard)

    async def watch(self, interval_s: float) -> None:
        """Poll for new versions every interval_s seconds until cancelled; errors never stop the loop."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.reload()
            except Exception as exc:  # reload() isolates models; this is the last resort, logged briefly
                log.error("model reload failed: %s", type(exc).__name__)

    async def close(self) -> None:
        self.draining = True
        for task in list(self._retire_tasks):
            task.cancel()
        for model in [*(m for loaded in self.versions.values() for m in loaded.values()), *self._retired]:
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

    def get(self, name: str | None, version: int | None = None) -> VAEModel:
        """The model to answer a request: `name` (None: the default model) at `version` (None: the newest
        loaded). A version that is not loaded is ModelNotFound naming the loaded ones."""
        chosen = name or self.default_name
        model = self.models.get(chosen)
        if model is not None:
            if version is None or version == model.manifest.version:
                return model
            pinned = self.versions.get(chosen, {}).get(version)
            if pinned is not None:
                return pinned
            loaded = sorted(self.versions.get(chosen, {}))
            raise ModelNotFound(f"model {shown(chosen)} has no loaded version {version}; loaded: {loaded}")
        if chosen in self.failures:
            raise NotReady(f"model {shown(chosen)} is not available: it failed to load")
        if not self.loaded:
            raise NotReady("models are still loading")
        raise ModelNotFound(f"unknown model {shown(chosen)}; served models: {sorted(self.models)}")

    def loaded_versions(self) -> dict[str, list[int]]:
        """Every loaded version of every model, ascending."""
        return {name: sorted(loaded) for name, loaded in self.versions.items() if loaded}

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


def _folder_stamp(path: Path) -> Stamp:
    """(name, size, mtime) of each file in a version folder: changes when a copy into it progresses."""
    try:
        return tuple(sorted((p.name, st.st_size, st.st_mtime_ns) for p in path.iterdir() if (st := p.stat())))
    except OSError:
        return ()
