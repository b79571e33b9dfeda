"""The PyTorch reference side of the parity checks (bench/parity.py), in its own process:

    python -m bigrec_jax.bench.parity_torch --job JOB.json --out OUT.json

JAX and torch never share a process (as in the throughput bench): this module imports torch,
transformers and peft only inside its functions, and nothing of bigrec_jax that imports JAX.

- `train`: transformers `LlamaForCausalLM` (float32, from the same GGUF/HF checkpoint) +
  `PeftModel.from_pretrained(initial adapter, is_trainable=True)` (our initial LoRA exported to
  PEFT, dropout 0), torch `AdamW`, transformers `get_linear_schedule_with_warmup`, optional
  `clip_grad_norm_`; one optimizer step per given batch (the exact padded ids, mask and labels
  our step ran), the model's own loss (mean token CE over the labels). Writes the per-step
  losses, learning rates and gradient norms, and the final adapter (`save_pretrained`).
- `generate`: the trained adapter in transformers + peft, `generate(num_beams, num_return_sequences,
  prefix_allowed_tokens_fn=<walk of the catalog trie>, stopping_criteria=[closing quote])` over the
  exact prompt ids our search decoded (with history exclusion, each row walks its own trie: the
  catalog less that row's `excluded_sequences`); writes every returned sequence and
  `sequences_scores`.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import time
from typing import Any

import numpy as np


def _torch():
  return importlib.import_module("torch")


def load_hf_model(model_path: str, adapter: str | None = None, trainable: bool = False):
  """float32 LlamaForCausalLM from a .gguf file or an HF directory, with a PEFT adapter."""
  torch = _torch()
  from transformers import LlamaForCausalLM

  path, kw = model_path, {}
  if path.endswith(".gguf"):
    kw["gguf_file"] = os.path.basename(path)
    path = os.path.dirname(path)
  model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32, **kw)
  if adapter:
    peft = importlib.import_module("peft")  # test-only dependency, imported where it is used
    model = peft.PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
  return model


# ----------------------------------------------------------------------------- training


def train(job: dict[str, Any]) -> dict[str, Any]:
  torch = _torch()
  from transformers import get_linear_schedule_with_warmup

  torch.manual_seed(0)
  t0 = time.time()
  model = load_hf_model(job["model"], job["init_adapter"], trainable=True)
  model.train()  # the adapter's lora_dropout is 0: train mode changes nothing else in LLaMA
  params = [p for p in model.parameters() if p.requires_grad]
  o = job["optimizer"]
  opt = torch.optim.AdamW(params, lr=o["learning_rate"], betas=(o["b1"], o["b2"]), eps=o["eps"],
                          weight_decay=o["weight_decay"])
  sched = get_linear_schedule_with_warmup(opt, o["warmup_steps"], o["total_steps"])
  setup_s = time.time() - t0
  batches = np.load(job["batches"])
  losses, lrs, norms, step_s = [], [], [], []
  for s in range(job["steps"]):
    started = time.time()
    batch = {k: torch.from_numpy(batches[f"{k}_{s}"].astype(np.int64))
             for k in ("input_ids", "attention_mask", "labels")}
    loss = model(**batch).loss
    loss.backward()
    if o["max_grad_norm"] > 0:
      norm = torch.nn.utils.clip_grad_norm_(params, o["max_grad_norm"])
    else:
      norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad)
                                                   for p in params]))
    lrs.append(float(sched.get_last_lr()[0]))
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    losses.append(float(loss.detach()))
    norms.append(float(norm))
    step_s.append(time.time() - started)
    print(f"[parity torch] step {s + 1}/{job['steps']} loss {losses[-1]:.6f} "
          f"({step_s[-1]:.1f} s)", flush=True)
  model.save_pretrained(job["final_adapter"])
  return {"losses": losses, "learning_rates": lrs, "grad_norms": norms, "step_s": step_s,
          "setup_s": setup_s, "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- generation


class _Trie:
  """The catalog trie as {token: child} per node (node 0 the root), walked per beam."""

  def __init__(self, sequences):
    self.children: list[dict[int, int]] = [{}]
    for seq in sequences:
      node = 0
      for tok in seq:
        nxt = self.children[node].get(int(tok))
        if nxt is None:
          nxt = len(self.children)
          self.children[node][int(tok)] = nxt
          self.children.append({})
        node = nxt
    self._memo: dict[tuple, int] = {(): 0}

  def node(self, generated: tuple) -> int:
    """The node after `generated` tokens; -1 once they left the trie."""
    hit = self._memo.get(generated)
    if hit is None:
      parent = self.node(generated[:-1])
      hit = -1 if parent < 0 else self.children[parent].get(generated[-1], -1)
      self._memo[generated] = hit
    return hit


def generate(job: dict[str, Any]) -> dict[str, Any]:
  torch = _torch()
  from transformers import StoppingCriteria, StoppingCriteriaList

  t0 = time.time()
  model = load_hf_model(job["model"], job.get("adapter"))
  model.eval()
  setup_s = time.time() - t0
  g = job["search"]
  eos, pad = g["eos_token_id"], g["pad_token_id"]
  sequences = job["trie_sequences"]
  excluded = job.get("excluded_sequences") or []
  trie = _Trie(sequences) if g["constrained"] else None
  quote_counts = torch.tensor(job["quote_counts"], dtype=torch.long)

  class ClosingQuote(StoppingCriteria):
    """Per beam: its generated text holds its closing quote (the 2nd `"`), as if EOS came."""

    def __init__(self, prompt_len: int):
      self.prompt_len = prompt_len

    def __call__(self, input_ids, scores, **kwargs):
      counts = quote_counts[input_ids[:, self.prompt_len:]].sum(dim=1)
      return counts >= 2

  prompts = [list(map(int, p)) for p in job["prompts"]]
  size = int(job["batch_size"])
  out_tokens, out_scores, seconds = [], [], 0.0
  for start in range(0, len(prompts), size):
    chunk = prompts[start:start + size]
    width = max(len(p) for p in chunk)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], dtype=torch.long)
    tries = [trie] * len(chunk)
    if trie is not None and excluded:
      tries = [_Trie([s for k, s in enumerate(sequences) if k not in drop])
               for drop in (set(excluded[start + b]) for b in range(len(chunk)))]

    def allowed(batch_id, sent, width=width, tries=tries):
      row_trie = tries[batch_id]
      node = row_trie.node(tuple(sent[width:].tolist()))
      # A beam that left the trie is a -inf filler; PEFT/HF refuse an empty list, so give it EOS.
      return (list(row_trie.children[node]) if node >= 0 and row_trie.children[node]
              else [eos])

    kw = dict(prefix_allowed_tokens_fn=allowed) if trie is not None else {}
    if g["stop_at_closing_quote"]:
      kw["stopping_criteria"] = StoppingCriteriaList([ClosingQuote(width)])
    started = time.time()
    with torch.no_grad():
      out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                           num_beams=g["num_beams"], num_return_sequences=g["num_return_sequences"],
                           max_new_tokens=g["max_new_tokens"], length_penalty=g["length_penalty"],
                           early_stopping=g["early_stopping"], eos_token_id=eos, pad_token_id=pad,
                           return_dict_in_generate=True, output_scores=True, **kw)
    seconds += time.time() - started
    r = g["num_return_sequences"]
    seqs = out.sequences[:, width:].numpy()
    scores = out.sequences_scores.numpy()
    for b in range(len(chunk)):
      out_tokens.append([seqs[b * r + k].tolist() for k in range(r)])
      out_scores.append([float(scores[b * r + k]) for k in range(r)])
    print(f"[parity torch] generated {start + len(chunk)}/{len(prompts)} rows", flush=True)
  return {"tokens": out_tokens, "scores": out_scores, "generate_s": seconds, "setup_s": setup_s,
          "threads": torch.get_num_threads()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--job", required=True)
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  with open(args.job) as f:
    job = json.load(f)
  torch = _torch()
  if job.get("threads"):
    torch.set_num_threads(int(job["threads"]))
  result = {"train": train, "generate": generate}[job["task"]](job)
  from bigrec_jax.bench import measure

  result["versions"] = measure.package_versions(["torch", "transformers", "peft", "numpy"])
  tmp = args.out + ".tmp"
  with open(tmp, "w") as f:
    json.dump(result, f)
  os.replace(tmp, args.out)


if __name__ == "__main__":
  main()
