r"""Parity of the LLM stage with the PyTorch reference (transformers + peft), on the demo recipe.

  python launch/parity.py --out=bigrec_jax/bench/results/parity_DATE_COMMIT.json
  python launch/parity.py --tasks=train --steps=4 --out=/tmp/parity.json
  python launch/parity.py --tasks=generate --rows=8 --adapter=runs/demo20/train

train: the first --steps optimizer steps of --config (default configs/demo.py) with LoRA dropout
off and float32 matmuls, ours against PeftModel + torch AdamW + get_linear_schedule_with_warmup
on the same batches in the same order from the same initial adapter: per-step losses and the
final adapters. generate: --rows rows of --data_dir/--split_file, the --adapter (a PEFT
directory or a training workdir) merged into ours and loaded into transformers + peft, our
constrained beam search against HF `generate(prefix_allowed_tokens_fn=...)` over the same
catalog trie with the config's beams, length penalty, max_new_tokens and closing-quote stop.
torch runs in its own process (bigrec_jax/bench/parity_torch.py). --data_dir is a directory
written by launch/prepare_data.py (e.g. `--dataset=ml-100k --out_dir=...`).
"""
from __future__ import annotations

import os
import sys

_REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, _REPO)

from absl import flags  # noqa: E402

from bigrec_jax import cli  # noqa: E402
from bigrec_jax.files import UserError  # noqa: E402

_CONFIG = cli.define_config_file("config", "configs/demo.py",
                                 "The recipe (every field: --config.a.b=...).")
_TASKS = flags.DEFINE_list("tasks", ["train", "generate"], "train, generate or both.")
_STEPS = flags.DEFINE_integer("steps", 32, "Optimizer steps compared (from the run's step 0).")
_ROWS = flags.DEFINE_integer("rows", 50, "Rows of --split_file generated for on both sides.")
_DATA = flags.DEFINE_string("data_dir", "runs/demo20/data", "Prepared data directory (train.json "
                            "for training, --split_file and items.tsv for generation).")
_SPLIT = flags.DEFINE_string("split_file", "test_5000.json", "Rows generated for (in --data_dir).")
_ADAPTER = flags.DEFINE_string("adapter", "runs/demo20/train", "The trained LoRA for generation: "
                               "a PEFT directory or a training workdir with adapter/.")
_OUT = flags.DEFINE_string("out", "parity.json", "Where the JSON record is written.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Keep the adapters, batches and torch logs here "
                               "(default: a temporary directory, removed).")
_THREADS = flags.DEFINE_integer("torch_threads", 0, "torch threads (0: torch's default).")
_PARALLEL = flags.DEFINE_bool("parallel_sides", False, "Run the torch side while ours runs (same "
                              "inputs, same work, sooner on a shared machine) instead of after.")
_MATMUL = flags.DEFINE_enum("matmul_dtype", "float32", ["float32", "bfloat16"], "Our weight-matmul "
                            "operands (the parity limit is stated for float32).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; every option is a --flag")
  cli.output_file(_OUT, _OUT.value)
  tasks = [t for t in _TASKS.value if t]
  bad = sorted(set(tasks) - {"train", "generate"})
  if bad or not tasks:
    raise UserError(f"--tasks={','.join(_TASKS.value)}: choose train and/or generate")
  if _STEPS.value < 1 or _ROWS.value < 1:
    raise UserError("--steps and --rows must be >= 1")
  cli.input_dir(_DATA, _DATA.value)
  if "generate" in tasks:
    cli.input_file("split_file", os.path.join(_DATA.value, _SPLIT.value), "a JSON list of rows")
    cli.input_path(_ADAPTER, _ADAPTER.value)
  if _WORKDIR.value:
    cli.output_dir(_WORKDIR, _WORKDIR.value)
  from bigrec_jax.bench import parity

  record = parity.run(_CONFIG.value, tasks=tasks, steps=_STEPS.value, rows=_ROWS.value,
                      data_dir=_DATA.value, adapter=_ADAPTER.value, split_file=_SPLIT.value,
                      out=_OUT.value, workdir=_WORKDIR.value, torch_threads=_THREADS.value,
                      matmul_dtype=_MATMUL.value, parallel=_PARALLEL.value)
  for line in parity.summary_lines(record):
    print(line)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
