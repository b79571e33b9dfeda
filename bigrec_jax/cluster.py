"""Commands that start the same BIGRec job on every host of a Cloud TPU slice or a SLURM cluster.

These only build command lines (lists of argv); `launch/tpu/launch.py` and `launch/gpu/launch.py`
print them with --dry_run or run them. Every host runs the identical `launch/pipeline.py`; JAX
finds its peers itself on a TPU slice, and from SLURM's variables or explicit flags on GPUs.
"""
from __future__ import annotations

import shlex
from typing import Sequence

from bigrec_jax.files import UserError

REPO_URL_HELP = "git URL of this repository, cloned on every worker"


def _job_args(config: str, workdir: str, overrides: Sequence[str]) -> str:
  return " ".join(["launch/pipeline.py", f"--config={shlex.quote(config)}",
                   f"--workdir={shlex.quote(workdir)}", *map(shlex.quote, overrides)])


def tpu_commands(*, tpu_name: str, zone: str, project: str, accelerator_type: str,
                 runtime_version: str, repo_url: str, branch: str, config: str, workdir: str,
                 overrides: Sequence[str] = (), create: bool = True,
                 spot: bool = False) -> list[list[str]]:
  """gcloud commands: create (or reuse) a TPU VM slice, install on all workers, run on all."""
  for name, value in (("tpu_name", tpu_name), ("zone", zone), ("accelerator_type",
                                                               accelerator_type)):
    if not value:
      raise UserError(f"--{name} is required")
  if not workdir.startswith("gs://") and "/" not in workdir:
    raise UserError(f"--workdir={workdir!r}: use a gs:// bucket path or an absolute path shared "
                    "by all workers (checkpoints are written collectively)")
  base = ["gcloud", "compute", "tpus", "tpu-vm"]
  where = [f"--zone={zone}"] + ([f"--project={project}"] if project else [])
  cmds = []
  if create:
    cmds.append(base + ["create", tpu_name, *where, f"--accelerator-type={accelerator_type}",
                        f"--version={runtime_version}"] + (["--spot"] if spot else []))
  # A gs:// workdir is reached through gcsfs (bigrec_jax/files.py); the run refuses to start
  # without it, so install it with everything else.
  remote_fs = " gcsfs" if workdir.startswith("gs://") else ""
  install = (f"set -e; [ -d bigrec_jax ] || git clone --branch {shlex.quote(branch)} "
             f"{shlex.quote(repo_url)} bigrec_jax; cd bigrec_jax && git pull --ff-only && "
             "python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt "
             f"'jax[tpu]==0.10.2'{remote_fs} && .venv/bin/pip install -q --no-deps -e . && "
             ".venv/bin/python -m bigrec_jax.assets")
  run = f"cd bigrec_jax && .venv/bin/python {_job_args(config, workdir, overrides)}"
  for command in (install, run):
    cmds.append(base + ["ssh", tpu_name, *where, "--worker=all", f"--command={command}"])
  return cmds


def slurm_command(*, nodes: int, gpus_per_node: int, partition: str, time_limit: str,
                  config: str, workdir: str, overrides: Sequence[str] = (),
                  port: int = 12355) -> list[str]:
  """One `srun` line: one process per node, coordinator = the first node of the allocation."""
  if nodes < 1 or gpus_per_node < 1:
    raise UserError(f"--nodes ({nodes}) and --gpus_per_node ({gpus_per_node}) must be >= 1")
  inner = ("COORD=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n1); "
           f".venv/bin/python {_job_args(config, workdir, overrides)} "
           f"--coordinator_address=$COORD:{port} --num_processes=$SLURM_NTASKS "
           "--process_id=$SLURM_PROCID")
  cmd = ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", f"--gpus-per-node={gpus_per_node}",
         f"--time={time_limit}"]
  if partition:
    cmd.append(f"--partition={partition}")
  return cmd + ["bash", "-c", inner]


def single_gpu_command(*, config: str, workdir: str, overrides: Sequence[str] = ()) -> list[str]:
  return ["bash", "-c", f".venv/bin/python {_job_args(config, workdir, overrides)}"]


def render(cmd: Sequence[str]) -> str:
  return " ".join(shlex.quote(c) for c in cmd)
