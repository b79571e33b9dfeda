"""The config tree (configs/default.py) meets the code here: options built from its sections.

`options(cls, section, **given)` builds an options dataclass (GenerateOptions, EvaluateOptions,
...) from the config section of the same field names, so a field added to the section reaches
the stage without a field-by-field copy; `given` supplies what the section does not hold (paths
of the workdir, fields of other sections). A dataclass field whose default is None takes None for
the config's "" or 0 (a locked config cannot hold None and a number or string in turn).
"""
from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def options(cls: type[T], section, **given: Any) -> T:
  """cls(**{its fields the section holds}, **given); `given` wins over the section."""
  kw = {}
  for field in dataclasses.fields(cls):
    if field.name in given or field.name not in section:
      continue
    value = section[field.name]
    if field.default is None and value in ("", 0):
      value = None
    kw[field.name] = tuple(value) if isinstance(value, list) else value
  return cls(**kw, **given)
