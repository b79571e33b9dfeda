"""launch/train_baseline.py: help, clear errors with exit status 2, and a real (MostPop) run."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

LAUNCHER = os.path.join(REPO, "launch", "train_baseline.py")


def launch(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, LAUNCHER, *args], capture_output=True, text=True,
                        cwd=REPO, env={**os.environ, **(env or {})}, timeout=300)


def test_help():
  result = launch("--help")
  # absl prints the usage and exits with status 1 after --help (its convention), before main.
  assert result.returncode in (0, 1) and "Traceback" not in result.stderr, result.stderr
  for flag in ("--model", "sasrec|gru4rec|caser|mostpop|dros", "--data_dir", "--workdir", "--sample",
               "--config"):
    assert flag in result.stdout


@pytest.mark.parametrize("args", [
    ["--model=bogus"],
    ["--no_such_flag"],
    ["--config.train.max_epochs=abc"],
    ["--data_dir=/no/such/dir", "--workdir=/tmp/unused"],
    ["--workdir=/tmp/unused"],
    ["stray_argument"],
])
def test_bad_input_exits_2_without_traceback(args):
  result = launch(*args)
  assert result.returncode == 2, result.stderr
  assert "Traceback" not in result.stderr and result.stderr.startswith("error:")


def test_bad_sample_exits_2(rule_dir, tmp_path):
  result = launch(f"--data_dir={rule_dir}", f"--workdir={tmp_path}", "--sample=0")
  assert result.returncode == 2 and "--sample=0" in result.stderr
  assert "Traceback" not in result.stderr


def test_bad_dros_backbone_exits_2(rule_dir, tmp_path):
  result = launch("--model=dros", f"--data_dir={rule_dir}", f"--workdir={tmp_path}",
                  "--config.dros.backbone=mostpop")
  assert result.returncode == 2 and "config.dros.backbone='mostpop'" in result.stderr
  assert "Traceback" not in result.stderr


def test_mostpop_run_writes_every_output(rule_dir, tmp_path):
  result = launch("--model=mostpop", f"--data_dir={rule_dir}", f"--workdir={tmp_path}")
  assert result.returncode == 0, result.stderr
  for name in ("metrics.json", "run.json", "scores_valid_5000.npy", "scores_test_5000.npy"):
    assert (tmp_path / name).exists()
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert set(metrics["methods"]["mostpop"]) == {"valid", "test"}


def test_sasrec_data_parallel_on_8_fake_devices(rule_dir, tmp_path):
  """The batch is laid out over the mesh's data axis; the run must work with 8 devices."""
  result = launch("--model=sasrec", f"--data_dir={rule_dir}", f"--workdir={tmp_path}",
                  "--config.train.max_epochs=1", "--config.train.batch_size=100",
                  env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8 "
                                    + os.environ.get("XLA_FLAGS", ""),
                       "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  info = json.loads((tmp_path / "run.json").read_text())
  assert info["epochs"] == 1 and info["train"]["batch_size"] == 100
