"""launch/train.py rejects bad configs with exit status 2 and one message, before heavy work."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("flags,expected", [
    (["--config.train.batch_size=130"], "not a multiple of --config.train.micro_batch_size"),
    (["--config.data.dir={data}", "--config.mesh.shape=3,1,1"], "does not divide"),
    (["--config.data.dir={data}", "--config.lora.targets=('q_proj','w_proj')"],
     "unknown LoRA target"),
    (["--config.data.dir={data}", "--config.train.mode=partial"],
     "--config.train.mode must be one of ('lora', 'full')"),
])
def test_bad_config_exits_2_with_a_message(tmp_path, flags, expected):
  data = tmp_path / "data"
  data.mkdir()
  for split in ("train", "valid_5000"):
    (data / f"{split}.json").write_text("[]\n")
  cmd = [sys.executable, os.path.join(REPO, "launch", "train.py"), f"--workdir={tmp_path / 'w'}"]
  cmd += [f.format(data=data) for f in flags]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.startswith("error: ") and expected in " ".join(proc.stderr.split())
  assert "Traceback" not in proc.stderr
  assert not os.path.exists(tmp_path / "w" / "checkpoints")
