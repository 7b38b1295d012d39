"""Offline training of Variational Autoencoders (PyTorch) and their export to the `models/` contract.

Submodules are imported on demand; `import training` itself stays cheap.
"""
