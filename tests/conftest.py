"""Shared fixtures."""

import matplotlib

matplotlib.use("Agg")  # figures are drawn to memory in every test, never to a window

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def close_figures():
    """Close every figure a test opened (pytestmark = pytest.mark.usefixtures("close_figures"))."""
    yield
    plt.close("all")
