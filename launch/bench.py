"""Throughput of bigrec_jax against the PyTorch reference, each side in its own process.

  python launch/bench.py                       # full sizes, embedded SmolLM2, writes bench.json
  python launch/bench.py --quick               # tiny model and shapes (CI, < 2 minutes)
  python launch/bench.py --tasks=train,ground --flops --model=/path/to/llama-7b-hf
  python launch/bench.py --multiprocess_ground --out=bench_mp.json   # 2 processes, 5000 x 10M,
                                                                     # then 1 process x 8 devices
Tasks: train (LoRA r=8 q/v AdamW step, tokens/s: packed 4x256 and 8x512 rows with whole-prompt
loss, the reference recipe; demo_16, the demo's own left-padded chat-template batch with the loss
on the response; full_4x256, every weight trained), beam (4 beams, 4 returned, batch 8 BIGRec
prompts), embed (catalog titles/s), ground (queries/s, top-50 + target rank). bfloat16 on GPU.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from absl import flags

from bigrec_jax import cli
from bigrec_jax.bench import BenchOptions, run
from bigrec_jax.files import UserError

_TASKS = flags.DEFINE_list("tasks", ["train", "beam", "embed", "ground"],
                           "Which tasks to measure: train, beam, embed, ground.")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny random model and tiny shapes (CI smoke run).")
_MODEL = flags.DEFINE_string("model", None, "A .gguf file or an HF directory (default: the "
                             "embedded SmolLM2-135M-Instruct; with --quick a tiny random LLaMA).")
_OUT = flags.DEFINE_string("out", "bench.json", "Where to write the results (atomically).")
_FLOPS = flags.DEFINE_bool("flops", False, "Add model FLOPs per call and the fraction of each "
                           "side's measured matmul peak.")
_REPEATS = flags.DEFINE_integer("repeats", None, "Timed runs per case after one warm-up "
                                "(default 3, 2 with --quick); the median is reported.")
_BUDGET = flags.DEFINE_float("budget_s", 120.0, "Seconds of timed runs per case; fewer repeats "
                             "when one run is slower (at least one).")
_ISOLATE = flags.DEFINE_enum("isolate", None, ["side", "task", "case"], "One worker process per "
                             "side, per (side, task) or per (side, case). Default: side with "
                             "--quick, else task.")
_DTYPE = flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16", "bfloat16_matmul"],
                           "Compute dtype of both sides; auto: bfloat16 on GPU, float32 on CPU. "
                           "bfloat16_matmul: float32 weights and activations with bfloat16 matmul "
                           "operands (JAX: model.matmul_dtype; torch: autocast to bfloat16), the "
                           "mixed precision that uses AMX on recent Xeon CPUs; grounding stays "
                           "float32.")
_SIDES = flags.DEFINE_list("sides", ["jax", "torch"], "Which sides to run.")
_TIMEOUT = flags.DEFINE_float("worker_timeout_s", None, "Kill a worker after this long "
                              "(default 600 with --quick, else 3600).")
_CASES = flags.DEFINE_list("cases", [], "Only these case names (e.g. 4x256,b8_new32); default all.")
_RANDOM = flags.DEFINE_bool("random_weights", False, "Random weights with the architecture of "
                            "--model=DIR (config.json + tokenizer files): same shapes, same work, "
                            "for machines that lack the checkpoint.")
_PLATFORM = flags.DEFINE_string("platform", None, "Force a platform for both sides (cpu).")
_NEIGHBOUR = flags.DEFINE_enum("neighbour", "none", ["none", "one_core"], "Shared-CPU mode: "
                               "one_core runs a busy process pinned to one core while each "
                               "worker (both sides) runs, and stops it after.")
_MP = flags.DEFINE_bool("multiprocess_ground", False, "Run only the multi-process grounding "
                        "case (bigrec_jax/ground/catalog_bench.py): --mp_processes processes "
                        "under jax.distributed on this machine ground --mp_queries queries "
                        "against a sharded --mp_items x --mp_dim catalog; writes --out.")
_MP_ITEMS = flags.DEFINE_integer("mp_items", 10_000_000, "Multi-process case: catalog items.")
_MP_DIM = flags.DEFINE_integer("mp_dim", 16, "Multi-process case: embedding dimension.")
_MP_QUERIES = flags.DEFINE_integer("mp_queries", 5000, "Multi-process case: queries.")
_MP_PROCESSES = flags.DEFINE_integer("mp_processes", 2, "Multi-process case: processes.")
_MP_BATCH = flags.DEFINE_integer("mp_query_batch", 32, "Multi-process case: query rows per "
                                 "batch (0: the kernel's memory budget).")
_MP_SINGLE = flags.DEFINE_bool("mp_single", True, "Multi-process case: also run one process with "
                               "all --mp_processes x 4 devices on the same catalog (the "
                               "single-process case, written as ground_single_process).")


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; every option is a --flag")
  cli.output_file(_OUT, _OUT.value)  # before minutes of measuring
  if _MP.value:
    from bigrec_jax import files
    from bigrec_jax.ground import catalog_bench

    if min(_MP_ITEMS.value, _MP_DIM.value, _MP_QUERIES.value, _MP_PROCESSES.value) < 1:
      raise UserError("--mp_items, --mp_dim, --mp_queries and --mp_processes must be >= 1")
    import time

    from bigrec_jax.bench import measure

    started, host = time.time(), measure.host_info()
    load_before = host.pop("load_average")
    result = catalog_bench.run_with_single_process(
        items=_MP_ITEMS.value, dim=_MP_DIM.value, queries=_MP_QUERIES.value,
        processes=_MP_PROCESSES.value, query_batch=max(0, _MP_BATCH.value),
        repeats=_REPEATS.value or 1, single_process=_MP_SINGLE.value)
    files.write_json(_OUT.value, {
        "created_unix": started, "wall_s": round(time.time() - started, 1),
        "command": " ".join(sys.argv),
        "machine": {**host, "load_average_before": load_before,
                    "load_average_after": list(os.getloadavg())},
        **result})
    return
  for flag in (_BUDGET, _TIMEOUT):
    if flag.value is not None and not flag.value > 0:
      raise UserError(f"--{flag.name}={flag.value}: must be > 0")
  run(BenchOptions(
      tasks=tuple(_TASKS.value), quick=_QUICK.value, model=_MODEL.value, out=_OUT.value,
      flops=_FLOPS.value, repeats=_REPEATS.value or (2 if _QUICK.value else 3),
      budget_s=_BUDGET.value, isolate=_ISOLATE.value, dtype=_DTYPE.value,
      sides=tuple(_SIDES.value), worker_timeout_s=_TIMEOUT.value, platform=_PLATFORM.value,
      cases=tuple(_CASES.value), random_weights=_RANDOM.value, neighbour=_NEIGHBOUR.value))


if __name__ == "__main__":
  cli.run(main)
