"""The service's numpy discretized logistic mixture: a hand computation, and term-for-term agreement with
training's torch version (so the reconstruct score is the code length the model was trained on)."""

import math

import numpy as np
import pytest

from vae_contract.likelihoods import discretized_logistic_nll

pytestmark = pytest.mark.timeout(30)


def test_constant_gray_image_by_hand():
    # One component at 128/255, s = 0.01, on a constant 4x4 image: a pixel costs -log(sig(h/s) - sig(-h/s)).
    x = np.full((1, 1, 4, 4), 128 / 255)
    logit = math.log((128 / 255) / (1 - 128 / 255))
    params = np.concatenate(
        [np.zeros((1, 1, 4, 4)), np.full((1, 1, 4, 4), logit), np.full((1, 1, 4, 4), math.log(0.01))], axis=1
    )
    h = 1 / 510
    p = 1 / (1 + math.exp(-h / 0.01)) - 1 / (1 + math.exp(h / 0.01))
    assert discretized_logistic_nll(x, params)[0] == pytest.approx(-16 * math.log(p), rel=1e-9)


def test_params_that_do_not_fit_the_image_are_refused():
    with pytest.raises(ValueError, match="do not fit"):
        discretized_logistic_nll(np.zeros((1, 3, 4, 4)), np.zeros((1, 8, 4, 4)))


def test_agrees_with_training():
    torch = pytest.importorskip("torch")
    from training.likelihoods import discretized_logistic_nll as training_nll

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 3, 6, 6)).astype(np.float32) / 255
    x[0] = 1.0  # white: the top edge bin
    x[1, :, :3] = 0.0  # black: the bottom edge bin
    params = (rng.standard_normal((3, 35, 6, 6)) * 3).astype(np.float32)
    ours = discretized_logistic_nll(x, params)
    theirs = training_nll(torch.from_numpy(params).double(), torch.from_numpy(x).double()).numpy()
    assert np.allclose(ours, theirs, rtol=1e-10)
