"""SASRec (Kang & McAuley 2018): causal self-attention over the item-id history.

The user state is the output at the last (most recent) position; items are scored against the
same embedding table that reads the history (tied), plus a per-item bias.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class SASRecBlock(nn.Module):
  hidden: int
  heads: int
  dropout: float

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray, *, train: bool,
               last_only: bool = False) -> jnp.ndarray:
    """last_only: compute only the last position's output (all the loss needs)."""
    y = nn.LayerNorm()(x)
    q = y[:, -1:] if last_only else y
    if last_only:
      x, mask = x[:, -1:], mask[:, :, -1:]
    y = nn.MultiHeadDotProductAttention(num_heads=self.heads, dropout_rate=self.dropout,
                                        deterministic=not train)(q, y, mask=mask)
    x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.LayerNorm()(x)
    y = nn.Dense(self.hidden)(nn.gelu(nn.Dense(self.hidden)(y)))
    return x + nn.Dropout(self.dropout, deterministic=not train)(y)


class SASRec(nn.Module):
  num_items: int
  max_len: int
  hidden: int = 64
  blocks: int = 2
  heads: int = 1
  dropout: float = 0.2

  @nn.compact
  def __call__(self, history: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
    """history: int [B, L] left-padded with num_items -> logits [B, num_items]."""
    embed = nn.Embed(self.num_items + 1, self.hidden, name="item_embed",
                     embedding_init=nn.initializers.normal(0.02))
    valid = history != self.num_items
    positions = jnp.arange(history.shape[1])[None, :]
    x = embed(history) * jnp.sqrt(float(self.hidden))
    x = x + nn.Embed(self.max_len, self.hidden, name="pos_embed",
                     embedding_init=nn.initializers.normal(0.02))(positions)
    x = nn.Dropout(self.dropout, deterministic=not train)(x) * valid[..., None]
    causal = positions[:, :, None] >= positions[:, None, :]  # [1, L(query), L(key)]
    mask = (causal & valid[:, None, :])[:, None]  # [B, 1, L, L]
    for i in range(self.blocks):
      last = i == self.blocks - 1
      x = SASRecBlock(self.hidden, self.heads, self.dropout, name=f"block_{i}")(
          x, mask, train=train, last_only=last)
      if not last:
        x = x * valid[..., None]
    user = nn.LayerNorm(name="final_norm")(x[:, -1])
    bias = self.param("item_bias", nn.initializers.zeros, (self.num_items,))
    return user @ embed.embedding[: self.num_items].T + bias
