"""The exceptions every layer raises, and how a failure maps to a record's status. A leaf: imports nothing of ours.

  ConfigError   a bad config: one line before any work (a single run exits 2; a sweep stops before its first job)
  DataError     bad data settings or files, reported like any bad config
  Unsupported   the variant, precision or layout cannot run on this device  -> status `unsupported`
  Diverged      the loss became NaN or infinite                              -> status `diverged`
"""
from __future__ import annotations


class ConfigError(ValueError):
    pass


class DataError(ConfigError):
    pass


class Unsupported(RuntimeError):
    pass


class Diverged(RuntimeError):
    pass


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA raises OutOfMemoryError; the CPU allocator raises a RuntimeError that says it could not allocate."""
    import torch
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and ("can't allocate memory" in str(error) or "out of memory" in str(error))


def first_line(error: BaseException) -> str:
    """An error's message as one line (a record's `error`), its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
