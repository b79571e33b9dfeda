"""Start BIGRec on GPUs: one node (all local GPUs, one process) or several nodes under SLURM.

  python launch/gpu/launch.py --config=configs/movie_llama7b.py --workdir=/shared/runs/movie
  python launch/gpu/launch.py --nodes=2 --gpus_per_node=8 --partition=gpu \
      --config=configs/movie_llama7b.py --workdir=/shared/runs/movie --dry_run
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from absl import flags

from bigrec_jax import cli, cluster

flags.DEFINE_integer("nodes", 1, "Number of nodes; > 1 uses SLURM srun (one process per node).")
flags.DEFINE_integer("gpus_per_node", 8, "GPUs per node (multi-node only).")
flags.DEFINE_string("partition", "", "SLURM partition.")
flags.DEFINE_string("time", "24:00:00", "SLURM time limit.")
flags.DEFINE_integer("port", 12355, "Coordinator port on the first node.")
flags.DEFINE_string("config", "configs/movie_llama7b.py", "Pipeline config file.")
flags.DEFINE_string("workdir", "runs/gpu", "Output directory (shared filesystem for multi-node).")
flags.DEFINE_multi_string("override", [], "Extra pipeline flags, e.g. --override=--config.seed=1")
flags.DEFINE_bool("dry_run", False, "Print the command instead of running it.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if FLAGS.nodes > 1:
    cmd = cluster.slurm_command(nodes=FLAGS.nodes, gpus_per_node=FLAGS.gpus_per_node,
                                partition=FLAGS.partition, time_limit=FLAGS.time,
                                config=FLAGS.config, workdir=FLAGS.workdir,
                                overrides=FLAGS.override, port=FLAGS.port)
  else:
    cmd = cluster.single_gpu_command(config=FLAGS.config, workdir=FLAGS.workdir,
                                     overrides=FLAGS.override)
  print(cluster.render(cmd), flush=True)
  if not FLAGS.dry_run:
    subprocess.run(cmd, check=True)


if __name__ == "__main__":
  cli.run(main)
