"""The one sharding helper: device mesh, logical-axis rules, multi-host setup, global batches.

Model parameters carry logical axis names ("embed", "q_proj", "mlp", ...). `LOGICAL_RULES` maps
each logical name onto mesh axes (`data`, `fsdp`, `tensor`) in one place, MaxText-style, so the
same model shards as data parallel on 8 GPUs, FSDP on a TPU slice or not at all on one CPU.
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from bigrec_jax.files import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axes (None = replicated). The batch spans data and fsdp replicas. This
# table is the default of the config's `mesh.rules` (configs/default.py, as strings: "data,fsdp",
# "" = replicated); entry points apply the config's with `logical_rules(config.mesh.rules)`.
LOGICAL_RULES: dict[str, Any] = {
    "batch": ("data", "fsdp"),
    "layers": None,
    "vocab": "tensor",
    "embed": "fsdp",
    "q_proj": "tensor",  # fused heads*head_dim output of q_proj
    "kv_proj": "tensor",
    "mlp": "tensor",
    "lora_rank": None,
    "items": ("data", "fsdp", "tensor"),  # the grounding item table spans every device
    None: None,
}
_ACTIVE_RULES: list[dict[str | None, Any]] = [LOGICAL_RULES]


def rules_as_strings(rules: dict[str | None, Any] = LOGICAL_RULES) -> dict[str, str]:
  """{logical name: "axis,axis" | ""}: the rules as the config holds them."""
  return {name: ",".join((rule,) if isinstance(rule, str) else tuple(rule or ()))
          for name, rule in rules.items() if name is not None}


def parse_rules(rules) -> dict[str | None, Any]:
  """{name: "data,fsdp" | "fsdp" | ""} (config.mesh.rules) -> LOGICAL_RULES' form; checked."""
  out: dict[str | None, Any] = {None: None}
  for name, value in dict(rules).items():
    axes = tuple(a.strip() for a in value.split(",") if a.strip()) if isinstance(value, str) \
        else tuple(value or ())
    bad = [a for a in axes if a not in MESH_AXES]
    if bad or len(set(axes)) != len(axes):
      raise UserError(f"--config.mesh.rules.{name}={value!r}: expected distinct mesh axes of "
                      f"{MESH_AXES}, comma-separated ('' = replicated)")
    out[name] = None if not axes else axes[0] if len(axes) == 1 else axes
  return out


@contextlib.contextmanager
def logical_rules(rules):
  """Within the block, logical names shard by `rules` (config.mesh.rules or LOGICAL_RULES' form)."""
  _ACTIVE_RULES.append(parse_rules(rules))
  try:
    yield
  finally:
    _ACTIVE_RULES.pop()


def resolve_mesh_shape(shape: Sequence[int], num_devices: int | None = None) -> tuple[int, ...]:
  """Replaces a single -1 by 'the rest of the devices' and checks the product."""
  n = num_devices if num_devices is not None else jax.device_count()
  shape = list(shape)
  if len(shape) != len(MESH_AXES):
    raise UserError(f"mesh shape {tuple(shape)} must have {len(MESH_AXES)} entries {MESH_AXES}")
  if shape.count(-1) > 1:
    raise UserError(f"mesh shape {tuple(shape)}: at most one entry may be -1")
  known = math.prod(s for s in shape if s != -1)
  if any(s == 0 or s < -1 for s in shape) or n % known:
    raise UserError(f"mesh shape {tuple(shape)} does not divide the {n} available devices")
  shape = [n // known if s == -1 else s for s in shape]
  if math.prod(shape) != n:
    raise UserError(f"mesh shape {tuple(shape)} uses {math.prod(shape)} devices but {n} are available")
  return tuple(shape)


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh with Auto axis types (sharding constraints are honoured)."""
  devices = list(devices) if devices is not None else jax.devices()
  shape = resolve_mesh_shape(shape, len(devices))
  if devices == jax.devices():
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
              axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(logical_axes: Sequence[str | None], mesh: Mesh | None = None) -> P:
  """PartitionSpec for a tuple of logical names; a mesh axis is used at most once per array."""
  used: set[str] = set()
  out = []
  for name in logical_axes:
    rule = _ACTIVE_RULES[-1].get(name)
    axes = (rule,) if isinstance(rule, str) else tuple(rule or ())
    axes = tuple(a for a in axes if a not in used and (mesh is None or mesh.shape[a] > 1))
    used.update(axes)
    out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return P(*out)


def sharding_for(logical_axes: Sequence[str | None], mesh: Mesh, shape=None) -> NamedSharding:
  """NamedSharding for one array; axes whose size the mesh does not divide stay replicated."""
  spec = list(logical_to_spec(logical_axes, mesh))
  if shape is not None:
    for i, axes in enumerate(spec):
      if axes is None:
        continue
      size = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
      if shape[i] % size:
        spec[i] = None
  return NamedSharding(mesh, P(*spec))


def tree_shardings(axes_tree, mesh: Mesh, shapes_tree=None):
  """Maps a tree of logical-axis tuples (and optionally shapes) to NamedShardings."""
  is_leaf = lambda x: isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x)
  if shapes_tree is None:
    return jax.tree.map(lambda a: sharding_for(a, mesh), axes_tree, is_leaf=is_leaf)
  return jax.tree.map(lambda a, s: sharding_for(a, mesh, s.shape), axes_tree, shapes_tree,
                      is_leaf=is_leaf)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), mesh))


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def global_batch_from_local(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles a global batch from each process's own rows (disjoint shares on every host)."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
          for k, v in local.items()}


def process_share(n: int, process_index: int | None = None, process_count: int | None = None):
  """The [start, stop) rows of n that belong to this process (contiguous, equal-sized)."""
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  if n % pc:
    raise UserError(f"global batch of {n} rows does not divide over {pc} processes")
  per = n // pc
  return pi * per, (pi + 1) * per


def maybe_initialize_distributed(coordinator_address: str = "", num_processes: int = 1,
                                 process_id: int = 0, timeout_s: int = 300,
                                 heartbeat_timeout_s: int | None = None) -> None:
  """Starts jax.distributed when flags ask for it, or when a TPU pod / SLURM job is detected.

  The heartbeat timeout (default 60 s, or $BIGREC_HEARTBEAT_TIMEOUT_S) bounds how long the
  survivors wait when a peer dies: they fail with an error instead of hanging forever.
  """
  if jax.distributed.is_initialized():
    return
  kwargs: dict[str, Any] = {}
  if coordinator_address:
    kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                  process_id=process_id)
  elif not (os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("SLURM_JOB_ID")
            or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS")):
    return  # single process
  if heartbeat_timeout_s is None:
    heartbeat_timeout_s = int(os.environ.get("BIGREC_HEARTBEAT_TIMEOUT_S", "60"))
  # Only the CPU client reads this option, so it is safe everywhere; asking jax.default_backend()
  # here would initialise the backends, which distributed.initialize forbids.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(initialization_timeout=timeout_s,
                             heartbeat_timeout_seconds=heartbeat_timeout_s, **kwargs)


def is_main_process() -> bool:
  return jax.process_index() == 0
