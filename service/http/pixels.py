"""The pixel options of the routes that return decoded images: which images (`pixels`), their temperature and
seed, and how a response says which it returned (body fields and the `X-Pixels` header)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.http.schemas import PixelOptions
from service.inference import VAEModel, new_seed
from vae_contract.pixel_draws import PixelDraw


@dataclass(frozen=True)
class PixelChoice:
    draw: PixelDraw | None  # None: the decoder's mean
    fields: dict[str, Any] = field(default_factory=dict)  # for the JSON body
    headers: dict[str, str] = field(default_factory=dict)


def choose_pixels(
    vae: VAEModel, opts: PixelOptions, seed: int | None, *, shared: bool = False
) -> PixelChoice:
    """The request's choice, or the model's default; InvalidInput (422) before any work for a draw the
    model cannot make. `seed`: the request's (drawn when omitted, and returned)."""
    mode = opts.pixels or vae.default_pixels
    vae.check_pixels(mode)
    if mode == "mean":
        return PixelChoice(None, {"pixels": "mean"}, {"X-Pixels": "mean"})
    chosen = seed if seed is not None else new_seed()
    draw = PixelDraw(chosen, opts.pixel_temperature, shared)
    body = {"pixels": "sample", "pixel_temperature": opts.pixel_temperature, "seed": chosen}
    return PixelChoice(draw, body, {"X-Pixels": "sample", "X-Seed": str(chosen)})
