"""The exceptions every layer raises, and how a failure maps to a record's status. A leaf: imports nothing of ours.

  ConfigError   a bad config: one line before any work (a single run exits 2; a sweep stops before its first job)
  DataError     bad data settings or files, reported like any bad config
  Unsupported   the variant, precision or layout cannot run on this device  -> status `unsupported`
  Diverged      the loss became NaN or infinite                              -> status `diverged`

and the checks of a setting's value that raise a ConfigError naming it (check_flag, check_count, check_range,
check_positive).
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


def check_flag(value, key: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be true or false")


def check_count(value, key: str, what: str = "") -> None:
    """A whole number, 0 or more; `what`: of what, and what 0 means."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{key}={value!r} must be a whole number {what or '(0 or more)'}")


def check_range(value, key: str, low: float, high: float = float("inf"), note: str = "") -> None:
    """A number in [low, high)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
        span = f"in [{low:g}, {high:g})" if high < float("inf") else f">= {low:g}"
        raise ConfigError(f"{key}={value!r} must be a number {span}{' ' + note if note else ''}")


def check_positive(value, key: str, *, integer: bool = False) -> None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} must be a positive number") from None
    if not number > 0 or (integer and number != int(number)):
        raise ConfigError(f"{key}={value!r} must be a positive {'integer' if integer else 'number'}")


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
