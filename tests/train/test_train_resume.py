"""Crashes, preemption, divergence and multi-host training of the loop (tiny model, subprocesses).

All runs share one persistent compilation cache, so only the first one compiles.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SCRIPT = os.path.join(HERE, "train_tiny.py")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  cache = tmp_path_factory.mktemp("jax_cache")
  e = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
           JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", TF_CPP_MIN_LOG_LEVEL="3",
           # Unoptimised LLVM code compiles twice as fast; every run here uses the same flags.
           XLA_FLAGS="--xla_backend_optimization_level=0")
  return e


def _start(workdir, env, *args) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, SCRIPT, str(workdir), *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
  out, err = proc.communicate(timeout=timeout)
  return proc.returncode, out, err


def _summary(stdout: str) -> dict:
  line = [l for l in stdout.splitlines() if l.startswith("SUMMARY ")][-1]
  return json.loads(line[len("SUMMARY "):])


def _adapter_bytes(workdir) -> bytes:
  with open(os.path.join(workdir, "adapter", "adapter_model.safetensors"), "rb") as f:
    return f.read()


def _steps(workdir) -> list[int]:
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _wait_for_checkpoint(proc, workdir, beyond: int, timeout: float = 240) -> int:
  deadline = time.time() + timeout
  while time.time() < deadline:
    steps = [s for s in _steps(workdir) if s > beyond]
    if steps:
      return steps[-1]
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.05)
  raise AssertionError(f"no checkpoint beyond step {beyond} within {timeout}s")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
  """An uninterrupted run: its summary and adapter bytes."""
  workdir = tmp_path_factory.mktemp("reference")
  rc, out, err = _finish(_start(workdir, env))
  assert rc == 0, err[-3000:]
  return _summary(out), _adapter_bytes(workdir), workdir


def test_uninterrupted_run_writes_adapter_summary_and_logs(reference):
  summary, _, workdir = reference
  assert summary["status"] == "finished" and summary["steps"] == 15
  assert [h["step"] for h in summary["history"]] == [5, 10, 15]
  with open(os.path.join(workdir, "train_summary.json")) as f:
    assert json.load(f)["best_val_loss"] == summary["best_val_loss"]
  with open(os.path.join(workdir, "adapter", "adapter_config.json")) as f:
    assert json.load(f)["target_modules"] == ["q_proj", "v_proj"]
  assert any(n.startswith("events.out.tfevents") for n in os.listdir(os.path.join(workdir, "tb")))
  # latest 2 kept + the best validation checkpoint
  assert _steps(workdir)[-2:] == [14, 15]


def test_sigterm_then_sigkill_then_rerun_ends_with_the_identical_adapter(reference, env, tmp_path):
  ref_summary, ref_adapter, _ = reference
  workdir = tmp_path / "run"
  # 1) SIGTERM mid-run: checkpoint, then exit 143.
  proc = _start(workdir, env, "--step_delay=0.3")
  _wait_for_checkpoint(proc, workdir, beyond=0)
  proc.send_signal(signal.SIGTERM)
  rc, _, err = _finish(proc)
  assert rc == 143, err[-3000:]
  assert "SIGTERM received" in err
  stopped_at = int(err.split("SIGTERM received")[1].split("at step ")[1].split(":")[0])
  assert stopped_at in _steps(workdir) and 0 < stopped_at < 15
  # 2) resume, then SIGKILL once it has written a newer checkpoint.
  proc = _start(workdir, env, "--step_delay=0.3")
  _wait_for_checkpoint(proc, workdir, beyond=stopped_at)
  proc.kill()
  proc.wait()
  killed_after = max(_steps(workdir))
  assert killed_after > stopped_at
  # 3) rerun to the end: same validation history and bit-identical adapter.
  rc, out, err = _finish(_start(workdir, env))
  assert rc == 0, err[-3000:]
  assert "resumed from checkpoint step" in err + out
  summary = _summary(out)
  assert summary["history"] == ref_summary["history"]
  assert _adapter_bytes(workdir) == ref_adapter


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(env, tmp_path):
  rc, out, err = _finish(_start(tmp_path, env, "--nan_at_step=4"))
  assert rc == 2, err[-3000:]
  assert "training stopped at step 4" in err and "not finite" in err
  assert "Traceback" not in err
  assert "last good checkpoint is step 2" in err
  assert _steps(tmp_path) == [2]
  # ...and that checkpoint resumes: rerunning without the NaN finishes the run.
  rc, out, err = _finish(_start(tmp_path, env))
  assert rc == 0, err[-3000:]
  assert "resumed from checkpoint step 2" in err + out


def test_two_processes_train_together_and_agree(reference, env, tmp_path):
  """Two real processes (gloo collectives) with one device each, data=2 mesh."""
  import socket

  ref_summary = reference[0]
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  # micro_batch_size 1 per replica x 2 replicas = the reference's global micro-batch of 2.
  procs = [_start(tmp_path, env, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                  f"--process_id={i}", "--config.train.micro_batch_size=1") for i in range(2)]
  results = [_finish(p) for p in procs]
  for rc, _, err in results:
    assert rc == 0, err[-3000:]
  a, b = (_summary(out) for _, out, _ in results)
  assert a["history"] == b["history"]
  assert a["steps"] == 15
  for h, r in zip(a["history"], ref_summary["history"]):
    assert h["val_loss"] == pytest.approx(r["val_loss"], rel=1e-4)
