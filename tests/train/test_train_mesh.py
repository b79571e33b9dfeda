"""Sharded training equals one device: 8 fake CPU devices in a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def test_same_losses_and_lora_on_1_device_and_on_8_device_meshes(tmp_path):
  """data=2,fsdp=2,tensor=2 and data=8 vs 1 device (LoRA dropout on, same global micro-batch);
  plus one step of the real SmolLM2 with its weights sharded over the (2, 2, 2) mesh."""
  out = tmp_path / "mesh.json"
  # Unoptimised LLVM code: compiles twice as fast, same HLO semantics (timings are not tested).
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS="--xla_backend_optimization_level=0")
  proc = subprocess.run([sys.executable, os.path.join(HERE, "mesh_worker.py"), str(out), "real"],
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  one_losses, one_lora = result["1"]
  for name in ("2,2,2", "8,1,1"):
    losses, lora = result[name]
    np.testing.assert_allclose(losses, one_losses, rtol=1e-4)
    for a, b in zip(lora, one_lora):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5)
  assert one_losses[-1] != one_losses[0]
  real = result["real"]
  assert "tensor" in real["embed_sharding"] and "fsdp" in real["embed_sharding"]
  np.testing.assert_allclose(real["mesh_loss"], real["one_device_loss"], rtol=1e-4)
