"""What one app holds for its life, typed: made by `create_app`, closed by the lifespan (`service.lifecycle`).

Handlers, middlewares and the lifespan read it as `app.state.service`; nothing else is kept on `app.state`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service import tracing
from service.config import Settings
from service.inference import ModelRegistry
from service.inference.decode_pool import ImagePool
from service.metrics import Metrics
from service.open_clients import OpenClients

# The key under which the lifespan hands this state to the server (uvicorn gives each connection's protocol
# the lifespan's state): the HTTP connection guard reads its limits and reports its connections through it.
LIFESPAN_KEY = "vae_service"


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    registry: ModelRegistry
    image_pool: ImagePool  # threads start on the first image, so an app that never sees one starts none
    clients: OpenClients  # both ports' open clients, which the batchers ask about
    serving: dict[str, Any] | None = None  # the worker plan, under `vae-serve` (service.server.workers)
    grpc_port: int | None = None  # the bound gRPC port, while gRPC serves

    @classmethod
    def create(cls, settings: Settings) -> ServiceState:
        metrics, clients = Metrics(), OpenClients()
        # Tracing is on or off for the process before an app is made (as for its middleware): a job observer
        # only while it is on, so untraced requests make no call for it.
        observer = tracing.observe_job if tracing.active() else None
        registry = ModelRegistry(settings, metrics, alone=clients.alone, job_observer=observer)
        return cls(settings, metrics, registry, ImagePool.from_settings(settings), clients)

    def close(self) -> None:
        """Stop the decoding threads (the registry closes its sessions and batchers itself)."""
        self.image_pool.close()
