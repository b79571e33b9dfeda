"""The side signals injected into grounding, normalised as REFERENCE.md "Step 2" says.

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


def beam_rank_weights(present) -> np.ndarray:
  """Weights of a row's beams for multi-beam grounding: w_r = (1 / (r + 1)) / sum over present.

  `present` [Q, B] bool marks the beams that have a usable prediction (beam r = the r-th
  returned sequence, best first). Missing beams weigh 0 and the rest are re-normalised to sum
  to 1; a row with no usable beam gets all zeros. ([Q, B] float32)
  """
  present = np.asarray(present, dtype=bool)
  raw = np.where(present, 1.0 / np.arange(1, present.shape[1] + 1, dtype=np.float64), 0.0)
  total = raw.sum(axis=1, keepdims=True)
  return (raw / np.where(total > 0, total, 1.0)).astype(np.float32)
