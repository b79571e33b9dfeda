"""Run in a subprocess with 8 fake CPU devices: grounds every case on sharded meshes.

Usage: python sharded_worker.py OUT.npz  (XLA_FLAGS=--xla_force_host_platform_device_count=8)
"""
from __future__ import annotations

import sys

import jax
import numpy as np

from bigrec_jax import parallel
from bigrec_jax.ground import kernel

import ground_cases


def main(out_path: str) -> None:
  assert jax.device_count() == 8, jax.devices()
  out = {}
  for mesh_shape in [(8, 1, 1), (2, 2, 2)]:
    mesh = parallel.make_mesh(mesh_shape)
    tag = "x".join(map(str, mesh_shape))
    for name, kw in ground_cases.CASES.items():
      case = ground_cases.make_case(**kw)
      items = kernel.place_items(case["table"], case["pop"], mesh)
      assert items.num_shards == 8 and items.padded_items == 40
      cf = case.get("cf")
      for gp, gc in ground_cases.SETTINGS:
        if gc and cf is None:
          continue
        r = kernel.ground(case["queries"], items, k=ground_cases.K, targets=case["targets"], cf=cf,
                          gamma_pop=gp, gamma_cf=gc, query_batch=8)
        out[f"{tag}/{name}/{gp}/{gc}/ids"] = r.top_ids
        out[f"{tag}/{name}/{gp}/{gc}/scores"] = r.top_scores
        out[f"{tag}/{name}/{gp}/{gc}/ranks"] = r.target_ranks
      grid = ground_cases.GRID if cf is not None else ground_cases.GRID[ground_cases.GRID[:, 1] == 0]
      out[f"{tag}/{name}/grid"] = kernel.target_ranks_grid(
          case["queries"], items, case["targets"], grid, cf=cf, query_batch=8, gamma_batch=4)
    beam = ground_cases.make_beam_case()
    items = kernel.place_items(beam["table"], beam["pop"], mesh)
    for gp, gc in ground_cases.SETTINGS:
      r = kernel.ground(beam["queries"], items, k=ground_cases.K, targets=beam["targets"],
                        cf=beam["cf"], gamma_pop=gp, gamma_cf=gc, query_batch=8,
                        beam_weights=beam["weights"])
      out[f"{tag}/beams/{gp}/{gc}/ids"] = r.top_ids
      out[f"{tag}/beams/{gp}/{gc}/ranks"] = r.target_ranks
    out[f"{tag}/beams/grid"] = kernel.target_ranks_grid(
        beam["queries"], items, beam["targets"], ground_cases.GRID, cf=beam["cf"], query_batch=8,
        beam_weights=beam["weights"])
  np.savez(out_path, **out)


if __name__ == "__main__":
  main(sys.argv[1])
