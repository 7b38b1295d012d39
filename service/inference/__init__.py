"""The data plane: onnxruntime sessions, dynamic batching and the VAE operations. No web framework here."""

from service.inference.batcher import Batcher, BatchStats
from service.inference.model import Encoding, Reconstruction, VAEModel, new_seed
from service.inference.registry import ModelRegistry
from service.inference.runtime import Graph, ModelLoadError

__all__ = [
    "BatchStats",
    "Batcher",
    "Encoding",
    "Graph",
    "ModelLoadError",
    "ModelRegistry",
    "Reconstruction",
    "VAEModel",
    "new_seed",
]
