"""The lecture's PCA example, reproduced exactly as its table prints it."""

import numpy as np
import pytest

from training.pca import fit_pca

POINTS = {"A": (-0.5, -0.4), "B": (-0.4, -0.1), "C": (0.1, 0.0), "D": (0.3, 0.3), "E": (0.5, 0.2)}
# The lecture's table: 1-D encoding and decoded 2-D point for each of A..E (2 decimals as printed).
ENCODED = [-0.63, -0.39, 0.09, 0.41, 0.53]
DECODED = [(-0.54, -0.33), (-0.34, -0.20), (0.07, 0.04), (0.35, 0.21), (0.46, 0.27)]


def test_lecture_table_encodings_and_decodings():
    x = np.array(list(POINTS.values()))
    pca = fit_pca(x, k=1)
    np.testing.assert_allclose(pca.mean, [0.0, 0.0], atol=1e-12)
    codes = pca.encode(x)[:, 0]
    assert [round(float(c), 2) for c in codes] == ENCODED
    decoded = pca.decode(codes[:, None])
    assert [tuple(round(float(v), 2) for v in row) for row in decoded] == DECODED


def test_sign_convention_largest_coordinate_positive():
    x = np.array(list(POINTS.values()))
    # Flipping the data flips the SVD's sign freely; the convention must pin the axis anyway.
    for data in (x, -x, x[::-1]):
        component = fit_pca(data, k=1).components[0]
        assert component[np.argmax(np.abs(component))] > 0
        np.testing.assert_allclose(np.abs(component), [0.8578, 0.5140], atol=1e-4)


def test_pca_is_the_best_linear_reconstruction_in_2d():
    x = np.array(list(POINTS.values()))
    pca = fit_pca(x, k=1)
    # Reconstruction error of the first PC equals the discarded eigenvalue / D (closed form).
    eigenvalues = np.linalg.eigvalsh(np.cov(x.T, bias=True))
    assert pca.reconstruction_error(x) == pytest.approx(eigenvalues[0] / 2, rel=1e-9)
    full = fit_pca(x, k=2)
    assert full.reconstruction_error(x) == pytest.approx(0.0, abs=1e-20)
