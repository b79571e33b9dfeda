"""Throughput benchmark of bigrec_jax against the PyTorch reference (transformers + peft + HF
generate + torch.cdist), each side in its own subprocess. Entry point: `launch/bench.py`.

    from bigrec_jax.bench import BenchOptions, run
    run(BenchOptions(quick=True, out="/tmp/bench.json"))

Modules: workloads (cases and identical inputs), measure (timing, peak memory), worker (one
side in one process), jax_side/jax_tasks (ours), torch_side (the reference; imports torch only
inside its subprocess), flops (analytic model FLOPs), runner (processes, bench.json, table).
"""
from bigrec_jax.bench.runner import BenchOptions, format_table, run

__all__ = ["BenchOptions", "format_table", "run"]
