"""The seeded synthetic data set behind the demo model: 3 classes, 4 Gaussian features.

The distribution (class priors, class means, noise) is fixed; a seed only picks the
sample. The model servers train on one sample and the load generator sends another, so
every request's true label is known and can be posted back later as ground truth.
Features are z-score-like values (mostly within -3..3), whatever their names suggest.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

CLASSES: tuple[str, ...] = ("legit", "review", "fraud")
FEATURES: tuple[str, ...] = ("transaction_amount", "account_age", "velocity", "distance")

CLASS_PRIORS = np.array([0.6, 0.25, 0.15])
CLASS_MEANS = np.array(
    [
        [-0.6, 0.5, -0.5, -0.4],
        [0.5, -0.3, 0.4, 0.6],
        [1.1, -0.9, 1.0, -0.2],
    ]
)
NOISE_SD = 0.65

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def sample(rng: np.random.Generator, n: int) -> tuple[FloatArray, IntArray]:
    """``n`` feature rows and their class indices (into CLASSES)."""
    y = rng.choice(len(CLASSES), size=n, p=CLASS_PRIORS).astype(np.int64)
    x = CLASS_MEANS[y] + rng.normal(0.0, NOISE_SD, size=(n, len(FEATURES)))
    return x.astype(np.float64), y
