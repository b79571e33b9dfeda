"""Random grounding problems shared by the in-process and the 8-device subprocess tests."""
from __future__ import annotations

import numpy as np

from bigrec_jax.ground import signals

GRID = np.asarray([[0, 0], [1, 0], [5, 0], [0, 0.3], [2, 7], [0.01, 99]], np.float32)
K = 12  # larger than a shard of 37 items over 8 devices (5 each)


def make_case(seed: int, *, integer: bool, n: int = 37, q: int = 23, d: int = 16,
              with_cf: bool = True) -> dict:
  """Queries, table, popularity, CF and targets; duplicate-title targets in some rows."""
  rng = np.random.default_rng(seed)
  if integer:  # small integers: distances are exact in float32, so ties are real ties
    e = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    e[5] = e[30]  # identical items -> identical distances everywhere
    queries = rng.integers(-2, 3, size=(q, d)).astype(np.float32)
  else:
    e = rng.normal(size=(n, d)).astype(np.float32)
    queries = (e[rng.integers(0, n, size=q)] + 0.7 * rng.normal(size=(q, d))).astype(np.float32)
  counts = rng.integers(0, 50, size=n)
  targets = np.full((q, 3), -1, np.int32)
  targets[:, 0] = rng.integers(0, n, size=q)
  targets[::3, 1] = rng.integers(0, n, size=len(targets[::3]))  # a duplicate title
  targets[::5, 2] = rng.integers(0, n, size=len(targets[::5]))
  case = {"queries": queries, "table": e, "pop": signals.popularity_weights(counts),
          "targets": targets}
  if with_cf:
    case["cf"] = signals.cf_weights(rng.normal(size=(q, n)))
  return case


CASES = {
    "integer": dict(seed=1, integer=True),
    "float": dict(seed=2, integer=False),
    "float_nocf": dict(seed=6, integer=False, with_cf=False),
}
SETTINGS = [(0.0, 0.0), (3.0, 0.0), (2.0, 0.5), (0.0, 1.5)]


def make_beam_case(seed: int = 28, *, n: int = 37, q: int = 23, d: int = 16,
                   beams: int = 4) -> dict:
  """A `make_case` whose queries have `beams` predictions per row, some rows with fewer."""
  case = make_case(seed, integer=False, n=n, q=q, d=d)
  rng = np.random.default_rng(seed + 100)
  e = case["table"]
  near = e[rng.integers(0, n, size=(q, beams))]
  case["queries"] = (near + 0.7 * rng.normal(size=(q, beams, d))).astype(np.float32)
  present = np.ones((q, beams), bool)
  present[::4, 2:] = False  # rows with only two predictions
  present[1::5, 1:] = False  # rows with one
  present[2::7, 0] = False  # a missing best beam (an empty predict[0])
  case["present"] = present
  case["weights"] = signals.beam_rank_weights(present)
  return case
