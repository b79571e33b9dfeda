"""Multi-host: when one training process dies, the other fails in bounded time (no hang)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tests", "train", "train_tiny.py")


def test_survivor_exits_with_an_error_soon_after_its_peer_is_killed(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             BIGREC_HEARTBEAT_TIMEOUT_S="10")
  env.pop("XLA_FLAGS", None)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen(
      [sys.executable, SCRIPT, str(tmp_path), f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={i}", "--config.train.micro_batch_size=1",
       "--config.train.num_epochs=1000", "--step_delay=0.5"],
      cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  try:
    # Wait until training is under way (the first checkpoint is written collectively).
    deadline = time.time() + 240
    while not any(d.isdigit() for d in _ls(tmp_path / "checkpoints")):
      assert time.time() < deadline, "training never started"
      assert all(p.poll() is None for p in procs), procs[0].stderr.read()[-2000:]
      time.sleep(1)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    rc = procs[0].wait(timeout=180)
    waited = time.time() - killed_at
    assert rc != 0
    assert waited < 120, f"the survivor needed {waited:.0f} s to notice"
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def _ls(path):
  return os.listdir(path) if os.path.isdir(path) else []
