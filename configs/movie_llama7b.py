"""The paper's movie setting: LLaMA-7B + MovieLens-10M, 1024 few-shot examples, seeds 0 1 2.

Place an HF LLaMA-7B directory and the ML-10M files, then override the paths:
  --config.model.path=/data/llama-7b-hf --config.data.interactions_file=/data/ml-10M100K/ratings.dat
  --config.data.items_file=/data/ml-10M100K/movies.dat
Hardware presets (configs/presets.py) pick mesh, dtype and micro-batch: --config.preset=gpu8.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import default, presets  # pylint: disable=wrong-import-position


def paper_config(dataset: str, interactions_file: str, items_file: str, preset: str):
  """The paper's setting for one dataset: LLaMA-7B, 1024 few-shot examples, seeds 0 1 2."""
  c = default.get_config()
  c.model.path = "/data/llama-7b-hf"
  c.data.dataset = dataset
  c.data.interactions_file = interactions_file
  c.data.items_file = items_file
  c.data.sample = 1024
  c.seeds = (0, 1, 2)
  presets.apply(c, preset)
  return c


def get_config(preset: str = "gpu1"):
  return paper_config("ml-10m", "/data/ml-10M100K/ratings.dat", "/data/ml-10M100K/movies.dat",
                      preset)
