"""A tiny random LLaMA and synthetic token sets: fast stand-ins for trainer tests.

Also runnable as a script (used by the crash/resume and multi-process tests):
  python tests/train/tiny.py WORKDIR [--config.train.max_steps=...] [--process_id=...]
"""
from __future__ import annotations

import os
import sys

import numpy as np

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
            num_kv_heads=2, head_dim=8, max_position_embeddings=256, tie_word_embeddings=True)


def tiny_model(seed: int = 0, **overrides):
  import jax

  from bigrec_jax.model import LlamaConfig, LoadedModel, init_params

  config = LlamaConfig(**{**TINY, **overrides})
  return LoadedModel(config, init_params(config, jax.random.key(seed)), None, "tiny-random")


def token_set(n: int, seed: int = 0, vocab: int = 96, min_len: int = 6, max_len: int = 30,
              prompt_len: int = 0):
  """n random sequences ending in EOS (2); the first `prompt_len` labels masked if asked."""
  from bigrec_jax.data.tokenize import IGNORE_INDEX, Tokenized

  rng = np.random.default_rng(seed)
  ids, labels = [], []
  for _ in range(n):
    length = int(rng.integers(min_len, max_len + 1))
    seq = [int(x) for x in rng.integers(3, vocab, length - 1)] + [2]
    ids.append(seq)
    labels.append([IGNORE_INDEX] * min(prompt_len, length) + seq[prompt_len:])
  return Tokenized.from_lists(ids, labels)


def tiny_train_config(**overrides):
  """configs/default.py shrunk for the tiny model; overrides are 'section.field' -> value."""
  from configs import default

  c = default.get_config()
  c.lora.dropout = 0.1
  c.train.learning_rate = 1e-2
  c.train.warmup_steps = 1
  c.train.micro_batch_size = 2
  c.train.batch_size = 8
  c.train.num_epochs = 3
  c.train.eval_batch_size = 4
  c.train.checkpoint_every_steps = 2
  c.data.bucket_multiple = 16
  c.mesh.shape = (-1, 1, 1)
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = value
  return c


def main(argv):
  """Script mode: train the tiny model on 40 synthetic rows into argv[1] (flags: --key=value)."""
  import jax

  workdir = argv[1]
  overrides, process = {}, {}
  for arg in argv[2:]:
    key, value = arg.lstrip("-").split("=", 1)
    if key.startswith("config."):
      overrides[key[len("config."):]] = type(_default(key))(value) if not isinstance(
          _default(key), tuple) else tuple(int(x) for x in value.split(","))
    else:
      process[key] = value
  if process.get("num_processes"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from bigrec_jax import parallel

    parallel.maybe_initialize_distributed(process["coordinator_address"],
                                          int(process["num_processes"]), int(process["process_id"]))
  from bigrec_jax.train import loop

  summary = loop.train(tiny_train_config(**overrides), workdir, model=tiny_model(),
                       train_data=token_set(40, seed=1), valid_data=token_set(12, seed=2))
  print("SUMMARY", summary["status"], summary["steps"], summary["best_val_loss"], flush=True)


def _default(key: str):
  section, field = key[len("config."):].split(".")
  return tiny_train_config()[section][field]


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  main(sys.argv)
