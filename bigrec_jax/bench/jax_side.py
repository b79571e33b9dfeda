"""The JAX side of the benchmark: the project's own train step, beam search, text embedding and
grounding kernel, run in the JAX worker subprocess (bfloat16 on GPU/TPU, float32 on CPU, or
float32 with bfloat16 matmul operands: `--dtype=bfloat16_matmul`).
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from bigrec_jax.bench import measure, workloads
from bigrec_jax.bench.workloads import Case


class JaxSide:
  name = "jax"

  def __init__(self, model_path: str, dtype: str):
    from bigrec_jax.model import load_model

    self.backend = jax.default_backend()
    self.accelerated = self.backend != "cpu"
    storage, self.matmul_dtype = workloads.precision(dtype, self.accelerated)
    self.dtype_name = storage if dtype == "auto" else dtype
    self.model = load_model(model_path, dtype=storage, param_dtype=storage,
                            matmul_dtype=self.matmul_dtype or "")

  # ------------------------------------------------------------------ plumbing
  def info(self) -> dict[str, Any]:
    d = jax.local_devices()[0]
    dev = {"platform": "gpu" if self.backend in ("gpu", "cuda", "rocm") else self.backend,
           "dtype": self.dtype_name, "name": d.device_kind, "count": jax.local_device_count()}
    stats = _memory_stats()
    if stats and "bytes_limit" in stats:
      dev["memory_bytes"] = int(stats["bytes_limit"])
    return {"device": dev, "versions": measure.package_versions(
        ["jax", "jaxlib", "flax", "optax", "transformers", "tokenizers", "numpy"])}

  def sync(self, x):
    return jax.block_until_ready(x)

  def reset_device_peak(self) -> None:
    pass  # XLA's allocator peak cannot be reset: the runner isolates big cases in processes

  def device_peak(self) -> int | None:
    stats = _memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None

  def device_memory(self) -> int:
    stats = _memory_stats()
    if self.accelerated and stats and "bytes_limit" in stats:
      return int(stats["bytes_limit"])
    return measure.available_ram_bytes()

  def matmul_peak(self) -> dict[str, Any]:
    from bigrec_jax.model.layers import matmul

    n = 8192 if self.accelerated else 2048
    dt = self.model.config.compute_dtype
    a = jax.random.normal(jax.random.key(0), (n, n), dt)
    b = jax.random.normal(jax.random.key(1), (n, n), dt)
    # The model's own product (with bfloat16_matmul: bfloat16 operands, float32 accumulation).
    mm = jax.jit(lambda x, y: matmul(x, y, self.matmul_dtype))
    r = measure.timed(lambda: mm(a, b), self.sync, repeats=5, budget_s=20)
    return {"n": n, "dtype": self.dtype_name, "flops_per_s": 2 * n ** 3 / r["median_s"]}

  def model_config(self) -> dict[str, Any]:
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(self.model.config).items()
            if isinstance(v, (int, float, str, bool)) or v is None}

  # ------------------------------------------------------------------ tasks
  def run_case(self, case: Case, inputs: dict[str, Any], repeats: int, budget_s: float):
    return getattr(self, f"_{case.task}")(case.params, inputs, repeats, budget_s)

  def _train(self, p, inputs, repeats, budget_s):
    from bigrec_jax.bench import jax_tasks

    batch, window, prefix = workloads.train_batch(self.model.tokenizer, p, inputs)
    step, state, impl = jax_tasks.train_step(self.model, p, batch, label_window=window,
                                             prefix_len=prefix)
    holder = {"state": state}

    def run():
      holder["state"], loss = step(holder["state"])
      return loss

    r = measure.timed(run, lambda x: float(x), repeats=repeats, budget_s=budget_s)
    return r, *workloads.train_result(r, batch, impl=impl)

  def _beam(self, p, inputs, repeats, budget_s):
    from bigrec_jax.bench import jax_tasks

    run, impl = jax_tasks.beam_search(self.model, p, inputs["prompts"])
    r = measure.timed(run, self.sync, repeats=repeats, budget_s=budget_s)
    b = p["batch"]
    out = r["last_output"]
    prompt_len = max(len(x) for x in self.model.tokenizer(list(inputs["prompts"]))["input_ids"])
    return r, {"prompts_per_s": b / r["median_s"],
               "new_tokens_per_s": b * p["new_tokens"] / r["median_s"]}, {
        "impl": impl, "generated": p["new_tokens"], "prompt_len": prompt_len,
        **jax_tasks.beam_summary(self.model, out)}

  def _embed(self, p, inputs, repeats, budget_s):
    from bigrec_jax.bench import jax_tasks

    run, impl = jax_tasks.embed_texts(self.model, p, inputs["titles"])
    r = measure.timed(run, self.sync, repeats=repeats, budget_s=budget_s)
    emb = np.asarray(r["last_output"])
    extra = {"impl": impl, "dim": int(emb.shape[1])}
    if hasattr(run, "padded_tokens"):
      extra["padded_tokens"] = int(run.padded_tokens[0])
      extra["tokens"] = int(run.tokens[0])
    return r, {"texts_per_s": len(inputs["titles"]) / r["median_s"]}, extra

  def _ground(self, p, inputs, repeats, budget_s):
    from bigrec_jax.ground import kernel

    need = workloads.ground_bytes(p)
    host, dev = need["jax_host"], need["jax_device"]
    have_host = measure.available_ram_bytes()
    if host > 0.85 * have_host or (self.accelerated and dev > 0.9 * self.device_memory()):
      return None, None, {"skipped": (
          f"the {p['items']} x {p['dim']} float32 item table needs about {host / 2**30:.1f} GiB "
          f"of host memory while being placed (numpy + padded copy + device copy) and "
          f"{dev / 2**30:.1f} GiB on the device; available: {have_host / 2**30:.1f} GiB host"
          + (f", {self.device_memory() / 2**30:.1f} GiB device" if self.accelerated else ""))}
    queries, items, targets = workloads.ground_arrays(p)
    table = kernel.place_items(items, np.zeros(items.shape[0], np.float32))
    del items

    def run():
      return kernel.ground(queries, table, k=p["k"], targets=targets)

    r = measure.timed(run, lambda x: x, repeats=repeats, budget_s=budget_s)
    g = r["last_output"]
    return r, {"queries_per_s": p["queries"] / r["median_s"]}, {
        "top1_first": int(g.top_ids[0, 0]), "median_target_rank": float(np.median(g.target_ranks))}


def _memory_stats() -> dict[str, Any] | None:
  try:
    return jax.local_devices()[0].memory_stats()
  except Exception:  # CPU backends may not implement it
    return None
