"""The reference recipe at the demo's budget: what the PyTorch BIGRec code would do here.

Same data, rows and training budget as configs/demo.py (1024 examples, 64 optimizer steps of
16, 1000 test rows, and the reference's learning rate 1e-4), but the reference's choices
everywhere else: loss over the whole prompt, 20 warmup steps, the Alpaca prompt, unconstrained
beam search with 32 new tokens, no stop at the closing quote and no history exclusion. Speed
settings of our code (bfloat16 matmul operands, padding) stay the demo's.
The quality ablation (README) compares the demo against this run.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import demo  # pylint: disable=wrong-import-position


def get_config():
  c = demo.get_config()
  c.data.train_on_inputs = True
  c.data.prompt_template = "alpaca"
  c.train.warmup_steps = 20
  c.generate.max_new_tokens = 32
  c.generate.constrained = False
  c.generate.exclude_history = "none"  # it needs the catalog trie, which free text has not
  if "stop_at_closing_quote" in c.generate:
    c.generate.stop_at_closing_quote = False
  return c
