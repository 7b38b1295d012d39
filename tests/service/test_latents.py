"""Latent geometry against closed forms: the inverse-CDF grid, lerp and slerp."""

from statistics import NormalDist

import numpy as np
import pytest

from vae_contract.latents import lerp, manifold_latents, slerp


def test_manifold_grid_is_the_inverse_gaussian_cdf_of_an_even_grid():
    z = manifold_latents(5, edge=0.05)
    assert z.shape == (25, 2)
    expected = [NormalDist().inv_cdf(q) for q in (0.05, 0.275, 0.5, 0.725, 0.95)]
    np.testing.assert_allclose(z[:5, 0], expected, atol=1e-6)  # first row: z1 left to right
    np.testing.assert_allclose(z[::5, 1], expected[::-1], atol=1e-6)  # first column: z2 top to bottom
    assert z[12].tolist() == [0.0, 0.0]  # the centre is exactly the prior mean
    # Each cell covers equal prior mass: the CDF of the grid values is evenly spaced.
    cdf = [NormalDist().cdf(v) for v in z[:5, 0]]
    assert np.allclose(np.diff(cdf), 0.225, atol=1e-6)


def test_lerp_endpoints_and_midpoint():
    a, b = np.array([1.0, -2.0]), np.array([3.0, 2.0])
    path = lerp(a, b, 3)
    np.testing.assert_allclose(path, [[1, -2], [2, 0], [3, 2]])


def test_slerp_stays_on_the_arc_and_keeps_exact_endpoints():
    a, b = np.array([2.0, 0.0]), np.array([0.0, 2.0])
    path = slerp(a, b, 5)
    assert path[0].tolist() == [2.0, 0.0] and path[-1].tolist() == [0.0, 2.0]
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), 2.0, atol=1e-6)
    angles = np.arctan2(path[:, 1], path[:, 0])
    np.testing.assert_allclose(np.diff(angles), np.pi / 8, atol=1e-6)  # equal angular steps


@pytest.mark.parametrize("b", [np.array([4.0, 0.0]), np.array([0.0, 0.0])])
def test_slerp_falls_back_to_lerp_for_parallel_or_zero_vectors(b):
    a = np.array([1.0, 0.0])
    np.testing.assert_allclose(slerp(a, b, 4), lerp(a, b, 4))
