"""What is measured: the benchmark cases and their inputs, identical for both sides.

Everything here is numpy/text only (no jax, no torch), so the JAX worker and the PyTorch worker
build bit-identical inputs from the same spec: the same BIGRec prompts from the embedded
MovieLens-100K, the same token rows, the same random embeddings (seeded).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import numpy as np

from bigrec_jax import assets
from bigrec_jax.files import UserError, atomic_path, write_json

TASKS = ("train", "beam", "embed", "ground")
SEED = 0
DTYPES = ("auto", "float32", "bfloat16", "bfloat16_matmul")


def precision(dtype: str, accelerated: bool) -> tuple[str, str | None]:
  """(weight/activation dtype, matmul operand dtype or None) for a `--dtype` choice.

  auto: bfloat16 on an accelerator, float32 on CPU. bfloat16_matmul: float32 weights and
  activations, bfloat16 matmul operands (JAX: model.matmul_dtype; torch: autocast).
  """
  if dtype == "auto":
    dtype = "bfloat16" if accelerated else "float32"
  if dtype == "bfloat16_matmul":
    return "float32", "bfloat16"
  return dtype, None


@dataclasses.dataclass(frozen=True)
class Case:
  """One measured configuration: `task` and its shape parameters (JSON-serialisable)."""
  task: str
  name: str
  params: dict[str, Any]

  def to_json(self) -> dict[str, Any]:
    return {"task": self.task, "name": self.name, "params": dict(self.params)}

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "Case":
    return cls(d["task"], d["name"], dict(d["params"]))


def cases(tasks: Sequence[str], quick: bool) -> list[Case]:
  """The issue's shapes (or tiny ones with `quick`), smallest first within a task.

  Grounding cases are ordered by item-table size, so a peak that can only grow (JAX's device
  peak) is still that of the largest case run so far when several share one process.
  """
  out: list[Case] = []
  if "train" in tasks:
    shapes = [(2, 32)] if quick else [(4, 256), (8, 512)]
    lora = {"rank": 8, "alpha": 16.0, "dropout": 0.05, "targets": ["q_proj", "v_proj"], "lr": 1e-4}
    out += [Case("train", f"{b}x{t}", {"batch": b, "length": t, **lora}) for b, t in shapes]
    # The demo's own step (configs/demo.py): one batch of 16 real prompts in the chat template,
    # left-padded to a multiple of 16, loss on the response only. Ours runs it as `loop.train`
    # does (the output projection on the label window only, the shared prompt prefix once per
    # batch); the reference's runs its model on the whole padded batch with -100 labels.
    out.append(Case("train", f"demo_{2 if quick else 16}",
                    {"batch": 2 if quick else 16, "recipe": "demo", **lora}))
    # Full fine-tuning (train.mode=full) at the LoRA cases' first shape: every weight and its
    # AdamW moments updated, no dropout (the model has none outside LoRA).
    b, t = shapes[0]
    out.append(Case("train", f"full_{b}x{t}", {"batch": b, "length": t, "mode": "full",
                                              "lr": 1e-5}))
  if "beam" in tasks:
    batch = 2 if quick else 8
    for new in ([4] if quick else [32, 128]):
      out.append(Case("beam", f"b{batch}_new{new}", {"batch": batch, "beams": 4, "returned": 4,
                                                    "new_tokens": new}))
  if "embed" in tasks:
    n = 48 if quick else 1682
    out.append(Case("embed", f"{n}_titles", {"titles": n, "batch": 16}))
  if "ground" in tasks:
    q = 64 if quick else 5000
    sizes = [(1000, 32), (20000, 64)] if quick else [
        (10681, 576), (10681, 4096), (1_000_000, 576), (1_000_000, 4096)]
    for n, d in sizes:
      out.append(Case("ground", f"q{q}_n{n}_d{d}", {"queries": q, "items": n, "dim": d, "k": 50}))
  return out


# ----------------------------------------------------------------------------- text inputs

def bigrec_rows(limit: int) -> list[dict]:
  """Real BIGRec rows (movie prompts with 10-item histories) from the embedded MovieLens-100K."""
  from bigrec_jax.data import movielens, sequences

  root = assets.ml100k_dir()
  log = movielens.read_ml100k(os.path.join(root, "ml-100k.inter"), os.path.join(root, "ml-100k.item"))
  rules = sequences.SequenceRules(min_history=10, target_rating_above=3)
  examples = sequences.build_examples(log, rules)
  rng = np.random.default_rng(SEED)
  pick = rng.choice(len(examples), size=min(limit, len(examples)), replace=False)
  return [sequences.make_row(examples[int(i)], log.titles, "movie") for i in pick]


def demo_rows(limit: int) -> list[dict]:
  """Real rows of the demo's data rule (the reference's: every position with 10 earlier items,
  whatever the target's rating), drawn with the bench's seed."""
  from bigrec_jax.data import movielens, sequences

  root = assets.ml100k_dir()
  log = movielens.read_ml100k(os.path.join(root, "ml-100k.inter"), os.path.join(root, "ml-100k.item"))
  examples = sequences.build_examples(log, sequences.SequenceRules(min_history=10))
  rng = np.random.default_rng(SEED)
  pick = rng.choice(len(examples), size=min(limit, len(examples)), replace=False)
  return [sequences.make_row(examples[int(i)], log.titles, "movie") for i in pick]


DEMO_TEMPLATE = "chatml"  # configs/demo.py's prompt_template
DEMO_BUCKET = 16  # configs/demo.py's data.bucket_multiple


def demo_batch(tokenizer, rows: Sequence[dict], batch: int) -> tuple[dict[str, np.ndarray], int, int]:
  """(the first `batch` rows as one left-padded batch with response-only labels, label window,
  shared prefix length), the window and prefix computed over all `rows` as `loop.train`
  computes them over its training set."""
  from bigrec_jax.data import tokenize

  data = tokenize.tokenize_rows(tokenizer, rows, train_on_inputs=False, template=DEMO_TEMPLATE)
  longest = int(data.lengths[:batch].max())
  length = -(-longest // DEMO_BUCKET) * DEMO_BUCKET
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenize.PAD_ID
  out = tokenize.pad_examples(data, range(batch), length, side="left", pad_id=int(pad))
  span = data.label_span()
  window = -(-span // 8) * 8  # loop.train's rounding
  return out, window, tokenize.shared_prefix_length(data, training=True)


def catalog_titles(n: int) -> list[str]:
  """The first n titles of the ML-100K catalog (1682 in all), as grounding embeds them."""
  from bigrec_jax.data import movielens, prompts

  root = assets.ml100k_dir()
  log = movielens.read_ml100k(os.path.join(root, "ml-100k.inter"), os.path.join(root, "ml-100k.item"))
  titles = [prompts.unquote(t) for t in log.titles]
  return (titles * (-(-n // len(titles))))[:n]


def inputs_for(case: Case) -> dict[str, Any]:
  """The text inputs of a case (computed once by the runner and handed to both sides)."""
  p = case.params
  if case.task == "train" and p.get("recipe") == "demo":
    return {"rows": demo_rows(256)}
  if case.task == "train":
    from bigrec_jax.data import prompts

    return {"texts": [prompts.full_text(r) for r in bigrec_rows(4 * p["batch"] * p["length"] // 64)]}
  if case.task == "beam":
    from bigrec_jax.data import prompts

    return {"prompts": [prompts.prompt_for(r) for r in bigrec_rows(p["batch"])]}
  if case.task == "embed":
    return {"titles": catalog_titles(p["titles"])}
  return {}


def train_batch(tokenizer, p: dict[str, Any], inputs: dict[str, Any]
                ) -> tuple[dict[str, np.ndarray], int | None, int]:
  """(the case's batch {"input_ids", "attention_mask", "labels"} [rows, T], label window or
  None, shared prefix length): what both sides train on, built from the runner's inputs."""
  if p.get("recipe") == "demo":
    return demo_batch(tokenizer, inputs["rows"], p["batch"])
  rows = train_rows(tokenizer, inputs["texts"], p["batch"], p["length"])
  return {"input_ids": rows, "attention_mask": np.ones_like(rows), "labels": rows}, None, 0


def train_result(r: dict[str, Any], batch: dict[str, np.ndarray], **extra
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
  """(metrics, extra) of a timed training case: tokens/s over the padded batch (the same count
  on both sides), and the batch's shape and real and label token counts."""
  rows, length = batch["input_ids"].shape
  tokens = rows * length
  labels = int((np.asarray(batch["labels"])[:, 1:] >= 0).sum())
  return {"tokens_per_s": tokens / r["median_s"], "step_s": r["median_s"]}, {
      "loss": float(r["last_output"]), "tokens": tokens, "length": int(length),
      "real_tokens": int(np.asarray(batch["attention_mask"]).sum()), "label_tokens": labels,
      **extra}


def train_rows(tokenizer, texts: Sequence[str], batch: int, length: int) -> np.ndarray:
  """[batch, length] int32 token rows: real training texts (each + EOS) packed back to back.

  Every position is a real token (no padding), so tokens/s counts work both sides really do.
  """
  eos = int(tokenizer.eos_token_id)
  stream: list[int] = []
  need = batch * length
  for ids in tokenizer(list(texts))["input_ids"]:
    stream.extend(list(ids) + [eos])
    if len(stream) >= need:
      break
  if len(stream) < need:
    stream = (stream * (-(-need // max(1, len(stream)))))
  return np.asarray(stream[:need], np.int32).reshape(batch, length)


def ground_arrays(params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(queries [Q, D], items [N, D], targets [Q]) float32/int32, seeded; queries lie near targets.

  Built in chunks of rows so a 1M x 4096 table needs no float64 temporaries.
  """
  q, n, d = params["queries"], params["items"], params["dim"]
  rng = np.random.default_rng(SEED)
  items = np.empty((n, d), np.float32)
  for lo in range(0, n, 65536):
    hi = min(n, lo + 65536)
    items[lo:hi] = rng.standard_normal((hi - lo, d), dtype=np.float32)
  targets = rng.integers(0, n, size=q).astype(np.int32)
  queries = items[targets] + 0.5 * rng.standard_normal((q, d), dtype=np.float32)
  return queries, items, targets


def ground_bytes(params: dict[str, Any]) -> dict[str, int]:
  """Memory that each side's grounding needs at least (for skipping what cannot fit)."""
  q, n, d = params["queries"], params["items"], params["dim"]
  table = 4 * n * d
  return {
      # numpy table + the padded copy `place_items` makes + the device copy (CPU: same RAM)
      "jax_host": 3 * table + 4 * q * d,
      "jax_device": table + 4 * 256 * n * 2,
      # cdist [Q, N] float32 + argsort int64 + argsort of that int64 (ranks), + the table
      "torch_host": table + q * n * (4 + 8 + 8),
      "torch_device": table + q * n * (4 + 8 + 8),
  }


# ----------------------------------------------------------------------------- random models

TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152,
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5, "max_position_embeddings": 1024, "tie_word_embeddings": True,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "chat_template.jinja", "vocab.json", "merges.txt")


def tiny_model_dir() -> str:
  """A tiny random LLaMA with SmolLM2's tokenizer (cached), for --quick runs."""
  tok_dir = os.path.join(assets.home(), "bench", "smollm2-tokenizer")
  if not os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
    _save_smollm2_tokenizer(tok_dir)
  return random_model_dir(TINY_CONFIG, tok_dir, "tiny-llama")


def random_model_dir(config: dict[str, Any], tokenizer_dir: str, name: str = "random") -> str:
  """An HF directory with `config`'s LLaMA architecture and random weights (cached by config).

  Throughput depends on shapes, not values: on a machine without the checkpoint (a lent GPU
  with no network) this measures the same work. The tokenizer files are copied from
  `tokenizer_dir`.
  """
  import hashlib
  import shutil

  from safetensors.numpy import save_file

  if config.get("model_type", "llama") not in ("llama", "mistral"):
    raise UserError(f"random weights are only made for LLaMA-style configs, not "
                    f"{config.get('model_type')!r}")
  config = {k: v for k, v in config.items() if k != "source_gguf"}
  key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
  out = os.path.join(assets.home(), "bench", f"{name}-{key}")
  done = os.path.join(out, ".complete")
  if os.path.exists(done):
    return out
  os.makedirs(out, exist_ok=True)
  c = config
  rng = np.random.default_rng(SEED)
  w = lambda *shape: (0.02 * rng.standard_normal(shape, dtype=np.float32))
  d, f = c["hidden_size"], c["intermediate_size"]
  heads = c["num_attention_heads"]
  hd = c.get("head_dim") or d // heads
  qd, kvd = heads * hd, c.get("num_key_value_heads", heads) * hd
  tensors = {"model.embed_tokens.weight": w(c["vocab_size"], d),
             "model.norm.weight": np.ones(d, np.float32)}
  if not c.get("tie_word_embeddings", False):
    tensors["lm_head.weight"] = w(c["vocab_size"], d)
  for i in range(c["num_hidden_layers"]):
    p = f"model.layers.{i}."
    tensors.update({
        p + "input_layernorm.weight": np.ones(d, np.float32),
        p + "post_attention_layernorm.weight": np.ones(d, np.float32),
        p + "self_attn.q_proj.weight": w(qd, d), p + "self_attn.k_proj.weight": w(kvd, d),
        p + "self_attn.v_proj.weight": w(kvd, d), p + "self_attn.o_proj.weight": w(d, qd),
        p + "mlp.gate_proj.weight": w(f, d), p + "mlp.up_proj.weight": w(f, d),
        p + "mlp.down_proj.weight": w(d, f)})
  with atomic_path(os.path.join(out, "model.safetensors")) as tmp:
    save_file(tensors, tmp, metadata={"format": "pt"})
  write_json(os.path.join(out, "config.json"), {**c, "random_weights": True})
  copied = 0
  for fname in TOKENIZER_FILES:
    src = os.path.join(tokenizer_dir, fname)
    if os.path.exists(src):
      shutil.copyfile(src, os.path.join(out, fname))
      copied += 1
  if not copied:
    raise UserError(f"{tokenizer_dir}: no tokenizer files ({', '.join(TOKENIZER_FILES)})")
  write_json(done, {"config": c, "tokenizer_from": tokenizer_dir})
  return out


def _save_smollm2_tokenizer(out: str) -> None:
  from transformers import AutoTokenizer

  gguf = assets.smollm2_gguf()
  tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
  tok.save_pretrained(out)


def read_json_file(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)
