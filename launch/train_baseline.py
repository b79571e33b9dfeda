"""Trains one sequential baseline on a prepared-data directory and exports its scores.

  python launch/train_baseline.py --model=sasrec --data_dir=/tmp/ml100k --workdir=runs/sasrec
  python launch/train_baseline.py --model=mostpop --data_dir=/tmp/ml100k --workdir=runs/mostpop
  python launch/train_baseline.py --model=gru4rec --data_dir=/tmp/ml100k --workdir=runs/gru_n1024 \
      --sample=1024 --seed=0 --config.train.max_epochs=20
  python launch/train_baseline.py --model=dros --data_dir=/tmp/ml100k --workdir=runs/dros \
      --config.dros.backbone=gru4rec --config.dros.alpha=0.5

DROS trains its backbone (--config.dros.backbone, SASRec by default, with that model's config
section) on the backbone loss + alpha * the DRO term (bigrec_jax/baselines/dros.py).

Writes scores_valid_5000.npy / scores_test_5000.npy (rows aligned with valid_5000.json /
test_5000.json, for launch/evaluate.py --cf_valid_scores/--cf_test_scores), metrics.json,
run.json and an orbax checkpoint of the best parameters into --workdir.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import flags  # noqa: E402

from bigrec_jax import cli, config as config_lib  # noqa: E402
from bigrec_jax.baselines import models, run  # noqa: E402
from bigrec_jax.files import UserError  # noqa: E402

_CONFIG = cli.define_config_file("config", "configs/baselines.py",
                                 "Hyperparameters (configs/baselines.py); override fields with --config.train.max_epochs=5.")
_MODEL = flags.DEFINE_enum("model", "sasrec", list(models.MODELS), "Which baseline to run.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Prepared-data directory "
                                "(launch/prepare_data.py --out_dir).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where scores, metrics.json, run.json and the "
                               "checkpoint go.")
_SAMPLE = flags.DEFINE_integer("sample", -1, "Few-shot: train on the LLM run's sample of N "
                               "training rows (shuffled with --seed, first N kept); -1 = all.")
_SEED = flags.DEFINE_integer("seed", 0, "Run seed: few-shot sample, initialisation, shuffling.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; every option is a --flag")
  cli.input_dir(_DATA_DIR, _DATA_DIR.value, "a prepared-data directory")
  cli.output_dir(_WORKDIR, _WORKDIR.value)
  if _SAMPLE.value < -1:
    raise UserError(f"--sample={_SAMPLE.value}: must be -1 (all rows) or >= 0")
  config_lib.check_baselines(_CONFIG.value, prefix="--config")  # as the pipeline checks them
  run.train_and_evaluate(_CONFIG.value, model=_MODEL.value, data_dir=_DATA_DIR.value,
                         workdir=_WORKDIR.value, sample=_SAMPLE.value, seed=_SEED.value)


if __name__ == "__main__":
  cli.run(main)
