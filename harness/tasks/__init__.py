"""One runner per task. A runner returns its results; only harness.records writes files."""


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


class Unsupported(RuntimeError):
    """The variant, precision or layout cannot run on this device."""


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA raises OutOfMemoryError; the CPU allocator raises a RuntimeError that says it could not allocate."""
    import torch
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and ("can't allocate memory" in str(error) or "out of memory" in str(error))
