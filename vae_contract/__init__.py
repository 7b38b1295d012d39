"""The `models/` contract: what a model version folder holds and how both sides read it.

Training writes model folders and the service serves them; they never import each other, only this package:
the manifest schema and reader (`manifest`), the side files a manifest declares (`priors`, `classes`, and
`novelty`: the novelty statistic and its calibration file), the image conversion rules shared by training
data and requests (`imaging`), latent paths (`latents`), the numpy scores (`likelihoods`) and the pixel
draws with the sampler graph's noise (`pixel_draws`). numpy, Pillow and pydantic only: no torch, no FastAPI,
no onnxruntime.
"""
