"""A tiny random LLaMA and synthetic token sets: fast stand-ins for trainer tests.

Also runnable as a script (used by the crash/resume and multi-process tests):
  python tests/train/train_tiny.py WORKDIR [--config.train.max_steps=...] [--process_id=...]
"""
from __future__ import annotations

import json
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
  c.data.bucket_multiple = 32  # every synthetic row fits one bucket: one compiled step
  c.mesh.shape = (-1, 1, 1)
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = value
  return c


def _parse(key: str, text: str):
  default = tiny_train_config()
  section, field = key.split(".")
  value = default[section][field]
  if isinstance(value, bool):
    return text.lower() in ("1", "true", "yes")
  if isinstance(value, tuple):
    return tuple(int(x) for x in text.split(","))
  return type(value)(text)


def main(argv):
  """Script mode: train the tiny model on 40 synthetic rows into argv[1].

  Flags: --config.section.field=value, --step_delay=seconds (slows each step so a test can
  signal the process mid-run), --nan_at_step=N (the N-th step of this process sees NaN
  weights), --coordinator_address/--num_processes/--process_id.
  """
  import time

  import jax

  workdir = argv[1]
  overrides, flags = {}, {}
  for arg in argv[2:]:
    key, value = arg.lstrip("-").split("=", 1)
    if key.startswith("config."):
      overrides[key[len("config."):]] = _parse(key[len("config."):], value)
    else:
      flags[key] = value
  if flags.get("num_processes"):
    from bigrec_jax import parallel

    parallel.maybe_initialize_distributed(flags["coordinator_address"],
                                          int(flags["num_processes"]), int(flags["process_id"]))
  from bigrec_jax.train import loop, step as step_lib

  delay = float(flags.get("step_delay", 0))
  nan_at = int(flags.get("nan_at_step", 0))
  if delay or nan_at:
    make = step_lib.make_train_step

    def wrapped_make(*args, **kwargs):
      fn = make(*args, **kwargs)
      calls = [0]

      def wrapped(state, params, batch):
        calls[0] += 1
        if calls[0] == nan_at:  # same program, poisoned weights: a NaN loss at this step
          if params is None:  # full fine-tuning: the weights are the state's
            w = state.trainable
            state = state.replace(trainable={**w, "embed": w["embed"] * float("nan")})
          else:
            params = {**params, "embed": params["embed"] * float("nan")}
        out = fn(state, params, batch)
        jax.block_until_ready(out)
        time.sleep(delay)
        return out

      return wrapped

    step_lib.make_train_step = wrapped_make
  from bigrec_jax import cli
  from bigrec_jax.files import UserError

  try:
    summary = loop.train(tiny_train_config(**overrides), workdir, model=tiny_model(),
                         train_data=token_set(40, seed=1), valid_data=token_set(12, seed=2))
  except UserError as e:  # as launch/train.py does through cli.run
    cli.fail(str(e))
  print("SUMMARY", json.dumps(summary), flush=True)


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  main(sys.argv)
