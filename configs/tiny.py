"""A tiny end-to-end slice for CI and smoke tests: a few dozen rows, 2 training steps.

Runs every stage on the real SmolLM2 and ML-100K in a few minutes on a 2-core CPU; the numbers
it reports mean nothing.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import demo  # pylint: disable=wrong-import-position


def get_config():
  c = demo.get_config()
  c.data.sample = 16
  c.data.valid_test_size = 16
  c.data.valid_size = 16
  c.data.cutoff_len = 256
  c.train.batch_size = 8
  c.train.micro_batch_size = 4
  c.train.max_steps = 2
  c.train.num_epochs = 1
  c.train.warmup_steps = 1
  c.generate.max_new_tokens = 8
  c.generate.batch_size = 8
  c.baselines.models = ("sasrec", "mostpop")
  c.baselines.few_shot = False
  c.baselines.train.max_epochs = 1
  c.baselines.train.patience = 1
  return c
