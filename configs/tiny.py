"""A tiny end-to-end slice for CI and smoke tests: a few dozen rows, 1 training step.

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
  c.data.valid_size = 8  # valid rows only tune gamma (and an alpha grid)
  c.data.valid_sample = 4  # rows for the validation loss
  c.data.cutoff_len = 256
  # One optimizer step of 4 rows (2 micro-batches: still accumulates) at the full rate: the train
  # step's program compiles once per micro-batch length, and a second step (of other lengths)
  # compiled it again, ~20 s on 2 cores.
  c.train.batch_size = 4
  c.train.micro_batch_size = 2
  c.train.max_steps = 1
  c.train.num_epochs = 1
  c.train.warmup_steps = 0
  c.generate.max_new_tokens = 8
  c.generate.batch_size = 8
  c.generate.bucket_multiple = 256  # every prompt (110-190 tokens) in one bucket: one compile
  c.baselines.models = ("sasrec", "mostpop")
  c.baselines.few_shot = False
  c.baselines.train.max_epochs = 1
  c.baselines.train.patience = 1
  # One epoch is all 72k ML-100K training rows: a small SASRec in large batches (23 vs 41 CPU
  # s on 2 cores); its scores still feed CF grounding and the guided search.
  c.baselines.train.batch_size = 4096
  c.baselines.sasrec.hidden = 16
  c.baselines.sasrec.blocks = 1
  # Four gammas each (one kernel batch): every evaluation and the alpha grid's valid scorer
  # search the grid (the demo's are 100 and 199 gammas).
  c.ground.pop_gammas = (0.0, 1.0, 4.0, 16.0)
  c.ground.cf_gammas = (0.0, 0.1, 1.0, 10.0)
  return c
