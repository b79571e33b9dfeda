"""The PyTorch reference side, as the original BIGRec code runs it; only ever imported inside the
torch worker subprocess (torch is a test-only dependency of bigrec_jax).

transformers LlamaForCausalLM from the same checkpoint (GGUF or HF dir), peft LoraConfig(r=8,
alpha=16, dropout 0.05, q_proj/v_proj) + torch AdamW (+ HF Trainer's grad-norm clipping and
linear schedule), HF `generate(num_beams=4, num_return_sequences=4)`, `hidden_states[-1][:, -1]`
embeddings, `torch.cdist` + argsort grounding. bfloat16 on GPU, float32 on CPU; with
`--dtype=bfloat16_matmul`, float32 weights under `torch.autocast(dtype=bfloat16)` (grounding
stays float32).
"""
from __future__ import annotations

import contextlib
import importlib
import os
from typing import Any

import numpy as np

from bigrec_jax.bench import measure, workloads
from bigrec_jax.bench.workloads import Case


def _torch():
  """torch, imported lazily (keeps `import torch` out of bigrec_jax's module level)."""
  return importlib.import_module("torch")


class TorchSide:
  name = "torch"

  def __init__(self, model_path: str, dtype: str):
    torch = _torch()
    torch.manual_seed(0)
    self.torch = torch
    self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    self.gpu = self.device.type == "cuda"
    storage, self.matmul_dtype = workloads.precision(dtype, self.gpu)
    self.dtype_name = storage if dtype == "auto" else dtype
    self.dtype = getattr(torch, storage)
    self.model_path = model_path
    self._model = None
    self._tokenizer = None

  # ------------------------------------------------------------------ plumbing
  def info(self) -> dict[str, Any]:
    torch = self.torch
    dev = {"platform": "gpu" if self.gpu else "cpu", "dtype": self.dtype_name, "name": "cpu",
           "threads": torch.get_num_threads()}
    if self.gpu:
      p = torch.cuda.get_device_properties(0)
      dev.update(name=p.name, memory_bytes=int(p.total_memory))
    return {"device": dev, "versions": measure.package_versions(
        ["torch", "transformers", "peft", "tokenizers", "numpy"])}

  def autocast(self):
    """The model's mixed precision: autocast to bfloat16 with bfloat16_matmul, else nothing."""
    if self.matmul_dtype is None:
      return contextlib.nullcontext()
    return self.torch.autocast(self.device.type, dtype=getattr(self.torch, self.matmul_dtype))

  def sync(self, x):
    if self.gpu:
      self.torch.cuda.synchronize()
    return x

  def reset_device_peak(self) -> None:
    if self.gpu:
      self.torch.cuda.reset_peak_memory_stats()

  def device_peak(self) -> int | None:
    return int(self.torch.cuda.max_memory_allocated()) if self.gpu else None

  def device_memory(self) -> int:
    if self.gpu:
      return int(self.torch.cuda.get_device_properties(0).total_memory)
    return measure.available_ram_bytes()

  def matmul_peak(self) -> dict[str, Any]:
    torch = self.torch
    n = 8192 if self.gpu else 2048
    a = torch.randn(n, n, device=self.device, dtype=self.dtype)
    b = torch.randn(n, n, device=self.device, dtype=self.dtype)

    def run():
      with self.autocast():
        return a @ b

    r = measure.timed(run, self.sync, repeats=5, budget_s=20)
    return {"n": n, "dtype": self.dtype_name, "flops_per_s": 2 * n ** 3 / r["median_s"]}

  def tokenizer(self):
    if self._tokenizer is None:
      from transformers import AutoTokenizer

      path = self.model_path
      kw = {}
      if path.endswith(".gguf"):
        kw["gguf_file"] = os.path.basename(path)
        path = os.path.dirname(path)
      tok = AutoTokenizer.from_pretrained(path, **kw)
      tok.padding_side = "left"
      tok.pad_token = tok.convert_ids_to_tokens(0)  # the reference pads with id 0
      self._tokenizer = tok
    return self._tokenizer

  def model(self):
    if self._model is None:
      from transformers import LlamaForCausalLM

      path, kw = self.model_path, {}
      if path.endswith(".gguf"):
        kw["gguf_file"] = os.path.basename(path)
        path = os.path.dirname(path)
      m = LlamaForCausalLM.from_pretrained(path, dtype=self.dtype, **kw)
      self._model = m.to(self.device).eval()
    return self._model

  def model_config(self) -> dict[str, Any]:
    return self.model().config.to_dict()

  # ------------------------------------------------------------------ tasks
  def run_case(self, case: Case, inputs: dict[str, Any], repeats: int, budget_s: float):
    return getattr(self, f"_{case.task}")(case.params, inputs, repeats, budget_s)

  def _train(self, p, inputs, repeats, budget_s):
    torch = self.torch
    peft = importlib.import_module("peft")  # test-only dependency, like torch
    LoraConfig, get_peft_model = peft.LoraConfig, peft.get_peft_model

    batch = {k: torch.from_numpy(v.astype(np.int64)).to(self.device)
             for k, v in workloads.train_batch(self.tokenizer(), p, inputs)[0].items()}
    if p.get("mode") == "full":
      return self._train_full(p, batch, repeats, budget_s)
    lcfg = LoraConfig(r=p["rank"], lora_alpha=p["alpha"], lora_dropout=p["dropout"],
                      target_modules=list(p["targets"]), bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(self.model(), lcfg)
    model.train()
    trainable = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=p["lr"])

    def restore():
      model.train(False)
      self._model = model.unload()  # back to the plain base model for later tasks

    return self._timed_train_steps(model, trainable, opt, batch, repeats, budget_s, restore)

  def _train_full(self, p, batch, repeats, budget_s):
    """Full fine-tuning: every weight in AdamW (no weight decay, as the JAX side), on a copy of
    the model so that later tasks still run the base weights."""
    import copy

    torch = self.torch
    model = copy.deepcopy(self.model())
    model.train()
    params = list(model.parameters())
    for q in params:  # the shared model is loaded frozen (inference tasks)
      q.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=p["lr"], weight_decay=0.0)
    return self._timed_train_steps(model, params, opt, batch, repeats, budget_s, lambda: None)

  def _timed_train_steps(self, model, params, opt, batch, repeats, budget_s, cleanup):
    """HF Trainer's step (loss, backward, clip at 1.0, AdamW, 20-step warm-up), timed: the
    model's own loss over the batch's labels (-100 ignored), as the reference trains."""
    torch = self.torch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))

    def step():
      with self.autocast():
        loss = model(**batch).loss
      loss.backward()
      torch.nn.utils.clip_grad_norm_(params, 1.0)  # HF Trainer's max_grad_norm
      opt.step()
      sched.step()
      opt.zero_grad(set_to_none=True)
      return loss.detach()

    try:
      r = measure.timed(step, lambda x: float(x), repeats=repeats, budget_s=budget_s)
    finally:
      cleanup()
    numpy_batch = {k: v.cpu().numpy() for k, v in batch.items()}
    return r, *workloads.train_result(r, numpy_batch)

  def _beam(self, p, inputs, repeats, budget_s):
    torch = self.torch
    tok = self.tokenizer()
    enc = tok(inputs["prompts"], return_tensors="pt", padding=True).to(self.device)
    model = self.model()
    new = p["new_tokens"]

    def run():
      with torch.no_grad(), self.autocast():
        # min_new_tokens=max_new_tokens: every run decodes exactly `new` tokens (no early EOS),
        # the same work on both sides whatever an untrained model predicts.
        return model.generate(**enc, num_beams=p["beams"], num_return_sequences=p["returned"],
                              max_new_tokens=new, min_new_tokens=new, do_sample=False,
                              pad_token_id=0, eos_token_id=tok.eos_token_id)

    r = measure.timed(run, self.sync, repeats=repeats, budget_s=budget_s)
    out = r["last_output"]
    generated = int(out.shape[1] - enc["input_ids"].shape[1])
    b = p["batch"]
    best = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return r, {"prompts_per_s": b / r["median_s"], "new_tokens_per_s": b * generated / r["median_s"]}, {
        "prompt_len": int(enc["input_ids"].shape[1]), "generated": generated,
        "best_of_first": best[:80]}

  def _embed(self, p, inputs, repeats, budget_s):
    torch = self.torch
    tok = self.tokenizer()
    model = self.model()
    titles = inputs["titles"]
    bs = p["batch"]
    padded, real = [0], [0]

    def run():
      out = []
      padded[0] = real[0] = 0
      with torch.no_grad(), self.autocast():
        for i in range(0, len(titles), bs):
          enc = tok(titles[i:i + bs], return_tensors="pt", padding=True).to(self.device)
          padded[0] += int(enc["input_ids"].numel())
          real[0] += int(enc["attention_mask"].sum())
          h = model(**enc, output_hidden_states=True).hidden_states[-1][:, -1, :]
          out.append(h.detach().float().cpu())
      return torch.cat(out)

    r = measure.timed(run, self.sync, repeats=repeats, budget_s=budget_s)
    return r, {"texts_per_s": len(titles) / r["median_s"]}, {
        "tokens": real[0], "padded_tokens": padded[0], "dim": int(r["last_output"].shape[1])}

  def _ground(self, p, inputs, repeats, budget_s):
    torch = self.torch
    need = workloads.ground_bytes(p)["torch_device" if self.gpu else "torch_host"]
    have = self.device_memory()
    if need > 0.85 * have:
      return None, None, {"skipped": (
          f"torch.cdist + argsort needs about {need / 2**30:.1f} GiB ({p['queries']} x "
          f"{p['items']} float32 distances and two int64 argsorts) but the "
          f"{'GPU' if self.gpu else 'host'} has {have / 2**30:.1f} GiB available")}
    queries, items, targets = workloads.ground_arrays(p)
    e = torch.from_numpy(items).to(self.device)
    del items
    k = p["k"]

    def run():
      # Host queries/targets in, host top-K and ranks out, as bigrec_jax's ground() takes them;
      # the catalog table is placed once beforehand on both sides.
      q = torch.from_numpy(queries).to(self.device)
      t = torch.from_numpy(targets.astype(np.int64)).to(self.device)
      # The original evaluate.py: cdist, then argsort().argsort() gives every item's rank.
      dist = torch.cdist(q, e, p=2)
      order = dist.argsort(dim=-1)
      top = order[:, :k].cpu()
      ranks = order.argsort(dim=-1).gather(1, t[:, None])[:, 0].cpu()
      return top, ranks

    r = measure.timed(run, self.sync, repeats=repeats, budget_s=budget_s)
    top, ranks = r["last_output"]
    return r, {"queries_per_s": p["queries"] / r["median_s"]}, {
        "top1_first": int(top[0, 0]), "median_target_rank": float(np.median(ranks.numpy()))}
