"""BIGRec end to end as one job: prepare -> train -> generate -> baselines -> evaluate -> report.

  python launch/pipeline.py --config=configs/demo.py --workdir=runs/demo
  python launch/pipeline.py --config=configs/demo.py --workdir=runs/demo --force_stage=evaluate
  python launch/pipeline.py --config=configs/movie_llama7b.py --config.seeds=0,1,2 --workdir=...

Completed stages are skipped on a rerun (resume after a crash); one completed with other values
of the fields it reads stops the run before any work, naming them and the --force_stage that
redoes it. Every config field can be overridden with --config.<section>.<field>=value; see
configs/default.py for all of them.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import flags

from bigrec_jax import cli
from bigrec_jax.files import UserError

_CONFIG = cli.define_config_file("config", "configs/demo.py",
                                 "Pipeline config file (configs/*.py); every field: --config.a.b=...")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory of the run (resumable).")
_FORCE = flags.DEFINE_multi_string("force_stage", [], "Redo a stage from scratch, and the stages "
                                   "that read it, even if complete (prepare, train, generate, "
                                   "baselines, evaluate, report, all).")
_STAGES = flags.DEFINE_list("stages", [], "Run only these stages (default: all).")
_INIT_DISTRIBUTED = cli.define_multihost_flags()


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; every option is a --flag")
  cli.output_dir(_WORKDIR, _WORKDIR.value)
  from bigrec_jax import pipeline

  cli.names(_STAGES, _STAGES.value, pipeline.STAGES)
  cli.names(_FORCE, _FORCE.value, pipeline.STAGES + ("all",))
  config = _CONFIG.value
  if _FORCE.value:
    config.pipeline.force_stages = tuple(_FORCE.value)
  if _STAGES.value:
    config.pipeline.stages = tuple(_STAGES.value)
  pipeline.check_config(config)
  _INIT_DISTRIBUTED()
  pipeline.run_seeds(config, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
