"""Start BIGRec on a Cloud TPU VM slice: create/reuse it, install on every worker, run everywhere.

  python launch/tpu/launch.py --tpu_name=bigrec --zone=us-central2-b \
      --accelerator_type=v4-32 --repo_url=https://github.com/you/bigrec_jax \
      --config=configs/movie_llama7b.py --workdir=gs://your-bucket/bigrec/movie --dry_run
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from absl import flags

from bigrec_jax import cli, cluster

flags.DEFINE_string("tpu_name", "", "Name of the TPU VM slice (created if --create).")
flags.DEFINE_string("zone", "", "GCP zone of the slice, e.g. us-central2-b.")
flags.DEFINE_string("project", "", "GCP project (default: gcloud's configured project).")
flags.DEFINE_string("accelerator_type", "v4-8", "TPU type, e.g. v4-8, v4-32, v5litepod-16.")
flags.DEFINE_string("runtime_version", "tpu-ubuntu2204-base", "TPU VM software version.")
flags.DEFINE_string("repo_url", "", cluster.REPO_URL_HELP)
flags.DEFINE_string("branch", "main", "Branch to check out on the workers.")
flags.DEFINE_string("config", "configs/movie_llama7b.py", "Pipeline config file.")
flags.DEFINE_string("workdir", "", "Shared output directory (gs:// bucket path recommended).")
flags.DEFINE_multi_string("override", [], "Extra pipeline flags, e.g. --override=--config.seed=1")
flags.DEFINE_bool("create", True, "Create the slice first (False: reuse an existing one).")
flags.DEFINE_bool("spot", False, "Request a spot (preemptible) slice.")
flags.DEFINE_bool("dry_run", False, "Print the gcloud commands instead of running them.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  cmds = cluster.tpu_commands(
      tpu_name=FLAGS.tpu_name, zone=FLAGS.zone, project=FLAGS.project,
      accelerator_type=FLAGS.accelerator_type, runtime_version=FLAGS.runtime_version,
      repo_url=FLAGS.repo_url or "REPO_URL", branch=FLAGS.branch, config=FLAGS.config,
      workdir=FLAGS.workdir or "gs://BUCKET/bigrec", overrides=FLAGS.override,
      create=FLAGS.create, spot=FLAGS.spot)
  for cmd in cmds:
    print(cluster.render(cmd), flush=True)
    if not FLAGS.dry_run:
      subprocess.run(cmd, check=True)


if __name__ == "__main__":
  cli.run(main)
