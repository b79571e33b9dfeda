"""Short version of `launch/parity.py --tasks=train`: a few LoRA training steps of the demo recipe
on the real SmolLM2 equal transformers + peft + torch AdamW + HF's schedule, step for step.

The long version (32 steps of 16 real ML-100K examples) is in README, "Parity with the PyTorch
reference"; this one keeps its code path (bench/parity.py, the torch side in its own process)
on 8 short prompts, batch 4, 3 steps.
"""
from __future__ import annotations

import numpy as np

from bigrec_jax.bench import parity
from bigrec_jax.data import prompts, tokenize
from configs import demo

_HISTORIES = [(["Toy Story", "GoldenEye"], "Heat"), (["Star Wars", "Fargo"], "Contact"),
              (["Scream"], "Titanic"), (["Twelve Monkeys", "Babe"], "Se7en"),
              (["Evita", "Liar Liar"], "Air Force One"), (["Copycat"], "Get Shorty"),
              (["Jackie Brown", "Casino"], "Sabrina"), (["Mortal Kombat"], "Ghost")]


def test_lora_steps_equal_peft_with_torch_adamw(smollm2, tmp_path):
  config = parity.parity_config(demo.get_config())
  with config.unlocked():
    config.train.batch_size = config.train.micro_batch_size = 4
    config.train.warmup_steps = 1  # step 1 at rate 0 (as HF), then the linear decay over 4
    config.train.max_steps = 4
    config.train.learning_rate = 1e-2  # big enough that the adapters move visibly in 3 steps
  rows = [prompts.make_fields("movie", h, t) for h, t in _HISTORIES]
  train = tokenize.tokenize_rows(smollm2.tokenizer, rows, train_on_inputs=False)
  assert int(train.lengths.max()) < 100  # short prompts
  out = parity.train_parity(config, 3, str(tmp_path), model=smollm2, train_data=train)

  assert out["recipe"]["lora_dropout"] == 0.0 and out["recipe"]["train_on_inputs"] is False
  assert out["shared_prefix_tokens"] > 0 and out["label_window"] is not None  # the loop's path
  np.testing.assert_allclose(out["learning_rates"], [0.0, 1e-2, 1e-2 * 2 / 3], rtol=1e-6)
  assert out["lr_max_abs_diff"] < 1e-9
  assert out["loss_max_rel_diff"] <= parity.LOSS_RTOL, out["loss_rel_diff"]
  assert out["grad_norm_max_rel_diff"] < 1e-3
  a = out["adapter"]
  assert a["tensors"] == 2 * 2 * smollm2.config.num_layers  # A and B of q_proj, v_proj
  assert a["update_max_abs_value"] > 1e-3  # the adapters did move
  # The adapters' change since step 0 agrees as a whole; single elements whose gradient is near
  # Adam's eps can differ by up to the step's rate (compare_adapters explains), no more.
  assert a["update_rel_frobenius"] < 1e-2, a
  assert a["max_abs_diff"] <= 1e-2, a
