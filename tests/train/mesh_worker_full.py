"""Run in a subprocess with 8 fake CPU devices: full fine-tuning on several meshes.

Writes a JSON of per-mesh losses and final weights (as lists) to argv[1]. Meshes: one device,
(data, fsdp, tensor) = (2, 4, 1) and (1, 2, 4): the weights and AdamW moments are sharded over
fsdp (and tensor), the batch over data x fsdp. With argv[2] == "real" it also runs one step of
the real SmolLM2 on one device and on (2, 4, 1).
"""
from __future__ import annotations

import json
import os
import sys

os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=8 "
                           + os.environ.get("XLA_FLAGS", ""))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bigrec_jax import parallel  # noqa: E402
from bigrec_jax.data.tokenize import pad_examples  # noqa: E402
from bigrec_jax.train import optimizer as opt_lib, step as step_lib  # noqa: E402
from train_tiny import tiny_model, token_set  # noqa: E402

GLOBAL_ROWS = 8
MESHES = {"2,4,1": (2, 4, 1), "1,2,4": (1, 2, 4)}


def run(model, mesh, batches, lr=1e-2, warmup=1):
  """Full fine-tuning steps on global [rows, T] batches (accumulation 1): losses, weights and
  the sharding spec of the embedding's Adam moment."""
  opt, _ = opt_lib.make_optimizer(lr, 10, warmup_steps=warmup, weight_decay=0.01,
                                  decay_mask=opt_lib.hf_decay_mask)
  step = step_lib.make_train_step(model.config, None, opt, mesh)
  params = jax.device_put(model.params, step_lib.param_shardings(model.config, mesh))
  state = step_lib.init_state(model.config, None, opt, 0, mesh, params=params)
  losses = []
  for b in batches:
    batch = parallel.global_batch_from_local({k: v[:, None] for k, v in b.items()}, mesh)
    state, m = step(state, None, batch)
    losses.append(float(m["loss"]))
  mu = state.opt_state[0].mu["embed"]
  return {"losses": losses, "embed_mu_spec": str(mu.sharding.spec),
          "q_spec": str(state.trainable["layers"]["q_proj"]["kernel"].sharding.spec),
          "weights": [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.trainable))]}


def main(out_path: str, with_real: bool) -> None:
  assert jax.device_count() == 8
  model = tiny_model(seed=5)
  data = token_set(3 * GLOBAL_ROWS, seed=7, prompt_len=4)
  batches = [pad_examples(data, range(i * GLOBAL_ROWS, (i + 1) * GLOBAL_ROWS), 32)
             for i in range(3)]
  one = parallel.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  result = {"1": run(model, one, batches)}
  for name, shape in MESHES.items():
    result[name] = run(model, parallel.make_mesh(shape), batches)
  for r in result.values():
    r["weights"] = [w.tolist() for w in r["weights"]]
  if with_real:
    from bigrec_jax.model import load_model

    real = load_model()
    tok = real.tokenizer
    text = "Below is an instruction that describes a task. ### Response:\n\"Toy Story\""
    ids = tok(text)["input_ids"][-31:] + [tok.eos_token_id]
    ids = np.asarray([ids] * 8, np.int32)  # one row per data-parallel replica of (2, 4, 1)
    b = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids}
    # No warm-up: HF's schedule gives a warmed-up run's first update the rate 0.
    single = run(real, one, [b], lr=1e-4, warmup=0)
    sharded = run(real, parallel.make_mesh((2, 4, 1)), [b], lr=1e-4, warmup=0)
    before = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(real.params))]
    # Per leaf: the largest difference between the two meshes' updated weights, and the
    # largest update (the weights themselves would be 540 MB of JSON).
    result["real"] = {
        "losses": [single["losses"][0], sharded["losses"][0]],
        "max_diff": [float(np.abs(a - c).max()) for a, c in zip(single["weights"],
                                                                sharded["weights"])],
        # Share of entries off by more than float32 rounding + 1% of lr (Adam's first step
        # turns gradient rounding into up to 2 lr where |g| is near eps; test_train_full).
        "share_off": [float(np.mean(np.abs(a - c) > 1e-6 + 1e-6)) for a, c in zip(
            single["weights"], sharded["weights"])],
        "max_update": [float(np.abs(a - w).max()) for a, w in zip(single["weights"], before)],
        "embed_mu_spec": sharded["embed_mu_spec"]}
  with open(out_path, "w") as f:
    json.dump(result, f)


if __name__ == "__main__":
  main(sys.argv[1], len(sys.argv) > 2 and sys.argv[2] == "real")
