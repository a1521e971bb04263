"""Error measures for ranking tensors by quantization damage.

``sqnr_db`` is the one in ``edgekit.fidelity.metrics`` (a numpy-only leaf module, like
``edgekit.errors``), so a tensor's ranking and an artifact's verification measure alike.
"""

from __future__ import annotations

import numpy as np

from edgekit.fidelity.metrics import sqnr_db

__all__ = ["OUTLIER_SHARE", "robust_sqnr_db", "sqnr_db"]

# Share of the highest-energy elements left out by ``robust_sqnr_db``.
OUTLIER_SHARE = 0.01


def robust_sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    """The worse of the plain SQNR and the SQNR without the top 1% highest-energy elements.

    ``ref``/``got`` are (samples, elements). A tensor whose int8 scale is set by a few huge
    elements has a fine plain SQNR (its signal *is* those elements) while everything else is
    crushed to a couple of int8 levels; leaving the few out shows the damage. A healthy tensor
    scores about the same both ways.
    """
    ref = ref.reshape(ref.shape[0], -1).astype(np.float64)
    got = got.reshape(got.shape[0], -1).astype(np.float64)
    plain = sqnr_db(ref, got)
    energy = np.sum(ref ** 2, axis=0)
    drop = max(1, int(OUTLIER_SHARE * energy.size))
    if energy.size <= 2 * drop:
        return plain
    keep = np.argsort(energy)[:-drop]
    return min(plain, sqnr_db(ref[:, keep], got[:, keep]))
