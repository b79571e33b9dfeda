"""Loading checkpoints made elsewhere: HF folders without (or with the wrong) tokenizer,
`tokenizer=DIR`; GGUF files with llama3 RoPE scaling and quantised tensor types."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

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
  import torch
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
  import torch
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
  assert missing.returncode == 2  # messages wrap at 100 columns, wherever the path ends
  assert "tokenizer.json: missing" in " ".join(missing.stderr.split())
  paired = run(f"--tokenizer={_smollm2_dir()}")
  assert paired.returncode == 0, paired.stderr[-2000:]
  assert len(json.loads((tmp_path / "out.json").read_text())[0]["predict"]) == 1


# ---------------------------------------------------------------- GGUF files made with gguf's writer

_GGUF_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
               "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def _llama_cpp_permute(w, n_head):
  """convert_hf_to_gguf.py's LlamaModel.permute: q/k rows as llama.cpp's RoPE wants them."""
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
      w.shape)


def _llama_cpp_rope_factors(cfg):
  """convert_hf_to_gguf.py's llama3 rope_freqs tensor, for an HF config with llama3 scaling."""
  import math

  s, dim = cfg.rope_parameters, cfg.hidden_size // cfg.num_attention_heads
  freqs = 1.0 / (s["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
  old = s["original_max_position_embeddings"]
  low_wavelen, high_wavelen = old / s["low_freq_factor"], old / s["high_freq_factor"]
  out = []
  for freq in freqs:
    wavelen = 2 * math.pi / freq
    if wavelen < high_wavelen:
      out.append(1)
    elif wavelen > low_wavelen:
      out.append(s["factor"])
    else:
      smooth = (old / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] -
                                                         s["low_freq_factor"])
      out.append(1 / ((1 - smooth) / s["factor"] + smooth))
  return np.asarray(out, np.float32)


def _write_gguf(path, hf, *, stored=None, rope_freqs=None, metadata=()):
  """`hf` as a llama GGUF file. stored(name, w) -> (array, gguf type or None) picks how each
  tensor is written (default float32); the HF model is updated to what the file holds."""
  import torch
  import gguf

  cfg = hf.config
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_block_count(cfg.num_hidden_layers)
  writer.add_head_count(cfg.num_attention_heads)
  writer.add_head_count_kv(cfg.num_key_value_heads)
  writer.add_embedding_length(cfg.hidden_size)
  writer.add_feed_forward_length(cfg.intermediate_size)
  writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
  writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
  writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
  writer.add_context_length(cfg.max_position_embeddings)
  for add, value in metadata:
    getattr(writer, add)(value)
  names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
           "output_norm.weight", "lm_head.weight": "output.weight"}
  for i in range(cfg.num_hidden_layers):
    for ours, theirs in _GGUF_NAMES.items():
      names[f"model.layers.{i}.{ours}.weight"] = f"blk.{i}.{theirs}.weight"
  state = hf.state_dict()
  with torch.no_grad():
    for hf_name, name in names.items():
      w = state[hf_name].numpy().astype(np.float32)
      if name.endswith(("attn_q.weight", "attn_k.weight")):  # float32, in llama.cpp's order
        heads = cfg.num_attention_heads if "attn_q" in name else cfg.num_key_value_heads
        writer.add_tensor(name, _llama_cpp_permute(w, heads))
        continue
      data, qtype = stored(name, w) if stored and w.ndim == 2 else (w, None)
      if qtype is None:
        writer.add_tensor(name, data)
      else:
        writer.add_tensor(name, data, raw_dtype=qtype)
        if qtype in gguf.quants._type_traits:  # else the file is only for a refusal test
          state[hf_name].copy_(torch.from_numpy(np.asarray(
              gguf.quants.dequantize(data, qtype), np.float32).reshape(w.shape)))
  if rope_freqs is not None:
    writer.add_tensor("rope_freqs.weight", rope_freqs)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


def _tiny_hf(**overrides):
  import torch
  from transformers import LlamaConfig as HFConfig, LlamaForCausalLM

  torch.manual_seed(0)
  return LlamaForCausalLM(HFConfig(**{**TINY, "tie_word_embeddings": False, **overrides})).eval()


def _logits_vs_hf(ours, hf, seq=40):
  import torch
  rng = np.random.default_rng(0)
  ids = rng.integers(3, TINY["vocab_size"], size=(2, seq)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, :5] = 0
  logits, _ = forward(ours.config, ours.params, ids, mask)
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
  real = mask.astype(bool)
  return float(np.abs(np.asarray(logits)[real] - ref[real]).max())


def _load_gguf(path):
  # gguf's writer stores no tokenizer: pair SmolLM2's (the tiny vocab feeds ids, not text).
  return load_model(str(path), tokenizer=_smollm2_dir(), check_tokenizer_vocab=False)


# head_dim 16: wavelengths 6.3, 20, 63, 199, ...: one kept, two in the smoothed band, five divided.
LLAMA3 = dict(hidden_size=64, rope_theta=10000.0, max_position_embeddings=256, rope_scaling={
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64})


def _peaky_attention(hf):
  """Larger q/k weights, so attention (and so RoPE) shapes the random model's logits."""
  import torch
  with torch.no_grad():
    for layer in hf.model.layers:
      layer.self_attn.q_proj.weight.mul_(12.0)
      layer.self_attn.k_proj.weight.mul_(12.0)
  return hf


def test_gguf_llama3_rope_scaling_matches_transformers(tmp_path):
  hf = _peaky_attention(_tiny_hf(**LLAMA3))
  factors = _llama_cpp_rope_factors(hf.config)
  assert (factors == 1).any() and (factors == 8).any() and ((factors > 1) & (factors < 8)).sum() > 1
  _write_gguf(tmp_path / "llama3.gguf", hf, rope_freqs=factors)
  ours = _load_gguf(tmp_path / "llama3.gguf")
  assert ours.config.rope_scaling_dict == {
      "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 64}
  assert _logits_vs_hf(ours, hf) <= 1e-4
  # The scaling matters at these positions: the same weights with plain RoPE are far off.
  plain = _tiny_hf(**{**LLAMA3, "rope_scaling": None})
  plain.load_state_dict(hf.state_dict())
  assert _logits_vs_hf(ours, plain) > 0.05
  # A conversion cached by the code before RoPE scaling was read is redone, not reused.
  converted = _convert_gguf(str(tmp_path / "llama3.gguf"))
  config = json.loads(open(os.path.join(converted, "config.json")).read())
  del config["rope_scaling"]
  with open(os.path.join(converted, "config.json"), "w") as f:
    json.dump(config, f)
  with open(os.path.join(converted, ".complete"), "w") as f:
    json.dump({"source": str(tmp_path / "llama3.gguf")}, f)
  assert _load_gguf(tmp_path / "llama3.gguf").config.rope_scaling_dict["rope_type"] == "llama3"


def test_gguf_linear_rope_scaling_matches_transformers(tmp_path):
  import gguf

  hf = _peaky_attention(_tiny_hf(rope_scaling={"rope_type": "linear", "factor": 4.0}))
  _write_gguf(tmp_path / "linear.gguf", hf, metadata=[
      ("add_rope_scaling_type", gguf.RopeScalingType.LINEAR), ("add_rope_scaling_factor", 4.0)])
  ours = _load_gguf(tmp_path / "linear.gguf")
  assert ours.config.rope_scaling_dict == {"rope_type": "linear", "factor": 4.0}
  assert _logits_vs_hf(ours, hf) <= 1e-4


def test_gguf_rope_scaling_we_do_not_implement_is_refused(tmp_path):
  import gguf

  hf = _tiny_hf()
  _write_gguf(tmp_path / "yarn.gguf", hf, metadata=[
      ("add_rope_scaling_type", gguf.RopeScalingType.YARN), ("add_rope_scaling_factor", 4.0)])
  with pytest.raises(UserError, match="llama.rope.scaling.type='yarn' is not supported"):
    _load_gguf(tmp_path / "yarn.gguf")
  odd = np.random.default_rng(0).uniform(1, 5, size=4).astype(np.float32)
  _write_gguf(tmp_path / "odd.gguf", hf, rope_freqs=odd)
  with pytest.raises(UserError, match="not a llama3 RoPE scaling"):
    _load_gguf(tmp_path / "odd.gguf")


def _k_quant_blocks(qtype, w, rng):
  """Random but valid blocks of a K-quant type (gguf can dequantize them, not make them): random
  codes and small float16 block scales at the type's offsets."""
  import gguf

  block, size = gguf.GGML_QUANT_SIZES[qtype]
  blocks = rng.integers(0, 256, size=(w.size // block, size), dtype=np.uint8)
  scale_at = {gguf.GGMLQuantizationType.Q6_K: (size - 2,)}.get(qtype, (0, 2))  # d (, dmin)
  for at in scale_at:
    d = rng.uniform(5e-5, 1.5e-4, size=len(blocks)).astype(np.float16)
    blocks[:, at:at + 2] = d.view(np.uint8).reshape(-1, 2)
  return blocks.reshape(w.shape[0], -1)


@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_K", "Q5_K", "Q6_K"])
def test_gguf_quantised_tensor_types_load(tmp_path, type_name):
  import gguf

  qtype = gguf.GGMLQuantizationType[type_name]
  rng = np.random.default_rng(1)

  def stored(name, w):
    if type_name == "Q8_0":
      return gguf.quants.quantize(w, qtype), qtype
    return _k_quant_blocks(qtype, w, rng), qtype

  # K-quants pack 256 values per block: every quantised row is a multiple of 256 long.
  hf = _tiny_hf(hidden_size=256, intermediate_size=512, num_attention_heads=4,
                num_key_value_heads=2)
  _write_gguf(tmp_path / f"{type_name}.gguf", hf, stored=stored)
  types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / f"{type_name}.gguf"
                                                               ).tensors}
  assert types["blk.1.ffn_down.weight"] == types["output.weight"] == type_name
  ours = _load_gguf(tmp_path / f"{type_name}.gguf")
  assert _logits_vs_hf(ours, hf) <= 1e-4


def test_gguf_type_gguf_cannot_dequantize_is_refused(tmp_path):
  import gguf

  q8_k = gguf.GGMLQuantizationType.Q8_K  # llama.cpp's internal dot-product type
  hf = _tiny_hf(hidden_size=256, intermediate_size=512)

  def stored(name, w):
    if name != "blk.0.ffn_up.weight":
      return w, None
    block, size = gguf.GGML_QUANT_SIZES[q8_k]
    return np.zeros((w.shape[0], w.shape[1] // block * size), np.uint8), q8_k

  _write_gguf(tmp_path / "q8k.gguf", hf, stored=stored)
  with pytest.raises(UserError, match="'blk.0.ffn_up.weight' is stored as Q8_K, which the gguf "
                                      "package .* cannot dequantize"):
    _load_gguf(tmp_path / "q8k.gguf")
