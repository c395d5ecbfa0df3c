"""Benchmarking and scaling-law study harness for transformer language models."""
__version__ = "0.1.0"


def load_results(paths):
    """One row per run from records under run/sweep directories, globs or record files (see harness.records)."""
    from harness.records import load_results as _load
    return _load(paths)
