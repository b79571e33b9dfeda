"""Run in a subprocess with 8 fake CPU devices: the same training on several meshes.

Writes a JSON of per-mesh losses and final LoRA leaves (as lists) to argv[1]; with argv[2] ==
"real" it also runs one step of the real SmolLM2 on a (data=2, fsdp=2, tensor=2) mesh.
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
from bigrec_jax.model import LoraConfig  # noqa: E402
from bigrec_jax.train import optimizer as opt_lib, step as step_lib  # noqa: E402
from train_tiny import tiny_model, token_set  # noqa: E402

GLOBAL_ROWS = 8


def run(model, mesh, lc, batches, lr=1e-2):
  """Steps on global [rows, T] batches, one micro-batch of all rows per step (accumulation 1)."""
  opt, _ = opt_lib.make_optimizer(lr, 10, warmup_steps=1)
  step = step_lib.make_train_step(model.config, lc, opt, mesh)
  state = step_lib.init_state(model.config, lc, opt, 0, mesh)
  params = jax.device_put(model.params, step_lib.param_shardings(model.config, mesh))
  losses = []
  for b in batches:
    # Each process of this single-process run owns all rows: [rows, 1, T].
    batch = parallel.global_batch_from_local({k: v[:, None] for k, v in b.items()}, mesh)
    state, m = step(state, params, batch)
    losses.append(float(m["loss"]))
  return losses, [np.asarray(x).tolist() for x in jax.tree.leaves(jax.device_get(state.lora))]


def main(out_path: str, with_real: bool) -> None:
  assert jax.device_count() == 8
  model = tiny_model(seed=5)
  lc = LoraConfig(dropout=0.1)
  data = token_set(3 * GLOBAL_ROWS, seed=7, prompt_len=4)
  batches = [pad_examples(data, range(i * GLOBAL_ROWS, (i + 1) * GLOBAL_ROWS), 32)
             for i in range(3)]
  result = {}
  meshes = {"1": parallel.make_mesh((1, 1, 1), devices=jax.devices()[:1]),
            "2,2,2": parallel.make_mesh((2, 2, 2)), "8,1,1": parallel.make_mesh((8, 1, 1))}
  for name, mesh in meshes.items():
    result[name] = run(model, mesh, lc, batches)
  if with_real:
    from bigrec_jax.model import load_model

    mesh = meshes["2,2,2"]
    real = load_model(mesh=mesh)
    tok = real.tokenizer
    text = "Below is an instruction that describes a task. ### Response:\n\"Toy Story\""
    ids = tok(text)["input_ids"][-31:] + [tok.eos_token_id]
    ids = np.asarray([ids] * 4, np.int32)  # 4 rows: one per data-parallel replica
    b = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids}
    losses, _ = run(real, mesh, LoraConfig(), [b], lr=1e-4)
    # With B = 0 the first step's loss is the base model's; compare against one device.
    one = meshes["1"]
    params_one = jax.device_put(real.params, step_lib.param_shardings(real.config, one))
    evaluate = step_lib.make_eval_step(real.config, LoraConfig(), one)
    lora = jax.device_put(step_lib.init_state(real.config, LoraConfig(), opt_lib.make_optimizer(
        1e-4, 10)[0], 0, one).lora)
    out = evaluate(params_one, lora, parallel.global_batch_from_local(b, one))
    result["real"] = {"mesh_loss": losses[0],
                      "one_device_loss": float(out["ce_sum"] / out["label_tokens"]),
                      "embed_sharding": str(real.params["embed"].sharding.spec)}
  with open(out_path, "w") as f:
    json.dump(result, f)


if __name__ == "__main__":
  main(sys.argv[1], len(sys.argv) > 2 and sys.argv[2] == "real")
