"""A synthetic 2M-item catalog that any process can generate by item range (no shared state).

Embeddings are small integers in [-6, 6] hashed from the item id, so every squared distance is
an exact integer in float32: the numpy reference ranks them exactly (ties: lower id first) and
the kernel must agree to the last rank, across any sharding. There are many real ties.
"""
from __future__ import annotations

import numpy as np

NUM_ITEMS = 1 << 21  # 2,097,152
DIM = 8
NUM_SHARDS = 8
Q = 16
K = 20
GRID = np.asarray([[0, 0], [2, 0], [0, 0.5], [1.5, 3]], np.float32)


def _hash(x: np.ndarray) -> np.ndarray:
  """splitmix64 finaliser, vectorised over uint64."""
  x = x.astype(np.uint64)
  with np.errstate(over="ignore"):
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def embed_range(lo: int, hi: int) -> np.ndarray:
  ids = np.arange(lo, hi, dtype=np.uint64)[:, None] * np.uint64(DIM) + np.arange(DIM, dtype=np.uint64)
  return ((_hash(ids) % np.uint64(13)).astype(np.int64) - 6).astype(np.float32)


def popularity(lo: int, hi: int) -> np.ndarray:
  h = _hash(np.arange(lo, hi, dtype=np.uint64) + np.uint64(1 << 40))
  return ((h % np.uint64(1000)).astype(np.float32) / 999.0)


def cf(lo: int, hi: int) -> np.ndarray:
  ids = np.arange(lo, hi, dtype=np.uint64)[None, :] + (np.arange(Q, dtype=np.uint64)[:, None]
                                                       << np.uint64(48))
  return ((_hash(ids) % np.uint64(1000)).astype(np.float32) / 999.0)


def queries() -> np.ndarray:
  return np.random.default_rng(0).integers(-6, 7, size=(Q, DIM)).astype(np.float32)


def targets() -> np.ndarray:
  rng = np.random.default_rng(1)
  t = rng.integers(0, NUM_ITEMS, size=(Q, 2)).astype(np.int32)
  t[::3, 1] = -1
  t[0, 0] = NUM_ITEMS - 1  # the very last item (on the last process's last device)
  return t
