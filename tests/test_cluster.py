"""The TPU/GPU launchers' dry runs print well-formed commands."""
from __future__ import annotations

import shlex
import subprocess
import sys

ROOT = __file__.rsplit("/tests/", 1)[0]


def _run(*args):
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)


def test_tpu_dry_run_prints_create_install_run():
  r = _run("launch/tpu/launch.py", "--tpu_name=t1", "--zone=us-central2-b",
           "--accelerator_type=v4-32", "--repo_url=https://example.com/r.git",
           "--workdir=gs://b/run", "--override=--config.seed=1", "--dry_run")
  assert r.returncode == 0, r.stderr
  lines = r.stdout.strip().splitlines()
  assert len(lines) == 3
  argv = [shlex.split(line) for line in lines]
  assert argv[0][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
  assert "--accelerator-type=v4-32" in argv[0]
  for a in argv[1:]:
    assert a[4] == "ssh" and "--worker=all" in a
  install = [a for a in argv[1] if a.startswith("--command=")][0]
  assert " gcsfs " in install  # the gs:// workdir's filesystem backend
  run = [a for a in argv[2] if a.startswith("--command=")][0]
  assert "launch/pipeline.py" in run and "--workdir=gs://b/run" in run and "--config.seed=1" in run


def test_tpu_missing_zone_exits_2_without_traceback():
  r = _run("launch/tpu/launch.py", "--tpu_name=t1", "--dry_run")
  assert r.returncode == 2 and "--zone" in r.stderr and "Traceback" not in r.stderr


def test_slurm_dry_run():
  r = _run("launch/gpu/launch.py", "--nodes=2", "--gpus_per_node=8", "--partition=gpu",
           "--workdir=/shared/x", "--dry_run")
  assert r.returncode == 0, r.stderr
  argv = shlex.split(r.stdout.strip())
  assert argv[0] == "srun" and "--nodes=2" in argv and "--ntasks-per-node=1" in argv
  inner = argv[-1]
  assert "--coordinator_address=$COORD:12355" in inner and "--process_id=$SLURM_PROCID" in inner


def test_single_gpu_dry_run():
  r = _run("launch/gpu/launch.py", "--workdir=runs/x", "--dry_run")
  assert r.returncode == 0 and "launch/pipeline.py" in r.stdout
