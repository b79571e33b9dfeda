"""Hardware presets: mesh shape, dtypes, micro-batch and remat for a model size on a machine.

Used by the paper configs as `get_config("<preset>")`, i.e. `--config=configs/movie_llama7b.py:gpu8`.
"""
from __future__ import annotations

PRESETS = {
    # name: (mesh (data, fsdp, tensor), compute dtype, param dtype, micro-batch per replica, remat)
    "cpu": ((-1, 1, 1), "float32", "float32", 4, False),
    "gpu1": ((1, 1, 1), "bfloat16", "bfloat16", 4, True),
    "gpu8": ((1, 8, 1), "bfloat16", "bfloat16", 4, True),
    "tpu_v4_32": ((1, -1, 1), "bfloat16", "float32", 4, True),
    "tpu_v5e_16": ((1, -1, 1), "bfloat16", "bfloat16", 2, True),
}


def apply(config, name: str) -> None:
  if name not in PRESETS:
    raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
  mesh, dtype, param_dtype, micro, remat = PRESETS[name]
  config.mesh.shape = mesh
  config.model.dtype = dtype
  config.model.param_dtype = param_dtype
  config.train.micro_batch_size = micro
  config.model.remat = remat
