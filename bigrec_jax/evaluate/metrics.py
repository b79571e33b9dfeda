"""The one metrics function: NDCG@K and HR@K from 0-based all-rank positions (REFERENCE.md)."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

DEFAULT_KS = (1, 3, 5, 10, 20, 50)


def ranking_metrics(ranks: Sequence[int] | np.ndarray, ks: Iterable[int] = DEFAULT_KS) -> dict:
  """{'NDCG@K': mean 1/log2(rank+2) if rank < K else 0, 'HR@K': mean rank < K} over rows."""
  ranks = np.asarray(ranks, dtype=np.int64)
  if ranks.size == 0:
    raise ValueError("ranking_metrics needs at least one row")
  gains = 1.0 / np.log2(ranks.astype(np.float64) + 2.0)
  out = {}
  for k in ks:
    hit = ranks < k
    out[f"NDCG@{k}"] = float(np.where(hit, gains, 0.0).mean())
    out[f"HR@{k}"] = float(hit.mean())
  return out
