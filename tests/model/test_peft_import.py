"""lora.import_peft on adapters made by peft itself: each LoRA option peft offers either gives
PEFT's logits or is refused with an error naming the field."""
from __future__ import annotations

import copy
import json

import jax
import numpy as np
import pytest

from bigrec_jax.files import UserError
from bigrec_jax.model import LlamaConfig, forward, lora as lora_lib
from bigrec_jax.model import loading

TINY = dict(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            tie_word_embeddings=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """A random 3-layer transformers Llama and the same weights as our params."""
  import torch
  from transformers import LlamaConfig as HFConfig, LlamaForCausalLM

  torch.manual_seed(0)
  hf = LlamaForCausalLM(HFConfig(**TINY)).eval()
  path = tmp_path_factory.mktemp("tiny")
  hf.save_pretrained(path)
  config = LlamaConfig.from_hf(json.loads((path / "config.json").read_text()))
  params = loading._build_params(config, loading._SafetensorsDir(str(path)), None)
  rng = np.random.default_rng(0)
  ids = rng.integers(3, TINY["vocab_size"], size=(2, 12)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, :4] = 0
  return hf, config, params, (ids, mask)


def _peft_adapter(hf, out_dir, **options):
  """peft's own adapter for `hf` with random (non-zero) A and B, saved to out_dir."""
  import torch
  from peft import LoraConfig as PeftLoraConfig, get_peft_model

  torch.manual_seed(1)
  model = get_peft_model(copy.deepcopy(hf), PeftLoraConfig(
      init_lora_weights=False, lora_dropout=0.0, **options)).eval()
  model.save_pretrained(out_dir)
  return model


def _logits(model, batch):
  import torch
  with torch.no_grad():
    return model(input_ids=torch.tensor(batch[0]),
                 attention_mask=torch.tensor(batch[1])).logits.numpy()


def _assert_close(ours, ref, mask, tol):
  real = mask.astype(bool)
  assert np.abs(np.asarray(ours)[real] - ref[real]).max() <= tol


OPTIONS = {
    "alpha_pattern": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                          alpha_pattern={"v_proj": 32}),
    "rank_pattern_per_module_and_layer": dict(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
        rank_pattern={"q_proj": 2, "model.layers.1.self_attn.v_proj": 6}),
    "alpha_pattern_one_layer": dict(r=4, lora_alpha=8, target_modules="all-linear",
                                    alpha_pattern={"layers.2.mlp.down_proj": 40}),
    "use_rslora": dict(r=8, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "o_proj"]),
    "layers_to_transform": dict(r=4, lora_alpha=8, target_modules=["k_proj", "up_proj"],
                                layers_to_transform=[0, 2], layers_pattern="layers"),
    "regex_targets_exclude_bias_none": dict(
        r=4, lora_alpha=4, target_modules=r".*\.(q_proj|gate_proj)", bias="none",
        exclude_modules=r"model\.layers\.1\..*"),
}


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_peft_options_give_peft_logits(tiny, tmp_path, option):
  hf, config, params, batch = tiny
  peft_model = _peft_adapter(hf, tmp_path, **OPTIONS[option])
  ref = _logits(peft_model, batch)
  assert np.abs(ref - _logits(hf, batch)).max() > 1e-2  # the adapter changes the output
  adapter, lc = lora_lib.import_peft(str(tmp_path), config)
  ours, _ = forward(config, params, *batch, lora=adapter, lora_config=lc)
  _assert_close(ours, ref, batch[1], 1e-5)
  merged, _ = forward(config, lora_lib.merge(params, adapter, lc), *batch)
  _assert_close(merged, ref, batch[1], 1e-5)
  # Written back by us, the adapter loads in peft with the same logits.
  from peft import PeftModel

  lora_lib.export_peft(str(tmp_path / "again"), adapter, lc, config)
  again = PeftModel.from_pretrained(copy.deepcopy(hf), str(tmp_path / "again")).eval()
  np.testing.assert_allclose(_logits(again, batch), ref, atol=1e-5)


def test_untransformed_layers_and_padded_ranks_are_zero(tiny, tmp_path):
  hf, config, _, _ = tiny
  _peft_adapter(hf, tmp_path, r=4, lora_alpha=8, target_modules=["v_proj"],
                layers_to_transform=[1], rank_pattern={"model.layers.1.self_attn.v_proj": 2})
  adapter, lc = lora_lib.import_peft(str(tmp_path), config)
  a, b = (np.asarray(adapter["layers"]["v_proj"][k]) for k in ("a", "b"))
  assert lc.targets == ("v_proj",) and a.shape == (3, 32, 2) and b.shape == (3, 2, 16)
  assert not a[[0, 2]].any() and not b[[0, 2]].any() and a[1].all()


def test_plain_adapter_imports_unchanged(tiny, tmp_path):
  """One r and alpha: A and B are PEFT's tensors as they are (no scale folded in)."""
  from safetensors.numpy import load_file

  hf, config, _, _ = tiny
  _peft_adapter(hf, tmp_path, r=4, lora_alpha=8, target_modules=["q_proj"])
  adapter, lc = lora_lib.import_peft(str(tmp_path), config)
  saved = load_file(str(tmp_path / "adapter_model.safetensors"))
  key = "base_model.model.model.layers.2.self_attn.q_proj.lora_B.weight"
  np.testing.assert_array_equal(np.asarray(adapter["layers"]["q_proj"]["b"][2]), saved[key].T)
  assert (lc.rank, lc.alpha, lc.targets) == (4, 8.0, ("q_proj",))


@pytest.mark.parametrize("options,field", [
    (dict(use_dora=True), "use_dora"),
    (dict(modules_to_save=["lm_head"]), "modules_to_save"),
    (dict(bias="lora_only"), "bias"),
    (dict(target_modules=["q_proj", "lm_head"]), "lm_head"),
])
def test_peft_made_adapters_we_cannot_honour_are_refused(tiny, tmp_path, options, field):
  hf, config, _, _ = tiny
  _peft_adapter(hf, tmp_path, **{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"],
                                 **options})
  with pytest.raises(UserError, match=field):
    lora_lib.import_peft(str(tmp_path), config)


@pytest.mark.parametrize("edit,field", [
    ({"peft_type": "PREFIX_TUNING"}, "peft_type"),
    ({"target_modules": ["q_proj", "query_key_value"]}, "query_key_value"),
    ({"init_lora_weights": "pissa_niter_4"}, "init_lora_weights"),
    ({"alora_invocation_tokens": [5, 6]}, "alora_invocation_tokens"),
    ({"some_future_option": {"on": True}}, "some_future_option"),
    ({"layers_to_transform": [0]}, "not accounted for"),  # the file's layer-1 and -2 tensors
])
def test_configs_we_cannot_honour_are_refused(tiny, tmp_path, edit, field):
  hf, config, _, _ = tiny
  _peft_adapter(hf, tmp_path, r=4, lora_alpha=8, target_modules=["q_proj"])
  cfg_path = tmp_path / "adapter_config.json"
  cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), **edit}))
  with pytest.raises(UserError, match=field):
    lora_lib.import_peft(str(tmp_path), config)


def test_smollm2_adapter_with_alpha_and_rank_patterns_gives_peft_logits(
    smollm2, hf_smollm2, bigrec_prompts, tmp_path):
  """The real model: the case that once loaded silently with logits off by up to 13.6."""
  import torch
  enc = smollm2.tokenizer(bigrec_prompts[:2], return_tensors="np", padding=True)
  batch = enc["input_ids"][:, -40:], enc["attention_mask"][:, -40:]
  peft_model = _peft_adapter(hf_smollm2, tmp_path, r=8, lora_alpha=16,
                             target_modules=["q_proj", "v_proj"], alpha_pattern={"v_proj": 32},
                             rank_pattern={"q_proj": 4}, layers_to_transform=list(range(0, 30, 2)))
  with torch.no_grad():  # init_lora_weights=False's B is large for a 576-wide model: shrink it
    for name, p in peft_model.named_parameters():
      if "lora_B" in name:
        p.mul_(0.05)
  peft_model.save_pretrained(tmp_path)
  ref = _logits(peft_model, batch)
  assert np.abs(ref - _logits(hf_smollm2, batch)).max() > 0.5
  adapter, lc = lora_lib.import_peft(str(tmp_path), smollm2.config)
  ours, _ = forward(smollm2.config, smollm2.params, *batch, lora=adapter, lora_config=lc)
  _assert_close(ours, ref, batch[1], 1e-3)
  merged = jax.jit(lora_lib.merge, static_argnums=2)(smollm2.params, adapter, lc)
  ours_merged, _ = forward(smollm2.config, merged, *batch)
  _assert_close(ours_merged, ref, batch[1], 1e-3)
