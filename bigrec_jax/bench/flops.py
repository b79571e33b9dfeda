"""Analytic model FLOPs per measured call (matmuls only), for the MFU-style column of --flops.

Conventions (stated in bench.json): attention is counted as computed, the full T x T score and
value products per sequence (both sides mask rather than skip); the frozen base gets no weight
gradients, so a LoRA training step is forward + input-gradient backward (2x the linear layers,
3x attention) plus the adapters' forward and both backward products; a full fine-tuning step
(case params mode=full) is 3x the linear layers and the head, 3x attention. Embedding counts the
real (unpadded) title tokens through the decoder blocks (no output head; titles are short, so
attention is left out). Grounding counts the distance matmul 2*Q*N*D (float32, though the
matmul peak is measured in the compute dtype: bfloat16 on GPU).
"""
from __future__ import annotations

from typing import Any


def _dims(c: dict[str, Any]) -> dict[str, int]:
  """Model dims from either side's config dict (ours or transformers')."""
  get = lambda *keys: next(c[k] for k in keys if c.get(k) is not None)
  heads = get("num_heads", "num_attention_heads")
  d = get("hidden_size")
  return {"L": get("num_layers", "num_hidden_layers"), "d": d, "H": heads,
          "KVH": get("num_kv_heads", "num_key_value_heads"), "hd": c.get("head_dim") or d // heads,
          "f": get("intermediate_size"), "V": get("vocab_size")}


def linear_per_token(c: dict[str, Any]) -> int:
  """FLOPs of one token through every decoder block's projections (no attention, no head)."""
  m = _dims(c)
  d, hq, hkv = m["d"], m["H"] * m["hd"], m["KVH"] * m["hd"]
  return m["L"] * 2 * (d * hq + 2 * d * hkv + hq * d + 3 * d * m["f"])


def head_per_token(c: dict[str, Any]) -> int:
  m = _dims(c)
  return 2 * m["d"] * m["V"]


def attention(c: dict[str, Any], queries: int, context: int) -> int:
  """Scores + weighted values for `queries` query positions against `context` keys, all layers."""
  m = _dims(c)
  return m["L"] * 4 * m["H"] * m["hd"] * queries * context


def lora_per_token(c: dict[str, Any], rank: int, targets) -> int:
  m = _dims(c)
  d, hq, hkv, f = m["d"], m["H"] * m["hd"], m["KVH"] * m["hd"], m["f"]
  dims = {"q_proj": (d, hq), "k_proj": (d, hkv), "v_proj": (d, hkv), "o_proj": (hq, d),
          "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}
  return m["L"] * sum(2 * rank * (dims[t][0] + dims[t][1]) for t in targets)


def case_flops(task: str, p: dict[str, Any], c: dict[str, Any], extra: dict[str, Any]) -> int | None:
  """Model FLOPs of one timed call of a case (None where the shape is not known). Training counts
  the reference's work over the whole padded batch (the demo case: JAX does less, the output
  projection on the label window and the shared prefix once)."""
  if task == "train":
    b, t = p["batch"], p.get("length") or extra.get("length")
    if t is None:
      return None
    fwd_lin = b * t * (linear_per_token(c) + head_per_token(c))
    att = b * attention(c, t, t)
    if p.get("mode") == "full":  # the backward also forms every weight's gradient
      return 3 * fwd_lin + 3 * att
    lora = b * t * lora_per_token(c, p["rank"], p["targets"])
    return 2 * fwd_lin + 3 * att + 3 * lora
  if task == "beam":
    tp = extra.get("prompt_len")
    if tp is None:
      return None
    b, k, n = p["batch"], p["beams"], p["new_tokens"]
    prefill = b * tp * linear_per_token(c) + b * attention(c, tp, tp) + b * head_per_token(c)
    steps = sum(b * k * (linear_per_token(c) + head_per_token(c)) + b * k * attention(c, 1, tp + i)
                for i in range(1, n))
    return prefill + steps
  if task == "embed":  # real (unpadded) tokens: the same useful work for both sides
    tokens = extra.get("tokens", extra.get("padded_tokens"))
    return None if tokens is None else tokens * linear_per_token(c)
  if task == "ground":
    return 2 * p["queries"] * p["items"] * p["dim"]
  return None
