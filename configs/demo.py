"""The demo: embedded SmolLM2-135M-Instruct + MovieLens-100K, sized for a 2-core CPU.

Departures from the reference recipe, each a lever measured in the quality ablation (README,
"Quality on the embedded default"): bfloat16 weight-matmul operands where the CPU multiplies
them in hardware (speed), the prompt in SmolLM2-Instruct's own chat template, loss on the
response only, 64 optimizer steps of 16 (one epoch of the 1024 examples) at the reference's
learning rate (1e-4), beam search constrained to catalog titles the user has not already
interacted with, stopping at the closing quote, a short generation budget, and 1000 test rows
(300 valid rows only tune gamma).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import default  # pylint: disable=wrong-import-position


def get_config():
  c = default.get_config()
  c.data.sample = 1024
  c.data.valid_test_size = 1000  # test rows (one hit = 0.001)
  c.data.valid_size = 300  # valid rows: only used to pick gamma
  c.data.valid_sample = 64  # rows for the per-epoch validation loss
  c.data.train_on_inputs = False
  # The model was instruction-tuned on ChatML turns: in them its validation loss is 2.45 against
  # 2.59 for the reference's Alpaca text, and BIGRec + popularity gains (ablation, README).
  c.data.prompt_template = "chatml"
  c.data.bucket_multiple = 16  # ML-100K prompts are 110-190 tokens: pad batches to 16, not 64
  # bfloat16 operands for the weight matmuls (float32 activations and accumulation) where the
  # CPU multiplies bfloat16 in hardware (AMX, AVX512-BF16: 1.1-1.7x per training step), float32
  # elsewhere (an AVX2-only CPU widens bfloat16 in software: 1.5x slower). bigrec_jax/host.py.
  c.model.matmul_dtype = "auto"
  # The reference's learning rate. Against 3e-4 (the demo until 2026-12-03) it keeps the adapter
  # nearer the instruction-tuned model: 4x the distinct best beams, and BIGRec NDCG@10 0.0085
  # against 0.0061 over 3 seeds (ablation, README); 1e-3 collapsed harder, 3e-5 learnt too little.
  c.train.learning_rate = 1e-4
  c.train.warmup_steps = 5
  c.train.batch_size = 16
  c.train.micro_batch_size = 16
  c.train.num_epochs = 1
  c.train.early_stopping_patience = 1
  c.generate.max_new_tokens = 28  # the longest ML-100K titles take 25-26 SmolLM2 tokens with quotes + EOS
  c.generate.constrained = True  # every prediction is a catalog title (reference: free text)
  c.generate.stop_at_closing_quote = True
  # A title the user already had is never the next item on MovieLens (one rating per item):
  # without this 23-42% of best beams repeat the history (ablation, README).
  c.generate.exclude_history = "all_past"
  c.generate.batch_size = 16
  c.ground.embed_batch_size = 64
  c.baselines.models = ("sasrec", "gru4rec", "mostpop")
  c.baselines.train.max_epochs = 20
  c.baselines.train.patience = 3
  return c
