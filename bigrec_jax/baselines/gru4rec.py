"""GRU4Rec (Hidasi et al. 2016) for next-item prediction from a fixed-length history.

Padding steps leave the GRU state untouched, so left-padded short histories (the game rule)
read the same as unpadded ones.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class _MaskedGRU(nn.Module):
  hidden: int

  @nn.compact
  def __call__(self, carry: jnp.ndarray, inputs):
    x, keep = inputs
    new, _ = nn.GRUCell(self.hidden, name="cell")(carry, x)
    carry = jnp.where(keep[:, None], new, carry)
    return carry, None


class GRU4Rec(nn.Module):
  num_items: int
  max_len: int
  embed_dim: int = 64
  hidden: int = 128
  dropout: float = 0.2

  @nn.compact
  def __call__(self, history: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
    """history: int [B, L] left-padded with num_items -> logits [B, num_items]."""
    valid = history != self.num_items
    x = nn.Embed(self.num_items + 1, self.embed_dim, name="item_embed")(history)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    scan = nn.scan(_MaskedGRU, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=1, out_axes=1)
    carry = jnp.zeros((history.shape[0], self.hidden), x.dtype)
    state, _ = scan(self.hidden, name="gru")(carry, (x, valid))
    state = nn.Dropout(self.dropout, deterministic=not train)(state)
    return nn.Dense(self.num_items, name="output")(state)
