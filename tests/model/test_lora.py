"""LoRA: zero-B identity, merge/unmerge, PEFT export/import parity with peft on PyTorch."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigrec_jax.model import LoraConfig, forward, lora as lora_lib


@pytest.fixture(scope="module")
def batch(smollm2, bigrec_prompts):
  enc = smollm2.tokenizer(bigrec_prompts[:2], return_tensors="np", padding=True)
  return enc["input_ids"][:, -48:], enc["attention_mask"][:, -48:]


def _random_lora(cfg, lc, seed=0):
  lora = lora_lib.init_lora(cfg, lc, jax.random.key(seed))
  # B starts at zero; give it values so the adapter changes the output.
  keys = iter(jax.random.split(jax.random.key(seed + 1), 16))
  return jax.tree.map(lambda x: x if x.shape[-1] == 8 else 0.02 * jax.random.normal(
      next(keys), x.shape), lora)


def test_zero_b_equals_base_and_lora_tree_is_small(smollm2, batch):
  cfg, lc = smollm2.config, LoraConfig()
  lora = lora_lib.init_lora(cfg, lc, jax.random.key(0))
  n_lora = sum(x.size for x in jax.tree.leaves(lora))
  assert n_lora == cfg.num_layers * 8 * (2 * 576 + 576 + 192)
  base, _ = forward(cfg, smollm2.params, *batch)
  with_lora, _ = forward(cfg, smollm2.params, *batch, lora=lora, lora_config=lc)
  np.testing.assert_array_equal(np.asarray(base), np.asarray(with_lora))
  a = lora["layers"]["q_proj"]["a"]
  bound = 1 / np.sqrt(576)
  assert float(jnp.abs(a).max()) <= bound and float(jnp.abs(a).max()) > 0.9 * bound


def test_merge_equals_unmerged_and_unmerge_restores(smollm2, batch):
  cfg = smollm2.config
  lc = LoraConfig(targets=("q_proj", "v_proj", "down_proj"))
  lora = _random_lora(cfg, lc)
  unmerged, _ = forward(cfg, smollm2.params, *batch, lora=lora, lora_config=lc)
  merged_params = lora_lib.merge(smollm2.params, lora, lc)
  merged, _ = forward(cfg, merged_params, *batch)
  real = batch[1].astype(bool)
  assert np.abs(np.asarray(merged)[real] - np.asarray(unmerged)[real]).max() < 1e-3
  restored = lora_lib.unmerge(merged_params, lora, lc)
  diff = jax.tree.map(lambda x, y: float(jnp.abs(x - y).max()), restored, smollm2.params)
  assert max(jax.tree.leaves(diff)) < 1e-5


def test_peft_export_loads_in_pytorch_with_same_logits(smollm2, hf_smollm2, batch, tmp_path):
  import torch
  import copy

  from peft import PeftModel

  cfg, lc = smollm2.config, LoraConfig()
  lora = _random_lora(cfg, lc, seed=3)
  lora_lib.export_peft(str(tmp_path), lora, lc, cfg)
  ours, _ = forward(cfg, smollm2.params, *batch, lora=lora, lora_config=lc)
  peft_model = PeftModel.from_pretrained(copy.deepcopy(hf_smollm2), str(tmp_path)).eval()
  with torch.no_grad():
    ref = peft_model(input_ids=torch.tensor(batch[0]),
                     attention_mask=torch.tensor(batch[1])).logits.numpy()
  real = batch[1].astype(bool)
  assert np.abs(np.asarray(ours)[real] - ref[real]).max() <= 1e-3
  # And back: importing the PEFT directory gives the same tree and config.
  imported, lc2 = lora_lib.import_peft(str(tmp_path), cfg)
  assert lc2.rank == lc.rank and lc2.alpha == lc.alpha and set(lc2.targets) == set(lc.targets)
  for name in lc.targets:
    for part in ("a", "b"):
      np.testing.assert_array_equal(np.asarray(imported["layers"][name][part]),
                                    np.asarray(lora["layers"][name][part]))


def test_bad_lora_config_and_adapter(tmp_path, smollm2):
  from bigrec_jax.files import UserError

  with pytest.raises(ValueError, match="unknown LoRA target"):
    LoraConfig(targets=("qproj",))
  with pytest.raises(UserError, match="adapter_config.json"):
    lora_lib.import_peft(str(tmp_path), smollm2.config)
