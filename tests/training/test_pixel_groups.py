"""The pixel-group decoder: an exact autoregressive likelihood over the four pixels of each 2x2 cell (and,
two levels deep, over seven groups of each 4x4 cell).

What makes -log p(x|z) a code length is that group g's maps depend only on z and the pixels of earlier
groups, and that each factor is normalised; these tests check both on an untrained network (any weights must
satisfy them), and that decoding an image follows the same chain."""

import math

import pytest

torch = pytest.importorskip("torch")

from training.config import TrainConfig  # noqa: E402
from training.likelihoods import discretized_logistic_nll, mean_image  # noqa: E402
from training.losses import iwae_bound, training_loss  # noqa: E402
from training.models import build_model  # noqa: E402
from training.pixel_groups import (  # noqa: E402
    ORDER,
    PaddedOutputConv,
    anchored_log_prob,
    first_group,
    known_flags,
    neighbour_anchors,
)


def grouped(channels=3, side=8, coupled=True, anchored=False, groups=4, **options):
    torch.manual_seed(0)
    config = TrainConfig(
        dataset="folder", channels=channels, arch="conv", conv_channels=(8,), hidden_dims=(16,), latent_dim=3,
        likelihood="discretized_logistic", mixture_components=2, channel_coupling=coupled,
        pixel_groups=groups, context_width=8, context_layers=2, neighbour_anchors=anchored, **options,
    ).validated()  # fmt: skip
    return build_model(config, (channels, side, side)).double().eval()


def steps(side, groups):
    """(side, side): the step that decodes each pixel, written out from the order. Two levels deep (7 groups)
    the (0, 0) pixels of the 2x2 cells form a half-size image decoded in the same order first."""

    def step(row, column, levels):
        if (row % 2, column % 2) == (0, 0) and levels > 1:
            return step(row // 2, column // 2, levels - 1)
        return 3 * (levels - 1) + ORDER.index((row % 2, column % 2))

    levels = {4: 1, 7: 2}[groups]
    return torch.tensor([[step(r, c, levels) for c in range(side)] for r in range(side)])


def test_the_seven_groups_order_of_a_4x4_cell():
    assert steps(4, 7).tolist() == [[0, 5, 2, 5], [6, 4, 6, 4], [3, 5, 1, 5], [6, 4, 6, 4]]


def group(t, position):
    row, column = position
    return t[:, :, row::2, column::2]


def pixels(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g).double() / 255


def test_the_order_and_the_flags():
    assert ORDER == ((0, 0), (1, 1), (0, 1), (1, 0))
    # pixel_unshuffle's channel order is row * 2 + column: step 2 has decoded (0, 0) and (1, 1)
    assert known_flags(0).tolist() == [0, 0, 0, 0]
    assert known_flags(2).tolist() == [1, 0, 0, 1]
    assert known_flags(4).tolist() == [1, 1, 1, 1]


@pytest.mark.parametrize("groups", [4, 7])
def test_each_groups_maps_depend_only_on_the_groups_before_it(groups):
    model = grouped(groups=groups)
    x, z = pixels((2, 3, 8, 8), 1), torch.randn(2, 3, dtype=torch.float64)
    order = steps(8, groups)
    with torch.no_grad():
        base = model.decode_logits(z, x)
        for changed in range(groups):
            other = torch.where(order == changed, pixels(x.shape, 2 + changed), x)
            moved = (model.decode_logits(z, other) - base).abs().amax(dim=(0, 1))  # (H, W)
            for step in range(groups):
                if step <= changed:
                    assert moved[order == step].max().item() == 0.0, (changed, step)
                else:  # later groups do read the earlier pixels
                    assert moved[order == step].min().item() > 0.0, (changed, step)


def test_the_last_groups_factor_sums_to_one_over_a_pixels_256_values():
    """Summing p(x) over the 256 values of one last-group pixel (all else fixed) must leave p(everything
    else): each other factor's maps stay put, and the pixel's own factor p(v | earlier groups) sums to 1."""
    model = grouped(channels=1, side=4, coupled=False)
    x, z = pixels((1, 1, 4, 4), 3), torch.randn(1, 3, dtype=torch.float64)
    row, column = ORDER[-1]
    values = torch.arange(256, dtype=torch.float64) / 255
    batch = x.repeat(256, 1, 1, 1)
    batch[:, 0, row, column] = values
    with torch.no_grad():
        maps = model.decode_logits(z.repeat(256, 1), batch)
    for position in ORDER:  # no group's maps read this pixel: its own and the earlier ones
        assert (group(maps, position) - group(maps, position)[:1]).abs().max().item() == 0.0
    log_joint = -discretized_logistic_nll(maps, batch)  # (256,) log p(x with the pixel at each value)
    pixel_maps = maps[:, :, row : row + 1, column : column + 1]
    log_factor = -discretized_logistic_nll(pixel_maps, batch[:, :, row : row + 1, column : column + 1])
    assert torch.logsumexp(log_factor, dim=0).item() == pytest.approx(0.0, abs=1e-9)
    rest = log_joint - log_factor  # log p(all other pixels): one number, whatever the value
    assert (rest - rest[0]).abs().max().item() < 1e-9
    assert torch.logsumexp(log_joint, dim=0).item() == pytest.approx(rest[0].item(), abs=1e-9)


@pytest.mark.parametrize("groups", [4, 7])
def test_decoding_runs_the_chain_with_each_group_at_its_mean(groups):
    model = grouped(groups=groups)
    z = torch.randn(3, 3, dtype=torch.float64)
    with torch.no_grad():
        image = model.decode(z)
        maps = model.decode_logits(z)  # what the decoder decoded its own image with
        forced = model.decode_logits(z, image)  # the teacher-forced maps given that image
    assert image.shape == (3, 3, 8, 8) and image.min() >= 0.0 and image.max() <= 1.0
    assert torch.equal(maps, forced)
    # every group is its own maps' mixture mean
    assert torch.allclose(image, mean_image(maps, 3, True), atol=1e-12)


@pytest.mark.parametrize("groups", [4, 7])
def test_with_anchors_decoding_runs_the_same_chain(groups):
    model = grouped(anchored=True, groups=groups)
    z = torch.randn(2, 3, dtype=torch.float64)
    with torch.no_grad():
        image = model.decode(z)
        assert torch.equal(model.decode_logits(z), model.decode_logits(z, image))


@pytest.mark.parametrize("groups", [4, 7])
def test_training_and_the_importance_weighted_bound_score_the_true_pixels(groups):
    model = grouped(anchored=groups == 7, groups=groups)
    x = pixels((4, 3, 8, 8), 5)
    loss, _ = training_loss(model.float(), x.float(), beta=1.0, generator=torch.Generator().manual_seed(0))
    assert math.isfinite(loss.item()) and loss.requires_grad
    loss.backward()
    assert model.pixel_decoder is not None
    assert all(p.grad is not None for p in model.pixel_decoder.parameters())
    with torch.no_grad():
        bound = iwae_bound(model, x.float(), k=4, generator=torch.Generator().manual_seed(0))
    assert bound.shape == (4,) and torch.isfinite(bound).all()


def test_the_option_needs_the_mixture_and_the_conv_network():
    with pytest.raises(ValueError, match="pixel_groups 4 and 7 need likelihood=discretized_logistic"):
        TrainConfig(pixel_groups=4, likelihood="bernoulli", arch="conv").validated()
    with pytest.raises(ValueError, match="pixel_groups must be one of 1, 4, 7"):
        TrainConfig(pixel_groups=2).validated()


def pixel_log_probs(model, z, x, coupled=True):
    """log p of every pixel (B, H, W) given z and the pixels of earlier groups (anchors included)."""
    with torch.no_grad():
        return model.pixel_decoder.log_probs(model.decode_logits(z, x), x, coupled)


def test_neighbour_anchors_are_the_decoded_neighbours_reflected_at_the_border():
    x = torch.arange(16, dtype=torch.float64).view(1, 1, 4, 4)
    anchors = neighbour_anchors(x)[0, :, 0]  # (A, H, W)
    # (1, 1) reads its diagonal neighbours (0, 0), (0, 2), (2, 0), (2, 2) and their average
    assert anchors[:, 1, 1].tolist() == [0.0, 2.0, 8.0, 10.0, 5.0]
    # (0, 1) reads up (reflected: row 1), down, left, right: (1, 1), (1, 1), (0, 0), (0, 2)
    assert anchors[:, 0, 1].tolist() == [5.0, 5.0, 0.0, 2.0, 3.0]
    # (3, 2), a (1, 0) position on the bottom edge: up (2, 2), down (reflected: (2, 2)), left (3, 1),
    # right (3, 3)
    assert anchors[:, 3, 2].tolist() == [10.0, 10.0, 13.0, 15.0, 12.0]


@pytest.mark.parametrize(
    ("groups", "where"),
    [(4, w) for w in [(1, 1), (0, 1), (1, 0), (3, 2), (0, 0)]]
    + [(7, w) for w in [(0, 0), (2, 2), (0, 2), (6, 4), (1, 1), (7, 6), (4, 4)]],
)
def test_with_anchors_a_pixel_moves_only_its_own_and_later_groups_probabilities(groups, where):
    """No pixel's probability may read a pixel of its own group or a later one: changing one pixel changes
    only itself and the groups after its own (through the maps and through the anchors)."""
    model = grouped(anchored=True, groups=groups)
    x, z = pixels((1, 3, 8, 8), 7), torch.randn(1, 3, dtype=torch.float64)
    other = x.clone()
    other[0, :, where[0], where[1]] = 1.0 - other[0, :, where[0], where[1]]
    moved = (pixel_log_probs(model, z, other) - pixel_log_probs(model, z, x)).abs()[0]
    order = steps(8, groups)
    own = order[where].item()
    assert moved[where].item() > 0.0  # the pixel's own probability
    moved[where] = 0.0
    assert moved[order <= own].max().item() == 0.0
    if own < groups - 1:
        assert moved[order > own].max().item() > 0.0  # some later pixel reads it


@pytest.mark.parametrize("groups", [4, 7])
def test_with_anchors_each_pixels_factor_sums_to_one(groups):
    model = grouped(channels=1, side=4, coupled=False, anchored=True, groups=groups)
    x, z = pixels((1, 1, 4, 4), 8), torch.randn(1, 3, dtype=torch.float64)
    for row in range(4):
        for column in range(4):
            batch = x.repeat(256, 1, 1, 1)
            batch[:, 0, row, column] = torch.arange(256, dtype=torch.float64) / 255
            log_p = pixel_log_probs(model, z.repeat(256, 1), batch, coupled=False)
            assert torch.logsumexp(log_p[:, row, column], dim=0).item() == pytest.approx(0.0, abs=1e-9)


def test_with_anchors_a_flat_image_can_cost_almost_nothing():
    """What the anchors are for: a pixel equal to its neighbours, given a confident anchor, costs ~0 bits,
    which no learned logistic reaches without matching the colour to a 510th."""
    model = grouped(channels=3, side=4, coupled=False, anchored=True)
    x = torch.full((1, 3, 4, 4), 0.4, dtype=torch.float64)  # 102/255 everywhere
    with torch.no_grad():
        maps = model.decode_logits(torch.zeros(1, 3, dtype=torch.float64), x)
    maps[:, -20:-15] = 50.0  # every anchor's logit dominates the two learned components
    maps[:, -15:] = -8.0  # at the smallest scale
    log_p = anchored_log_prob(maps, x, False, neighbour_anchors(x), first_group(4, 4, x.device))[0]
    later = torch.cat([log_p[r::2, c::2].flatten() for r, c in ORDER[1:]])
    assert (-later / math.log(2)).max().item() < 0.05  # bits per pixel, all 3 channels
    first = log_p[0::2, 0::2]  # no decoded neighbours: the learned mixture alone
    assert (-first).min().item() > 1.0


@pytest.mark.parametrize("maps", [70, 72])
def test_the_padded_output_conv_is_a_plain_conv_with_the_same_parameters(maps):
    torch.manual_seed(0)
    padded = PaddedOutputConv(16, maps, 1).double()
    torch.manual_seed(0)
    plain = torch.nn.Conv2d(16, maps, 1).double()
    assert padded.state_dict().keys() == plain.state_dict().keys()
    assert all(torch.equal(padded.state_dict()[k], plain.state_dict()[k]) for k in plain.state_dict())
    x = torch.randn(3, 16, 5, 5, dtype=torch.float64)
    out, expected = padded(x), plain(x)
    assert out.shape == (3, maps, 5, 5)
    assert torch.allclose(out, expected, atol=1e-12)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    assert torch.allclose(padded.weight.grad, plain.weight.grad, atol=1e-10)
    assert torch.allclose(padded.bias.grad, plain.bias.grad, atol=1e-10)
