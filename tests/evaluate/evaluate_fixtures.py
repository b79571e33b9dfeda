"""A tiny catalog (prepared by tests/common_fixtures.write_prepared_dir) and prediction files."""
from __future__ import annotations

import json

import numpy as np

from common_fixtures import write_prepared_dir

TITLES = [f"Movie {i}" for i in range(30)] + ["Twin", "Twin"]  # ids 30 and 31 share a title


def write_prepared(directory: str, seed: int = 0) -> dict:
  """The TITLES catalog with random training popularity (no row files)."""
  counts = np.random.default_rng(seed).integers(0, 40, size=len(TITLES))
  write_prepared_dir(directory, TITLES, popularity=counts)
  return {"counts": counts}


def prediction_rows(n: int, seed: int, empty_every: int = 0) -> list[dict]:
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(n):
    target = int(rng.integers(0, len(TITLES))) if i % 4 else 31  # some "Twin" targets
    guess = TITLES[int(rng.integers(0, len(TITLES)))]
    predict = "" if empty_every and i % empty_every == 0 else f'"{guess}"\n'
    rows.append({"instruction": "x", "input": "y", "output": f'"{TITLES[target]}"',
                 "target_item_id": target, "predict": [predict, "other beam"]})
  return rows


def write_rows(path: str, rows: list[dict]) -> str:
  with open(path, "w") as f:
    f.write("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")
  return path
