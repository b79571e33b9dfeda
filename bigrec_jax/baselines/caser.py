"""Caser (Tang & Wang 2018): horizontal and vertical convolutions over the history "image".

The history embeddings form an L x d image; horizontal filters of every height 1..L catch
union-level patterns (max-pooled over time), vertical filters weight the positions. No user
embedding: the baselines see only the history ids, like the LLM.

All L horizontal convolutions are one einsum over a [offset, d, height, filter] kernel whose
offsets >= height are masked to zero: the same function as L separate convolutions, but one op
for XLA to compile instead of L (compilation, not arithmetic, dominates on a small CPU).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


def horizontal_features(e: jnp.ndarray, kernel: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
  """Max-pooled relu(conv) for every filter height: e [B, L, d] -> [B, L (height-1), filters].

  kernel [L (offset), d, L (height-1), filters]; a filter of height h uses offsets 0..h-1 and is
  applied at every start t with t + h <= L ('VALID' convolution), then max-pooled over t.
  """
  length = e.shape[1]
  # windows[b, t, j] = e[b, t + j] (zero past the end): the rows a filter starting at t sees.
  padded = jnp.concatenate([e, jnp.zeros_like(e)], axis=1)
  windows = jnp.stack([padded[:, j:j + length] for j in range(length)], axis=2)  # [B, L, L, d]
  offsets, heights = jnp.arange(length)[:, None], jnp.arange(length)[None, :]
  kernel = kernel * (offsets <= heights)[:, None, :, None]  # height h+1 uses offsets 0..h
  conv = nn.relu(jnp.einsum("btjd,jdhf->bthf", windows, kernel) + bias)  # [B, t, h, f]
  fits = (offsets + heights <= length - 1)[None, :, :, None]  # height h+1 fits at start t
  return jnp.where(fits, conv, 0.0).max(axis=1)  # relu >= 0, so 0 never beats a real value


class Caser(nn.Module):
  num_items: int
  max_len: int
  embed_dim: int = 64
  horizontal: int = 16  # filters per height
  vertical: int = 4
  dropout: float = 0.3

  @nn.compact
  def __call__(self, history: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
    """history: int [B, L] left-padded with num_items -> logits [B, num_items]."""
    valid = history != self.num_items
    e = nn.Embed(self.num_items + 1, self.embed_dim, name="item_embed")(history)
    e = e * valid[..., None]  # [B, L, d]
    batch, length, d = e.shape
    kernel = self.param("horizontal_kernel", nn.initializers.lecun_normal(in_axis=(0, 1),
                                                                           out_axis=(2, 3)),
                        (length, d, length, self.horizontal))  # [offset, d, height-1, filter]
    bias = self.param("horizontal_bias", nn.initializers.zeros, (length, self.horizontal))
    horizontal = horizontal_features(e, kernel, bias).reshape(batch, -1)
    w_v = self.param("vertical", nn.initializers.lecun_normal(), (length, self.vertical))
    vertical = jnp.einsum("bld,lv->bvd", e, w_v).reshape(batch, -1)
    z = jnp.concatenate([horizontal, vertical], axis=-1)
    z = nn.Dropout(self.dropout, deterministic=not train)(z)
    z = nn.relu(nn.Dense(self.embed_dim, name="fc")(z))
    return nn.Dense(self.num_items, name="output")(z)
