"""VAE Service: serves ONNX-exported VAEs over HTTP.

Importing this package is cheap on purpose: the training side imports the torch-free contract modules
(`vae_contract.manifest`, `vae_contract.imaging`) without pulling in FastAPI or onnxruntime.
"""

__version__ = "0.1.0"
