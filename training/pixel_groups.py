"""An autoregressive decoder over four pixel groups: p(x|z) = prod_g p(x_g | z, x_<g).

A factorised decoder p(x|z) = prod_i p(x_i|z) must code every pixel from z alone, so each edge costs the
uncertainty of where exactly it runs. Conditioning on pixels already decoded removes most of that: this is
the PixelCNN idea (van den Oord et al. 2016) that PixelVAE (Gulrajani et al. 2017) puts under a VAE, here
with the coarse ordering of Reed et al. (2017, "Parallel multiscale autoregressive density estimation"):
the pixels of each 2x2 cell form four groups, decoded in the order

    (0, 0), (1, 1), (0, 1), (1, 0)      (row and column offset inside the cell)

so the first group is a quarter-resolution image coded from z alone, the second sits between four decoded
diagonal neighbours and the last two between four decoded direct neighbours. Within a group the pixels are
independent given z and the earlier groups, so sampling takes four network passes, not one per pixel.

Every group's distribution is the discretized logistic mixture of `training.likelihoods` (with channel
coupling inside a pixel if configured), so each factor is normalised over the 256^C values of a pixel and the
product is an exact likelihood: -log p(x|z) is still a code length. The parameters of all groups assemble
into the usual (B, maps, H, W) layout, so the likelihood code is unchanged; only the maps of group g depend
on the pixels of groups < g.

Neighbour anchors (an option): lossless image codecs predict a pixel from its neighbours (WebP's predictors:
left, top, their average, ...), because flat regions repeat a colour exactly. A learned logistic can only
approach an exact value; so with anchors each pixel of groups 1-3 gets A = 5 more mixture components whose
locations are not learned but are the colours of its four decoded neighbours (diagonal ones for group (1, 1),
left/right/up/down for the others; reflected at the border, which keeps a neighbour's group) and their
average. The net emits each anchor's mixture logit and per-channel log-scale, A (1 + C) maps after the
mixture's; the logits share one softmax with the learned components, so the mixture stays normalised. Group
(0, 0) has no decoded neighbours: its anchors get no weight.

Levels (an option): with two levels the first group, itself a half-resolution image, is decoded in the
same four groups by an inner decoder one level down, so only the (0, 0) pixel of each 4x4 cell is coded from
z alone and seven groups follow one another: Reed et al.'s multiscale recursion. The inner decoder reads
this level's half-resolution features (all four cells' worth) and its anchors are neighbours in the
half-resolution image, two pixels apart in the full one.

Networks: the VAE's decoder turns z into `features` maps at full resolution; a small conv net at half
resolution reads, for group g, those features (space-to-depth: 4 cells' worth per position), the decoded
pixels of groups < g (zero elsewhere) and four constant planes flagging which groups are decoded, and emits
group g's mixture maps. One net serves all four steps (the flags tell it which step it is in). Training and
scoring run the four steps on the true pixels at once (teacher forcing); decoding an image runs them in
order, each group at its mixture's mean, or (`draw`) each group drawn from its mixture given the groups drawn
before it: the model's own samples, with the noise as an input so that the graph stays deterministic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.likelihoods import (
    MIN_LOG_SCALE,
    coupled_locations,
    discretized_logistic_log_prob,
    discretized_logistic_nll,
    draw_mixture,
    mean_image,
    mixture_parts,
)

# Maps the VAE's decoder hands to the group net per full-resolution pixel (64 per cell after space-to-depth).
FEATURES = 16
CELL = 2  # pixel groups are the positions of a CELL x CELL cell
# Decoding order of the positions (row, column) inside a cell, and each one's index in pixel_unshuffle's
# channel layout (channel c * 4 + row * 2 + column).
ORDER = ((0, 0), (1, 1), (0, 1), (1, 0))
POSITIONS = tuple(row * CELL + column for row, column in ORDER)
GROUPS = len(ORDER)
# The `pixel_groups` option: the groups of one level (4), or of two (the first group split again: 1 + 3 + 3).
PIXEL_LEVELS = {4: 1, 7: 2}
# Neighbour anchors: the four decoded neighbours and their average.
ANCHORS = 5
DIAGONAL = ((-1, -1), (-1, 1), (1, -1), (1, 1))
CROSS = ((-1, 0), (1, 0), (0, -1), (0, 1))
# A logit that gives an anchor no weight (finite, so the softmax and its gradient stay defined).
NO_WEIGHT = -1e4


def anchor_maps(channels: int) -> int:
    """Maps per pixel the anchors add: a mixture logit and a log-scale per channel for each."""
    return ANCHORS * (1 + channels)


def neighbour_anchors(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, A, C, H, W): each pixel's anchor colours, the neighbours its group conditions on
    (diagonal at (1, 1), the cross at (0, 1) and (1, 0); meaningless at (0, 0), whose anchors get no
    weight) and their average. Reflection at the border maps an index -1 to 1 and H to H - 2, keeping its
    parity, so a border pixel's reflected neighbour is in the same, decoded, group as the missing one."""
    _, _, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")

    def shifted(offsets: tuple[tuple[int, int], ...]) -> torch.Tensor:
        return torch.stack([padded[:, :, 1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w] for dr, dc in offsets], 1)

    diagonal_here = _positions(h, w, (1, 1), x.device).to(x.dtype).unsqueeze(1)  # (1, 1, 1, H, W)
    neighbours = diagonal_here * shifted(DIAGONAL) + (1 - diagonal_here) * shifted(CROSS)
    return torch.cat([neighbours, neighbours.mean(dim=1, keepdim=True)], dim=1)


def first_group(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(1, 1, H, W) bool: the (0, 0) positions, decoded from z alone."""
    return _positions(h, w, ORDER[0], device)


def _positions(h: int, w: int, position: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(1, 1, H, W) bool: the pixels at `position` (row, column) of their cell."""
    rows = torch.arange(h, device=device) % CELL == position[0]
    columns = torch.arange(w, device=device) % CELL == position[1]
    return (rows[:, None] & columns[None, :]).view(1, 1, h, w)


def _weights_and_locations(
    params: torch.Tensor, channels: int, coupled: bool, no_anchors: torch.Tensor, x: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """log-weights of the K + A components (B, K + A, H, W), the learned components' locations and
    log-scales (B, K, C, H, W) given x's earlier channels (their means when x is None), and the anchors'
    log-scales (B, A, C, H, W)."""
    b, maps, h, w = params.shape
    extra = anchor_maps(channels)
    # Splits, not slices: see `mixture_parts`.
    mixture, anchor_logits, anchor_scales = params.split([maps - extra, ANCHORS, extra - ANCHORS], dim=1)
    logits, means, log_scales, coefficients = mixture_parts(mixture, channels, coupled)
    if coefficients is not None:
        means = coupled_locations(means, coefficients, None if x is None else x.unsqueeze(1))
    anchor_logits = anchor_logits.masked_fill(no_anchors, NO_WEIGHT)
    log_weights = F.log_softmax(torch.cat([logits, anchor_logits], dim=1), dim=1)
    anchor_scales = torch.clamp(anchor_scales.reshape(b, ANCHORS, channels, h, w), min=MIN_LOG_SCALE)
    return log_weights, means, log_scales, anchor_scales


def anchored_log_prob(
    params: torch.Tensor, x: torch.Tensor, coupled: bool, anchors: torch.Tensor, no_anchors: torch.Tensor
) -> torch.Tensor:
    """log p(pixel) (B, H, W) under the mixture plus anchors: params hold the mixture's maps, then A logits
    and A*C log-scales; anchors (B, A, C, H, W) are the anchor colours, no_anchors (bool) where they get no
    weight."""
    c = x.shape[1]
    log_weights, locations, log_scales, anchor_scales = _weights_and_locations(
        params, c, coupled, no_anchors, x
    )
    xs = x.unsqueeze(1)
    learned = discretized_logistic_log_prob(xs, locations, log_scales).sum(dim=2)  # (B, K, H, W)
    fixed = discretized_logistic_log_prob(xs, anchors, anchor_scales).sum(dim=2)  # (B, A, H, W)
    return torch.logsumexp(log_weights + torch.cat([learned, fixed], dim=1), dim=1)


def anchored_mean(
    params: torch.Tensor, channels: int, coupled: bool, anchors: torch.Tensor, no_anchors: torch.Tensor
) -> torch.Tensor:
    """The mean image (B, C, H, W) of the mixture plus anchors (each learned component at its mean,
    clamped to [0, 1] like `mean_image`)."""
    log_weights, locations, _, _ = _weights_and_locations(params, channels, coupled, no_anchors, None)
    weights = log_weights.exp().unsqueeze(2)  # (B, K + A, 1, H, W)
    return (weights * torch.cat([locations, anchors], dim=1)).sum(dim=1)


def known_flags(step: int) -> torch.Tensor:
    """(GROUPS,) 1.0 at the cell positions decoded before `step`, in pixel_unshuffle order."""
    flags = torch.zeros(GROUPS)
    for position in POSITIONS[:step]:
        flags[position] = 1.0
    return flags


class PaddedOutputConv(nn.Conv2d):
    """A convolution run with its output channels padded to a multiple of 8 and the padding dropped: oneDNN's
    CPU kernels take a slow path for other counts (the group net's 70 maps ran 3x slower than 72). Parameters,
    initialisation and outputs are a plain Conv2d's, so checkpoints and seeds are unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spare = -self.out_channels % 8
        if not spare:
            return super().forward(x)
        weight = F.pad(self.weight, (0, 0, 0, 0, 0, 0, 0, spare))
        bias = None if self.bias is None else F.pad(self.bias, (0, spare))
        out = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        return out.split([self.out_channels, spare], dim=1)[0]


class PixelGroupDecoder(nn.Module):
    def __init__(
        self,
        features: int,
        channels: int,
        mixture_maps: int,
        width: int,
        layers: int,
        activation: type[nn.Module],
        anchored: bool = False,
        levels: int = 1,
    ):
        super().__init__()
        self.channels = channels
        self.anchored = anchored
        # With levels > 1 the first group is decoded by a decoder of its own instead of this level's net.
        self.inner = (
            PixelGroupDecoder(
                features * GROUPS, channels, mixture_maps, width, layers, activation, anchored, levels - 1
            )
            if levels > 1
            else None
        )
        self.param_maps = mixture_maps + (anchor_maps(channels) if anchored else 0)
        fan_in = features * GROUPS + channels * GROUPS + GROUPS
        body: list[nn.Module] = [nn.Conv2d(fan_in, width, 3, padding=1), activation()]
        for _ in range(layers - 1):
            body += [nn.Conv2d(width, width, 3, padding=1), activation()]
        self.body = nn.Sequential(*body, PaddedOutputConv(width, self.param_maps, 1))
        self.register_buffer("flags", torch.stack([known_flags(s) for s in range(GROUPS)]), persistent=False)
        self.register_buffer("onehots", torch.eye(GROUPS), persistent=False)

    def _step_input(self, features: torch.Tensor, cells: torch.Tensor, step: int) -> torch.Tensor:
        """features (B, 4F, h, w); cells (B, C, 4, h, w), the pixels by cell position (any values where not
        decoded: they are zeroed here)."""
        b, c, _, h, w = cells.shape
        flags = self.flags[step]  # type: ignore[index]
        known = (cells * flags.view(1, 1, GROUPS, 1, 1)).reshape(b, c * GROUPS, h, w)
        planes = flags.view(1, GROUPS, 1, 1).expand(b, GROUPS, h, w)
        return torch.cat([features, known, planes], dim=1)

    @staticmethod
    def _full(cells: torch.Tensor) -> torch.Tensor:
        """(B, P, 4, h, w), maps or pixels by cell position in pixel_unshuffle order -> (B, P, 2h, 2w)."""
        b, p, _, h, w = cells.shape
        return F.pixel_shuffle(cells.reshape(b, p * GROUPS, h, w), CELL)

    def params(self, features: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: every group's maps given the true pixels of the groups before it, (B, P, H, W)."""
        b, c, _, _ = x.shape
        low = F.pixel_unshuffle(features, CELL)
        cells = F.pixel_unshuffle(x, CELL).reshape(b, c, GROUPS, *low.shape[2:])
        first = 0 if self.inner is None else 1  # the inner decoder's maps stand for this level's first step
        steps = torch.cat([self._step_input(low, cells, s) for s in range(first, GROUPS)], dim=0)
        out = self.body(steps).reshape(GROUPS - first, b, self.param_maps, *low.shape[2:])
        by_step = list(out.unbind(0))
        if self.inner is not None:
            by_step.insert(0, self.inner.params(low, cells[:, :, POSITIONS[0]]))
        by_position = [by_step[POSITIONS.index(p)] for p in range(GROUPS)]
        return self._full(torch.stack(by_position, dim=2))

    def decode(self, features: torch.Tensor, coupled: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Group by group, each at its mixture mean given the groups before: the image (B, C, H, W) and the
        maps each group was decoded with (B, P, H, W)."""
        low = F.pixel_unshuffle(features, CELL)
        b, _, h, w = low.shape
        cells = torch.zeros(b, self.channels, GROUPS, h, w, dtype=low.dtype, device=low.device)
        maps: dict[int, torch.Tensor] = {}
        for step, position in enumerate(POSITIONS):
            if step == 0 and self.inner is not None:
                group_mean, maps[position] = self.inner.decode(low, coupled)
            else:
                maps[position] = out = self.body(self._step_input(low, cells, step))
                group_mean = self._group_mean(out, cells, step, coupled)
            onehot = self.onehots[position].view(1, 1, GROUPS, 1, 1)  # type: ignore[index]
            cells = cells + group_mean.unsqueeze(2) * onehot
        return self._full(cells), self._full(torch.stack([maps[p] for p in range(GROUPS)], dim=2))

    def _group_mean(self, out: torch.Tensor, cells: torch.Tensor, step: int, coupled: bool) -> torch.Tensor:
        """The mean (B, C, h, w) of group `step` under its maps `out`, given the cells decoded so far."""
        if not self.anchored:
            return mean_image(out, self.channels, coupled)
        row, column = ORDER[step]  # the anchors are the neighbours decoded so far
        anchors = neighbour_anchors(self._full(cells))[..., row::CELL, column::CELL]
        no_anchors = torch.full((1, 1, *cells.shape[3:]), step == 0, device=cells.device)
        return anchored_mean(out, self.channels, coupled, anchors, no_anchors)

    def noise_maps(self, mixture_components: int) -> int:
        """Noise maps per pixel `draw` reads: a Gumbel per component (anchors included), a logistic per
        channel."""
        return mixture_components + (ANCHORS if self.anchored else 0) + self.channels

    def draw(self, features: torch.Tensor, coupled: bool, noise: torch.Tensor) -> torch.Tensor:
        """Group by group, each drawn from its mixture given the groups drawn before (`draw_mixture`; noise
        (B, `noise_maps`, H, W)): an image (B, C, H, W) of 8-bit values."""
        low = F.pixel_unshuffle(features, CELL)
        b, _, h, w = low.shape
        noise_cells = F.pixel_unshuffle(noise, CELL).reshape(b, noise.shape[1], GROUPS, h, w)
        cells = torch.zeros(b, self.channels, GROUPS, h, w, dtype=low.dtype, device=low.device)
        for step, position in enumerate(POSITIONS):
            if step == 0 and self.inner is not None:  # the inner image is this level's (0, 0) group
                group = self.inner.draw(low, coupled, noise_cells[:, :, position])
            else:
                out = self.body(self._step_input(low, cells, step))
                group = self._group_draw(out, cells, step, coupled, noise_cells[:, :, position])
            onehot = self.onehots[position].view(1, 1, GROUPS, 1, 1)  # type: ignore[index]
            cells = cells + group.unsqueeze(2) * onehot
        return self._full(cells)

    def _group_draw(
        self, out: torch.Tensor, cells: torch.Tensor, step: int, coupled: bool, noise: torch.Tensor
    ) -> torch.Tensor:
        """A draw (B, C, h, w) of group `step` under its maps `out`, given the cells drawn so far."""
        c = self.channels
        if not self.anchored:
            logits, means, log_scales, coefficients = mixture_parts(out, c, coupled)
            return draw_mixture(logits, means, log_scales, coefficients, noise)
        b, maps, h, w = out.shape
        extra = anchor_maps(c)
        mixture, anchor_logits, anchor_scales = out.split([maps - extra, ANCHORS, extra - ANCHORS], dim=1)
        logits, means, log_scales, coefficients = mixture_parts(mixture, c, coupled)
        row, column = ORDER[step]
        anchors = neighbour_anchors(self._full(cells))[..., row::CELL, column::CELL]  # (B, A, C, h, w)
        if step == 0:  # no decoded neighbours: the anchors get no weight, as in the likelihood
            anchor_logits = torch.full_like(anchor_logits, NO_WEIGHT)
        anchor_scales = torch.clamp(anchor_scales.reshape(b, ANCHORS, c, h, w), min=MIN_LOG_SCALE)
        if coefficients is not None:  # an anchor is a colour, not coupled across its channels
            coefficients = torch.cat(
                [coefficients, coefficients.new_zeros(b, ANCHORS, *coefficients.shape[2:])], 1
            )
        return draw_mixture(
            torch.cat([logits, anchor_logits], dim=1),
            torch.cat([means, anchors], dim=1),
            torch.cat([log_scales, anchor_scales], dim=1),
            coefficients,
            noise,
        )

    def nll(self, params: torch.Tensor, x: torch.Tensor, coupled: bool) -> torch.Tensor:
        """-log p(x|z) per image in nats from the teacher-forced maps `params(features, x)`."""
        if not self.anchored:  # every pixel's factor is read off its maps alone, at any level
            return discretized_logistic_nll(params, x, coupled)
        return -self.log_probs(params, x, coupled).flatten(1).sum(dim=1)

    def log_probs(self, params: torch.Tensor, x: torch.Tensor, coupled: bool) -> torch.Tensor:
        """Anchored decoders: log p of every pixel (B, H, W) given z and the pixels of earlier groups,
        teacher forced (every pixel's anchors are its neighbours in x)."""
        h, w = x.shape[2:]
        log_p = anchored_log_prob(params, x, coupled, neighbour_anchors(x), first_group(h, w, x.device))
        if self.inner is None:
            return log_p
        # The first group's anchors are its neighbours in the half-resolution image: the inner decoder's.
        inner = self.inner.log_probs(params[..., ::CELL, ::CELL], x[..., ::CELL, ::CELL], coupled)
        cells = F.pixel_unshuffle(log_p.unsqueeze(1), CELL)  # (B, 4, h, w); channel 0 is the (0, 0) group
        return F.pixel_shuffle(torch.cat([inner.unsqueeze(1), cells[:, 1:]], dim=1), CELL)[:, 0]
