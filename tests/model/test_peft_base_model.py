"""An exported adapter names a base model that PEFT's AutoPeftModelForCausalLM can load by itself.

The embedded SmolLM2 is a GGUF file, which transformers cannot take as `base_model_name_or_path`;
the adapter records the HF directory the GGUF was converted to (the same dequantized weights
our model runs), so `AutoPeftModelForCausalLM.from_pretrained(adapter_dir)` needs nothing else
and gives our logits.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from bigrec_jax.model import LoraConfig, forward, lora as lora_lib


def test_auto_peft_model_loads_an_exported_adapter_from_a_gguf_base(smollm2, bigrec_prompts,
                                                                     tmp_path):
  import torch
  from peft import AutoPeftModelForCausalLM

  assert smollm2.source.endswith(".gguf")
  cfg, lc = smollm2.config, LoraConfig()
  lora = lora_lib.init_lora(cfg, lc, jax.random.key(0))
  keys = iter(jax.random.split(jax.random.key(1), 16))
  lora = jax.tree.map(lambda x: x if x.shape[-1] == lc.rank else
                      0.02 * jax.random.normal(next(keys), x.shape), lora)  # non-zero B
  adapter = str(tmp_path / "adapter")
  lora_lib.export_peft(adapter, lora, lc, cfg, base_model=smollm2.source)

  base = json.load(open(os.path.join(adapter, "adapter_config.json")))["base_model_name_or_path"]
  assert os.path.isabs(base) and os.path.isfile(os.path.join(base, "config.json")), base
  assert not base.endswith(".gguf")

  model = AutoPeftModelForCausalLM.from_pretrained(adapter, dtype=torch.float32).eval()
  enc = smollm2.tokenizer(bigrec_prompts[:2], return_tensors="np", padding=True)
  ids, mask = enc["input_ids"][:, -48:], enc["attention_mask"][:, -48:]
  ours, _ = forward(cfg, smollm2.params, ids, mask, lora=lora, lora_config=lc)
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
  real = mask.astype(bool)
  assert np.abs(np.asarray(ours)[real] - ref[real]).max() <= 1e-3
  # The adapter really changes the output (the comparison is not of two base models).
  base_logits, _ = forward(cfg, smollm2.params, ids, mask)
  assert np.abs(np.asarray(base_logits)[real] - ref[real]).max() > 1e-2


def test_an_hf_directory_base_is_recorded_as_an_absolute_path(smollm2, tmp_path, monkeypatch):
  from bigrec_jax.model import loading

  hf_dir = loading.hf_directory(smollm2.source)
  monkeypatch.chdir(os.path.dirname(hf_dir))
  cfg, lc = smollm2.config, LoraConfig()
  lora = lora_lib.init_lora(cfg, lc, jax.random.key(0))
  adapter = str(tmp_path / "adapter")
  lora_lib.export_peft(adapter, lora, lc, cfg, base_model=os.path.basename(hf_dir))
  config = json.load(open(os.path.join(adapter, "adapter_config.json")))
  assert config["base_model_name_or_path"] == hf_dir
