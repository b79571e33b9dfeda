"""Full fine-tuning sharded over 8 fake CPU devices equals one device (subprocess)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def test_full_fine_tuning_on_2_4_1_and_1_2_4_meshes_equals_one_device(tmp_path):
  """(data, fsdp, tensor) = (2, 4, 1) and (1, 2, 4): the same losses and updated weights as one
  device over 3 steps of the tiny model, with every weight and Adam moment sharded over fsdp;
  and one step of the real SmolLM2 on (2, 4, 1) against one device."""
  out = tmp_path / "mesh.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS="--xla_backend_optimization_level=0")
  proc = subprocess.run([sys.executable, os.path.join(HERE, "mesh_worker_full.py"), str(out),
                         "real"], env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  one = result["1"]
  assert one["losses"][-1] < one["losses"][0]
  for name in ("2,4,1", "1,2,4"):
    got = result[name]
    np.testing.assert_allclose(got["losses"], one["losses"], rtol=1e-5)
    for a, b in zip(got["weights"], one["weights"]):
      # lr 1e-2: 1% of one Adam step (see test_train_full's accumulation test).
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-4)
  assert "fsdp" in result["2,4,1"]["embed_mu_spec"]
  assert "fsdp" in result["1,2,4"]["q_spec"] and "tensor" in result["1,2,4"]["q_spec"]
  real = result["real"]
  np.testing.assert_allclose(real["losses"][1], real["losses"][0], rtol=1e-5)
  assert "fsdp" in real["embed_mu_spec"]
  assert min(real["max_update"]) > 0.5e-4  # every leaf moved by about lr
  # lr 1e-4: where |g| is near Adam's eps the two reduction orders' rounding can flip an
  # entry's update (at most 2 lr); everywhere else the weights agree to float32 rounding.
  assert max(real["max_diff"]) <= 2.1e-4, real["max_diff"]
  assert max(real["share_off"]) < 1e-4, real["share_off"]
