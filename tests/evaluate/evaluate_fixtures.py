"""A tiny prepared-data directory and prediction files, written by hand after the data contract."""
from __future__ import annotations

import json
import os

import numpy as np

TITLES = [f"Movie {i}" for i in range(30)] + ["Twin", "Twin"]  # ids 30 and 31 share a title


def write_prepared(directory: str, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "items.tsv"), "w") as f:
    f.writelines(f"{i}\t{t}\n" for i, t in enumerate(TITLES))
  counts = rng.integers(0, 40, size=len(TITLES)).tolist()
  with open(os.path.join(directory, "popularity.json"), "w") as f:
    json.dump(counts, f)
  return {"counts": np.asarray(counts)}


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
