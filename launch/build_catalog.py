"""Embeds a catalog of any size into a sharded catalog directory (bigrec_jax/ground/catalog_shards.py).

  python launch/build_catalog.py --titles=catalog_titles.txt --out_dir=/shared/catalog_llama7b \
      --model=/data/llama-7b-hf --dtype=bfloat16 [--num_shards=128] \
      [--coordinator_address=10.0.0.1:1234 --num_processes=16 --process_id=$RANK]

--titles: UTF-8 text, one (already cleaned) title per line, line i = item id i. Every process
embeds only its own contiguous block of shards (data parallel over its local devices) and writes
each shard atomically; run the same command again after a kill or preemption and only the
missing shards are embedded. On a TPU slice or a SLURM job the multi-host flags are not needed.
--model and --batch_size are config fields (model.path, ground.embed_batch_size; --config=FILE,
default configs/default.py), embedding as the evaluate stage does.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import flags  # noqa: E402

from bigrec_jax import cli, files  # noqa: E402
from bigrec_jax.files import UserError  # noqa: E402

_CONFIG = cli.define_config_file()
_TITLES = flags.DEFINE_string("titles", None, "Text file, one title per line (line i = item i).")
_OUT = flags.DEFINE_string("out_dir", None, "The sharded catalog directory (shared by all hosts).")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 0, "Shards (0: about 2^20 items each, a "
                                   "multiple of the process count).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Shard storage dtype.")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 512, "Tokens kept per title.")
cli.define_flags_from({
    "model=model.path": "Base model: .gguf file or HF directory ('': the embedded "
                        "SmolLM2-135M-Instruct).",
    "batch_size=ground.embed_batch_size": "Titles per embedding batch (per process).",
})
_MULTIHOST = cli.define_multihost_flags()


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; every option is a --flag")
  cli.input_file(_TITLES, _TITLES.value, "a text file of titles")
  cli.output_dir(_OUT, _OUT.value)
  config = cli.config_of(_CONFIG)  # config.check, before any heavy work
  if _NUM_SHARDS.value < 0 or _MAX_TOKENS.value < 1:
    raise UserError("--num_shards must be >= 0, --max_tokens >= 1")
  _MULTIHOST()
  import jax

  from bigrec_jax import parallel
  from bigrec_jax.ground import catalog_shards
  from bigrec_jax.model import load_model

  titles = files.read_text(_TITLES.value).splitlines()
  if not titles:
    raise UserError(f"--titles={_TITLES.value}: no titles")
  mesh = parallel.make_mesh(devices=jax.local_devices())  # each process embeds on its own devices
  m = config.model  # as the evaluate stage embeds (its dtype, float32 products)
  with parallel.logical_rules(config.mesh.rules):
    model = load_model(m.path or None, mesh=mesh, dtype=m.dtype, tokenizer=m.tokenizer or None,
                       kernels=m.kernels)
    built = catalog_shards.embed_catalog_shards(
        model, titles, _OUT.value, num_shards=_NUM_SHARDS.value or None, dtype=_DTYPE.value,
        mesh=mesh, batch_size=config.ground.embed_batch_size, max_tokens=_MAX_TOKENS.value)
  print(f"process {jax.process_index()}: built shards {built or 'none (all done)'} in "
        f"{_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
