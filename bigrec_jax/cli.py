"""Shared launcher plumbing: every `launch/*.py` runs its main through `run`.

A bad flag or config override, or a `UserError` (bad file, bad value), is printed as one
paragraph on stderr with exit status 2 and no traceback; anything else is a bug and keeps its
traceback. This module is also the one place that checks paths and names for every launcher
before any heavy work: `output_file`/`output_dir` (the path can be created: kind of path, a
writable parent, nothing below a regular file), `input_file`/`input_dir`, `names` (each value one
of a known set, close matches suggested), `encoding`; a URI (gs://...) whose filesystem backend
is not installed; and a config file that does not import, an
unknown config field or a list field with elements of the wrong type is one message naming the
file and line or the dotted field.
"""
from __future__ import annotations

import codecs
import difflib
import os
import re
import sys
import tempfile
import textwrap
import traceback
from typing import Any, Callable, Iterable

from absl import app, flags, logging

from bigrec_jax import files
from bigrec_jax.files import UserError


def fail(message: str) -> None:
  """Prints a user-facing error and exits with status 2."""
  sys.stderr.write("error: " + textwrap.fill(str(message), width=100, subsequent_indent="  ",
                                             break_long_words=False, break_on_hyphens=False) + "\n")
  sys.stderr.flush()
  sys.exit(2)


# ----------------------------------------------------------------------------- paths and names


def _flag(flag: Any) -> str:
  """'--name' for a flag holder, a flag name or an already written '--name'/'--config.a.b'."""
  name = getattr(flag, "name", flag)
  return name if name.startswith("-") else f"--{name}"


def _no_tilde(flag: str, path: str) -> None:
  if path.startswith("~"):
    raise UserError(f"{flag}={path}: '~' is not expanded after '='; write {flag} {path} (a "
                    "space, so the shell expands it) or spell out the home directory")


def _given(flag: Any, path: str | None, required: bool) -> str | None:
  """The flag's display name when a path was given (checked for `~`); None when it may be empty."""
  name = _flag(flag)
  if not path:
    if required:
      raise UserError(f"{name} is required")
    return None
  _no_tilde(name, path)
  files.check_filesystem(path, name)  # a gs:// path without gcsfs: now, not as a local ./gs:/
  return name


def _first_existing(path: str) -> str:
  """The nearest ancestor of `path` (or `path` itself) that exists as something."""
  current = os.path.abspath(path)
  while not os.path.lexists(current):
    parent = os.path.dirname(current)
    if parent == current:
      break
    current = parent
  return current


def _check_creatable(flag: str, path: str) -> None:
  """`path` does not exist: every missing directory above it can be made, and written into."""
  base = _first_existing(os.path.dirname(os.path.abspath(path)) or ".")
  if not os.path.isdir(base):
    raise UserError(f"{flag}={path}: {base} is a regular file, so nothing can be created below it")
  try:  # os.access says yes to root even on a read-only file system: try for real
    fd, probe = tempfile.mkstemp(dir=base, prefix=".bigrec_write_check.")
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise UserError(f"{flag}={path}: cannot write in {base} ({e.strerror or e})") from None


def output_file(flag: Any, path: str | None, required: bool = True) -> str | None:
  """Checks that the file `path` (written later) can be created or replaced; creates nothing."""
  name = _given(flag, path, required)
  if name is None:
    return path
  if files.is_remote(path):  # an object store has no permissions or parents to check here
    if path.endswith("/") or files.isdir(path):
      raise UserError(f"{name}={path}: is a directory; give a file name")
    return path
  if os.path.isdir(path):
    raise UserError(f"{name}={path}: is a directory; give a file name (e.g. {os.path.join(path, 'out.json')})")
  if os.path.lexists(path) and not os.path.isfile(path):
    raise UserError(f"{name}={path}: exists and is not a regular file")
  if path.endswith(os.sep):
    raise UserError(f"{name}={path}: ends with '{os.sep}'; give a file name")
  _check_creatable(name, path)  # an existing file: the atomic writer renames a file beside it
  return path


def output_dir(flag: Any, path: str | None, required: bool = True) -> str | None:
  """Checks that the directory `path` exists and is writable, or can be created; creates nothing."""
  name = _given(flag, path, required)
  if name is None:
    return path
  if files.is_remote(path):
    if files.isfile(path):
      raise UserError(f"{name}={path}: exists and is not a directory")
    return path
  if os.path.lexists(path) and not os.path.isdir(path):
    raise UserError(f"{name}={path}: exists and is not a directory")
  if os.path.isdir(path):
    _check_creatable(name, os.path.join(path, "x"))
  else:
    _check_creatable(name, path)
  return path


def input_file(flag: Any, path: str | None, what: str = "", required: bool = True) -> str | None:
  """An existing regular file (a directory or a missing path is an error naming the flag)."""
  name = _given(flag, path, required)
  if name is None:
    return path
  if files.isdir(path):
    raise UserError(f"{name}={path}: is a directory, expected {what or 'a file'}")
  if not files.isfile(path):
    raise UserError(f"{name}={path}: no such file")
  return path


def input_dir(flag: Any, path: str | None, what: str = "", required: bool = True) -> str | None:
  """An existing directory."""
  name = _given(flag, path, required)
  if name is None:
    return path
  if not files.exists(path):
    raise UserError(f"{name}={path}: no such directory")
  if not files.isdir(path):
    raise UserError(f"{name}={path}: is a file, expected {what or 'a directory'}")
  return path


def input_path(flag: Any, path: str | None, required: bool = True) -> str | None:
  """An existing file or directory (a model: a .gguf file or an HF directory)."""
  name = _given(flag, path, required)
  if name is not None and not files.exists(path):
    raise UserError(f"{name}={path}: no such file or directory")
  return path


def names(flag: Any, values: Iterable[str], allowed: Iterable[str]) -> list[str]:
  """Every value is one of `allowed`; an unknown one is named with its close matches."""
  allowed = list(allowed)
  values = list(values)
  for value in values:
    if value not in allowed:
      close = difflib.get_close_matches(str(value), allowed, n=3)
      hint = f"; did you mean {' or '.join(close)}?" if close else ""
      raise UserError(f"{_flag(flag)}: unknown name {value!r}{hint} (choose from "
                      f"{', '.join(allowed)})")
  return values


def encoding(flag: Any, name: str | None) -> str | None:
  """A codec Python knows (e.g. utf-8, ISO-8859-1, cp1252); None/'' passes through."""
  if not name:
    return name
  try:
    codecs.lookup(name)
  except LookupError:
    raise UserError(f"{_flag(flag)}={name}: unknown text encoding (e.g. utf-8, ISO-8859-1, "
                    "cp1252)") from None
  return name


# ----------------------------------------------------------------------------- config files


def _config_path(argv: list[str], name: str, default: str) -> str:
  for i, arg in enumerate(argv):
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
  return default


def _config_load_message(path: str, e: BaseException) -> str | None:
  """'FILE:LINE: what' when `e` came from importing or running the config file, else None."""
  path = path.split(":", 1)[0]
  if path and not os.path.exists(path):
    return f"{path}: no such config file"
  if path and os.path.isdir(path):
    return f"{path}: is a directory, expected a config file (configs/*.py)"
  original = e.__cause__ or e.__context__ or e
  for candidate in (e, original):
    if isinstance(candidate, SyntaxError) and candidate.filename:
      return (f"{candidate.filename}:{candidate.lineno}: syntax error in the config file "
              f"({candidate.msg})")
  if not path or not os.path.exists(path):
    return None
  real = os.path.realpath(path)
  for candidate in (original, e):
    frames = [f for f in traceback.extract_tb(candidate.__traceback__)
              if f.filename and os.path.exists(f.filename) and os.path.realpath(f.filename) == real]
    if frames:
      line = frames[-1].lineno
      return (f"{path}:{line}: the config file raised {type(candidate).__name__}: {candidate}")
  if isinstance(e, AttributeError) and "get_config" in str(e):
    return f"{path}: the config file defines no get_config() function"
  return None


def _load_config(path: str):
  import importlib.util

  module_path, _, arg = path.partition(":")
  spec = importlib.util.spec_from_file_location("bigrec_config_check", module_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*([arg] if arg else []))


def _field_paths(config, prefix: str = "") -> list[str]:
  out = []
  for key, value in config.items():
    dotted = f"{prefix}{key}"
    out.append(dotted)
    if hasattr(value, "items") and hasattr(value, "lock"):
      out.extend(_field_paths(value, dotted + "."))
  return out


def _has_field(config, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node.keys():
      return False
    node = node[part]
  return True


def _overrides(argv: list[str], name: str) -> list[tuple[str, str]]:
  """(dotted field, raw value) of every --NAME.a.b=value (or --noNAME.a.b) in argv."""
  out = []
  for i, arg in enumerate(argv):
    for prefix in (f"--{name}.", f"--no{name}.", f"-{name}."):
      if arg.startswith(prefix):
        field, eq, value = arg[len(prefix):].partition("=")
        if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
          value = argv[i + 1]
        out.append((field, value))
  return out


def _unknown_field_message(argv: list[str], name: str, default: str) -> str | None:
  """'--config.a.b: no such field in FILE; close matches: ...' for the first unknown override."""
  path = _config_path(argv, name, default)
  try:
    config = _load_config(path)
  except Exception:  # noqa: BLE001 (the load error itself is reported elsewhere)
    return None
  if not hasattr(config, "keys"):
    return None
  fields = _field_paths(config)
  for field, _ in _overrides(argv, name):
    if not _has_field(config, field):
      close = difflib.get_close_matches(field, fields, n=3, cutoff=0.6)
      hint = (f"; did you mean {' or '.join(f'--{name}.{c}' for c in close)}?" if close else
              f"; see {path} for every field")
      return f"--{name}.{field}: no such config field in {path}{hint}"
  return None


def _element_kind(values) -> type | None:
  kinds = {type(v) for v in values}
  if kinds and kinds <= {int}:
    return int
  if kinds and kinds <= {int, float}:
    return float
  if kinds and kinds <= {str}:
    return str
  return None


def check_list_fields(name: str, argv: list[str], default: str) -> None:
  """A tuple-valued config field overridden with elements of another type (`--config.seeds=abc`)."""
  overrides = _overrides(argv, name)
  if not overrides:
    return
  config = flags.FLAGS[name].value
  reference = _load_config(_config_path(argv, name, default))
  for field, raw in overrides:
    if not _has_field(reference, field) or not _has_field(config, field):
      continue
    before = reference
    after = config
    for part in field.split("."):
      before, after = before[part], after[part]
    if not isinstance(before, (tuple, list)) or not isinstance(after, (tuple, list)):
      continue
    kind = _element_kind(before)
    if kind is None:
      continue
    if kind is str and len(after) == 1 and isinstance(after[0], str) and (
        "," in after[0] or after[0].strip()[:1] in "(["):
      # ml_collections keeps an unquoted list ('q_proj,v_proj' or '(q_proj,v_proj)') as ONE
      # string; split it into the names the user meant.
      inner = after[0].strip()
      if inner[:1] in "([" and inner[-1:] in ")]":
        inner = inner[1:-1]
      names = tuple(p.strip().strip("'\"").strip() for p in inner.split(","))
      parent = config
      for part in field.split(".")[:-1]:
        parent = parent[part]
      parent[field.split(".")[-1]] = tuple(n for n in names if n)
      continue
    ok = (all(isinstance(v, int) and not isinstance(v, bool) for v in after) if kind is int else
          all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in after)
          if kind is float else all(isinstance(v, str) for v in after))
    if not ok:
      example = ",".join(str(v) for v in before) or "a,b"
      what = {int: "integers", float: "numbers", str: "names"}[kind]
      raise UserError(f"--{name}.{field}={raw}: expected a comma-separated list of {what}, "
                      f"e.g. --{name}.{field}={example}")


# ----------------------------------------------------------------------------- flag parsing


_CONFIG_FLAGS: dict[str, str] = {}  # config flag name -> default config file


def _parse_flags(argv: list[str]) -> list[str]:
  if any(a in ("--help", "-h", "-?", "--helpshort") for a in argv[1:]):
    app.usage(shorthelp=True, writeto_stdout=True, exitcode=0)  # absl itself exits 1
  prog = os.path.basename(argv[0]) if argv else "launcher"
  try:
    try:
      rest = flags.FLAGS(argv)
      for name in list(flags.FLAGS):  # config files load lazily: surface their errors now
        flag = flags.FLAGS[name]
        if type(flag).__name__ == "_ConfigFlag" and flag.value is not None:
          flag.value.keys()
      for name, default in _CONFIG_FLAGS.items():
        check_list_fields(name, argv, default)
    except Exception as e:  # noqa: BLE001: a config file may raise anything
      for name, default in _CONFIG_FLAGS.items():
        message = _config_load_message(_config_path(argv, name, default), e)
        if message:
          fail(f"--{name}: {message}")
        if isinstance(e, (KeyError, AttributeError)):
          message = _unknown_field_message(argv, name, default)
          if message:
            fail(message)
      raise
    if not flags.FLAGS["verbosity"].present:  # orbax/absl INFO lines drown the progress output
      logging.set_verbosity(logging.WARNING)
    return rest
  except (flags.Error, UserError, ValueError, OSError, KeyError, AttributeError, TypeError) as e:
    fail(f"{prog}: {e} (run with --help to see every flag)")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def define_config_file(name: str = "config", default: str = "configs/default.py",
                       help_text: str = "Config file (configs/*.py); override any field with "
                       "--config.<section>.<field>=value."):
  """`config_flags.DEFINE_config_file` with a repo-relative default and exit-2 errors.

  ml_collections parses `--config.x=...` overrides while the flag is being defined, so a typo in
  a field name would otherwise end in a traceback before `run` starts.
  """
  from ml_collections import config_flags

  if not os.path.isabs(default):
    default = os.path.join(ROOT, default)
  _CONFIG_FLAGS[name] = default
  try:
    holder = config_flags.DEFINE_config_file(name, default, help_text)
    # List it under the launcher in --help (it is defined from this module).
    flags.FLAGS.register_flag_by_module(sys.argv[0], flags.FLAGS[name])
    return holder
  except Exception as e:  # noqa: BLE001: see _parse_flags
    message = _config_load_message(default, e)
    if message:
      fail(f"--{name}: {message}")
    if isinstance(e, (KeyError, AttributeError)):
      message = _unknown_field_message(sys.argv, name, default)
      if message:
        fail(message)
    if isinstance(e, (AttributeError, KeyError, ValueError, TypeError, OSError, flags.Error)):
      fail(f"--{name}: {e} (see the config file for every field)")
    raise
_SHORT: dict[str, tuple[str, type | None]] = {}  # short flag -> (config field, element type)


def _section(config, field: str):
  """(the section holding a dotted --config field, its last name)."""
  *parents, name = field.split(".")
  for part in parents:
    config = config[part]
  return config, name


def define_flags_from(helps: dict[str, str], choices: dict[str, Iterable[str]] | None = None):
  """Short flags for --config fields: one knob, one default (the config's). `helps` maps a dotted
  field ("generate.num_beams"; "model=model.path" names the flag) to its help; the flag shows
  the field's value in the --config default file and, only when given, replaces the field
  (`config_of`). `choices`: {field: names} makes an enum flag; a tuple field is a list flag."""
  defaults = _load_config(_CONFIG_FLAGS["config"])
  define = {bool: flags.DEFINE_boolean, int: flags.DEFINE_integer, float: flags.DEFINE_float,
            str: flags.DEFINE_string, tuple: flags.DEFINE_list}
  for key, help_text in helps.items():
    name, _, field = key.rpartition("=")
    name = name or field.rsplit(".", 1)[-1]
    section, last = _section(defaults, field)
    value, help_text = section[last], f"{help_text} (= --config.{field})"
    if choices and field in choices:
      flags.DEFINE_enum(name, value, list(choices[field]), help_text)
    else:
      define[type(value)](name, list(map(str, value)) if isinstance(value, tuple) else value,
                          help_text)
    flags.FLAGS.register_flag_by_module(sys.argv[0], flags.FLAGS[name])
    _SHORT[name] = (field, (_element_kind(value) or str) if isinstance(value, tuple) else None)


def _typed() -> set[str]:
  """The fields set on the command line as --config.FIELD."""
  return {field for field, _ in _overrides(sys.argv, "config")}


def given(field: str) -> bool:
  """Whether the command line sets `field` (by its short flag or as --config.FIELD)."""
  return field in _typed() or any(f == field and flags.FLAGS[n].present
                                  for n, (f, _) in _SHORT.items())


def config_of(holder, check: bool = True, **check_kw):
  """The --config tree with the short flags given on the command line written into it, checked
  by `check_config(config, **check_kw)` unless `check` is False."""
  config, typed = holder.value, _typed()
  for name, (field, kind) in _SHORT.items():
    value = flags.FLAGS[name].value
    if not flags.FLAGS[name].present:
      continue
    if field in typed:
      raise UserError(f"--{name} and --config.{field} are one field: give one of them")
    try:
      section, last = _section(config, field)
      section[last] = value if kind is None else tuple(map(kind, value))
    except ValueError:
      raise UserError(f"--{name}: expected {kind.__name__} values, got {','.join(value)}") from None
  if check:
    check_config(config, **check_kw)
  return config


def check_config(config, **kw) -> None:
  """`config.check`, the one checker; its messages name the short flag of a field not given as
  --config.FIELD (`--num_beams=0: must be >= 1`)."""
  from bigrec_jax import config as config_lib

  try:
    config_lib.check(config, **kw)
  except UserError as e:
    message, typed = str(e), _typed()
    for name, (field, _) in _SHORT.items():
      if field not in typed:
        message = re.sub(rf"--config\.{re.escape(field)}(?![\w.])", f"--{name}", message)
    raise UserError(message) from None


def define_multihost_flags() -> Callable[[], None]:
  """--coordinator_address/--num_processes/--process_id; returns the function that applies them.

  Cloud TPU slices and SLURM jobs are detected without the flags (parallel.py).
  """
  coordinator = flags.DEFINE_string("coordinator_address", "",
                                    "Multi-host: host:port of process 0 (the coordinator).")
  count = flags.DEFINE_integer("num_processes", 1, "Multi-host: number of processes.")
  index = flags.DEFINE_integer("process_id", 0, "Multi-host: index of this process.")
  for holder in (coordinator, count, index):
    flags.FLAGS.register_flag_by_module(sys.argv[0], flags.FLAGS[holder.name])

  def initialize() -> None:
    from bigrec_jax import parallel

    check_multihost(coordinator.value, count.value, index.value)

    parallel.maybe_initialize_distributed(coordinator.value, count.value, index.value)

  return initialize


def check_multihost(coordinator: str, count: int, index: int) -> None:
  """--coordinator_address/--num_processes/--process_id that cannot start a multi-host run."""
  if count < 1:
    raise UserError(f"--num_processes={count}: must be >= 1")
  if not 0 <= index < count:
    raise UserError(f"--process_id={index}: must be in 0..{count - 1} (--num_processes={count})")
  if coordinator:
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise UserError(f"--coordinator_address={coordinator}: expected host:port, e.g. "
                      "10.0.0.1:1234")
  elif count > 1 and not any(os.environ.get(v) for v in (
      "TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID", "MEGASCALE_COORDINATOR_ADDRESS")):
    raise UserError(f"--num_processes={count} needs --coordinator_address=host:port (process "
                    "0's address); without it each process would run alone")


def run(main: Callable[[list[str]], None]) -> None:
  def guarded(argv):
    try:
      main(argv)
    except UserError as e:
      fail(str(e))

  app.run(guarded, flags_parser=_parse_flags)
