"""What one app holds for its life, typed: made by `create_app`, closed by the lifespan (`service.lifecycle`).

Handlers, middlewares and the lifespan read it as `app.state.service`; nothing else is kept on `app.state`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.config import Settings
from service.inference import ModelRegistry
from service.inference.decode_pool import ImagePool
from service.metrics import Metrics


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    registry: ModelRegistry
    image_pool: ImagePool  # threads start on the first image, so an app that never sees one starts none
    serving: dict[str, Any] | None = None  # the worker plan, under `vae-serve` (service.server.workers)
    grpc_port: int | None = None  # the bound gRPC port, while gRPC serves

    @classmethod
    def create(cls, settings: Settings) -> ServiceState:
        metrics = Metrics()
        return cls(settings, metrics, ModelRegistry(settings, metrics), ImagePool.from_settings(settings))

    def close(self) -> None:
        """Stop the decoding threads (the registry closes its sessions and batchers itself)."""
        self.image_pool.close()
