"""The paper's game setting: LLaMA-7B + Amazon Video Games (5-core + metadata), 1024 samples.

  --config.model.path=/data/llama-7b-hf
  --config.data.interactions_file=/data/amazon/Video_Games_5.json
  --config.data.items_file=/data/amazon/meta_Video_Games.json
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import default, presets  # pylint: disable=wrong-import-position


def get_config(preset: str = "gpu1"):
  c = default.get_config()
  c.model.path = "/data/llama-7b-hf"
  c.data.dataset = "amazon"
  c.data.interactions_file = "/data/amazon/Video_Games_5.json"
  c.data.items_file = "/data/amazon/meta_Video_Games.json"
  c.data.sample = 1024
  c.seeds = (0, 1, 2)
  presets.apply(c, preset)
  return c
