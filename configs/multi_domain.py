"""Multi-domain BIGRec (paper Fig. 3): train on movie + game examples together, evaluate on movie.

The game data is prepared once into its own directory (launch/prepare_data.py --dataset=amazon
--out_dir=/data/prepared/games); its few-shot training rows are concatenated with the movie ones,
each keeping its own prompt wording.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import movie_llama7b  # pylint: disable=wrong-import-position


def get_config(preset: str = "gpu1"):
  c = movie_llama7b.get_config(preset)
  c.data.extra_train_dirs = ("/data/prepared/games",)
  return c
