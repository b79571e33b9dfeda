"""The side signals injected into grounding, normalised as SPEC.md "Step 2" says.

Both are computed in float64 on the host (they are small or read from files anyway) and handed
to the kernel as float32 values in [0, 1] where higher means "push this item up".
"""
from __future__ import annotations

import numpy as np


def popularity_weights(counts) -> np.ndarray:
  """p = pop / sum(pop), then min-max to [0, 1] over the catalog ([N] float32)."""
  counts = np.asarray(counts, dtype=np.float64)
  total = counts.sum()
  share = counts / total if total > 0 else counts
  return _minmax(share, axis=None).astype(np.float32)


def cf_weights(scores) -> np.ndarray:
  """Per-row min-max of a [Q, N] score matrix from a sequential model (higher = better)."""
  scores = np.asarray(scores, dtype=np.float64)
  return _minmax(scores, axis=-1).astype(np.float32)


def _minmax(x: np.ndarray, axis) -> np.ndarray:
  lo = x.min(axis=axis, keepdims=True)
  span = x.max(axis=axis, keepdims=True) - lo
  return (x - lo) / np.where(span > 0, span, 1.0)
