r"""BIGRec step 1: instruction tuning of the base model (LoRA, or every weight) on prepared data.

  python launch/train.py --workdir=/tmp/run/train --config.data.dir=/tmp/ml100k
  python launch/train.py --workdir=... --config.train.mode=full   # full fine-tuning (FSDP)
  python launch/train.py --workdir=... --config=configs/movie_llama7b.py \
      --config.train.learning_rate=3e-4 --config.mesh.shape=1,-1,1
  # multi-host (Cloud TPU and SLURM are detected without these flags):
  python launch/train.py --workdir=... --coordinator_address=10.0.0.1:1234 \
      --num_processes=2 --process_id=0

Rerunning the same command resumes from the newest good checkpoint in --workdir (after a crash,
SIGKILL or SIGTERM/preemption, which checkpoints and exits with status 143). The best adapter
ends up in WORKDIR/adapter (PEFT format), or with train.mode=full the best weights in
WORKDIR/model (an HF checkpoint); TensorBoard scalars in WORKDIR/tb.
"""
from __future__ import annotations

import os
import sys

_REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, _REPO)

from absl import flags  # noqa: E402

from bigrec_jax import cli  # noqa: E402
from bigrec_jax.files import UserError  # noqa: E402
from bigrec_jax.train import loop  # noqa: E402

_CONFIG = cli.define_config_file("config", "configs/default.py",
                                 "Run configuration (every field: --config.a.b=...).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and the adapter go here.")
_INIT_DISTRIBUTED = cli.define_multihost_flags()


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; every option is a --flag")
  cli.output_dir(_WORKDIR, _WORKDIR.value)
  config = cli.config_of(_CONFIG, need_data=True)  # config.check; devices: after jax.distributed
  _INIT_DISTRIBUTED()
  loop.train(config, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
