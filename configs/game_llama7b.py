"""The paper's game setting: LLaMA-7B + Amazon Video Games (5-core + metadata), 1024 samples.

  --config.model.path=/data/llama-7b-hf
  --config.data.interactions_file=/data/amazon/Video_Games_5.json
  --config.data.items_file=/data/amazon/meta_Video_Games.json
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import movie_llama7b  # pylint: disable=wrong-import-position


def get_config(preset: str = "gpu1"):
  return movie_llama7b.paper_config("amazon", "/data/amazon/Video_Games_5.json",
                                    "/data/amazon/meta_Video_Games.json", preset)
