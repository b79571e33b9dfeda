"""train.mode=full through the loop (tiny model, subprocesses): the HF checkpoint output,
SIGTERM/SIGKILL/rerun ending with bit-identical weights, the mode check on resume, and two
jax.distributed processes saving and resuming a checkpoint sharded over fsdp."""
from __future__ import annotations

import json
import os
import signal
import socket

import numpy as np
import pytest

from test_train_resume import _finish, _start, _steps, _summary, _wait_for_checkpoint, env  # noqa: F401

FULL = "--config.train.mode=full"


def _weights_bytes(workdir) -> bytes:
  with open(os.path.join(workdir, "model", "model.safetensors"), "rb") as f:
    return f.read()


def _weights(workdir) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file

  return load_file(os.path.join(workdir, "model", "model.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):  # noqa: F811
  workdir = tmp_path_factory.mktemp("full_reference")
  rc, out, err = _finish(_start(workdir, env, FULL))
  assert rc == 0, err[-3000:]
  return _summary(out), _weights_bytes(workdir), workdir


def test_full_run_writes_an_hf_checkpoint_and_its_summary(reference):
  summary, _, workdir = reference
  assert summary["mode"] == "full" and summary["status"] == "finished"
  assert summary["model"] == os.path.join(str(workdir), "model") and "adapter" not in summary
  assert not os.path.exists(os.path.join(workdir, "adapter"))
  with open(os.path.join(workdir, "model", "config.json")) as f:
    hf = json.load(f)
  assert hf["architectures"] == ["LlamaForCausalLM"] and hf["num_hidden_layers"] == 2
  from bigrec_jax.model import export
  from train_tiny import tiny_model

  trained = _weights(workdir)
  start = tiny_model()  # what train_tiny.py starts from
  initial = export.hf_tensors(start.config, start.params)
  assert set(trained) == set(initial) and "lm_head.weight" not in trained  # tied: written once
  for name, value in initial.items():  # every tensor was trained
    assert not np.array_equal(trained[name], value), name


def test_sigterm_sigkill_rerun_ends_with_identical_weights_and_other_mode_is_refused(
    reference, env, tmp_path):  # noqa: F811
  ref_summary, ref_weights, _ = reference
  workdir = tmp_path / "run"
  proc = _start(workdir, env, FULL, "--step_delay=0.3")
  _wait_for_checkpoint(proc, workdir, beyond=0)
  proc.send_signal(signal.SIGTERM)
  rc, _, err = _finish(proc)
  assert rc == 143 and "SIGTERM received" in err, err[-3000:]
  stopped_at = max(_steps(workdir))
  # Resuming these checkpoints as a LoRA run is refused, naming both modes; nothing is moved.
  rc, _, err = _finish(_start(workdir, env))
  assert rc == 2 and "train.mode=full run, but this run has train.mode=lora" in err, err[-3000:]
  assert "Traceback" not in err and not os.path.exists(str(workdir / "checkpoints") + "_corrupt")
  proc = _start(workdir, env, FULL, "--step_delay=0.3")
  _wait_for_checkpoint(proc, workdir, beyond=stopped_at)
  proc.kill()
  proc.wait()
  rc, out, err = _finish(_start(workdir, env, FULL))
  assert rc == 0, err[-3000:]
  assert "resumed from checkpoint step" in err + out
  assert _summary(out)["history"] == ref_summary["history"]
  assert _weights_bytes(workdir) == ref_weights


def test_two_processes_save_and_resume_a_checkpoint_sharded_over_fsdp(reference, env, tmp_path):  # noqa: F811
  """mesh (1, 2, 1) over two processes: each holds half of every weight and moment. SIGTERM to
  one stops both after a collective checkpoint; both resume from it and finish like 1 device."""
  ref_summary, _, ref_dir = reference
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]

  def start_both(*extra):
    return [_start(tmp_path, env, FULL, f"--coordinator_address=127.0.0.1:{port}",
                   "--num_processes=2", f"--process_id={i}", "--config.mesh.shape=1,2,1",
                   "--config.train.micro_batch_size=1", *extra) for i in range(2)]

  procs = start_both("--step_delay=0.3")
  _wait_for_checkpoint(procs[0], tmp_path, beyond=0)
  procs[0].send_signal(signal.SIGTERM)
  for rc, _, err in [_finish(p) for p in procs]:
    assert rc == 143, err[-3000:]
  saved = max(_steps(tmp_path))
  assert 0 < saved < 15
  results = [_finish(p) for p in start_both()]
  for rc, out, err in results:
    assert rc == 0, err[-3000:]
  _, out, err = results[0]  # process 0 logs for both
  assert f"resumed from checkpoint step {saved}" in err + out
  a, b = (_summary(out) for _, out, _ in results)
  assert a["history"] == b["history"] and a["steps"] == 15
  for h, r in zip(a["history"], ref_summary["history"]):
    assert h["val_loss"] == pytest.approx(r["val_loss"], rel=1e-4)
  ours, ref = _weights(tmp_path), _weights(ref_dir)
  for name, value in ref.items():
    np.testing.assert_allclose(ours[name], value, rtol=0, atol=1e-3)
