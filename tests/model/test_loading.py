"""Loading checkpoints made elsewhere: HF folders without (or with the wrong) tokenizer,
`tokenizer=DIR`; GGUF files with llama3 RoPE scaling and quantised tensor types."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from bigrec_jax import assets
from bigrec_jax.files import UserError
from bigrec_jax.model import forward, load_model
from bigrec_jax.model.loading import _convert_gguf

TINY = dict(vocab_size=320, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


def _smollm2_dir():
  """The embedded SmolLM2 as an HF directory (weights, config and tokenizer files)."""
  return _convert_gguf(assets.smollm2_gguf())


def _save_weights_only(path, model_type, **overrides):
  from transformers import AutoConfig, AutoModelForCausalLM

  torch.manual_seed(0)
  model = AutoModelForCausalLM.from_config(AutoConfig.for_model(
      model_type=model_type, **{**TINY, **overrides})).eval()
  model.save_pretrained(path)
  return model


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_folder_without_tokenizer_files_names_the_missing_file(tmp_path, model_type):
  _save_weights_only(tmp_path, model_type)
  with pytest.raises(UserError, match=r"tokenizer\.json: missing.*--tokenizer=DIR"):
    load_model(str(tmp_path))


def test_partial_tokenizer_files_name_the_missing_one(tmp_path):
  _save_weights_only(tmp_path, "qwen2")
  (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}))
  with pytest.raises(UserError, match=r"merges\.txt: missing"):
    load_model(str(tmp_path))


def test_tokenizer_that_encodes_to_nothing_is_refused(tmp_path):
  from tokenizers import Tokenizer, models

  _save_weights_only(tmp_path, "qwen2")
  Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")).save(
      str(tmp_path / "tokenizer.json"))
  with pytest.raises(UserError, match="tokenizer is not usable: 'Toy Story"):
    load_model(str(tmp_path))


def test_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path):
  _save_weights_only(tmp_path, "llama")
  with pytest.raises(UserError, match="49152 tokens but the model's vocab_size is 320"):
    load_model(str(tmp_path), tokenizer=_smollm2_dir())
  with pytest.raises(UserError, match="--tokenizer=.*not a directory"):
    load_model(str(tmp_path), tokenizer=str(tmp_path / "config.json"))


def test_real_weights_paired_with_a_tokenizer_from_elsewhere(tmp_path, smollm2, bigrec_prompts):
  """SmolLM2's weights in a folder of their own, its tokenizer given by tokenizer=DIR."""
  source = _smollm2_dir()
  weights = tmp_path / "weights"
  weights.mkdir()
  for name in ("config.json", "model.safetensors"):
    os.symlink(os.path.join(source, name), weights / name)
  with pytest.raises(UserError, match="tokenizer.json: missing"):
    load_model(str(weights))
  paired = load_model(str(weights), tokenizer=source)
  assert paired.tokenizer(["Toy Story"])["input_ids"] == smollm2.tokenizer(["Toy Story"])[
      "input_ids"] != [[]]
  enc = paired.tokenizer(bigrec_prompts[:1], return_tensors="np")
  ids, mask = enc["input_ids"][:, -24:], enc["attention_mask"][:, -24:]
  ours, _ = forward(paired.config, paired.params, ids, mask)
  ref, _ = forward(smollm2.config, smollm2.params, ids, mask)
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))


def test_generate_launcher_takes_tokenizer_flag(tmp_path):
  """launch/generate.py on a folder of weights only: exit 2 naming the file, then --tokenizer."""
  import subprocess
  import sys

  from transformers import LlamaConfig as HFConfig, LlamaForCausalLM

  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  torch.manual_seed(0)
  LlamaForCausalLM(HFConfig(vocab_size=49152, hidden_size=16, intermediate_size=32,
                            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                            tie_word_embeddings=True)).save_pretrained(tmp_path / "weights")
  row = {"instruction": "Recommend a movie.", "input": 'The user watched "Toy Story"\n '}
  (tmp_path / "in.json").write_text(json.dumps([row]))
  args = [sys.executable, os.path.join(root, "launch", "generate.py"),
          f"--model={tmp_path / 'weights'}", f"--input={tmp_path / 'in.json'}",
          f"--output={tmp_path / 'out.json'}", "--num_beams=1", "--max_new_tokens=2"]
  run = lambda *extra: subprocess.run(args + list(extra), capture_output=True, text=True,
                                      cwd=root, timeout=300)
  missing = run()
  assert missing.returncode == 2 and "tokenizer.json: missing" in missing.stderr
  paired = run(f"--tokenizer={_smollm2_dir()}")
  assert paired.returncode == 0, paired.stderr[-2000:]
  assert len(json.loads((tmp_path / "out.json").read_text())[0]["predict"]) == 1
