"""Benchmarking and scaling-law study harness for transformer language models."""
import warnings

__version__ = "0.1.0"

# Our launcher presets (conf/hydra/launcher/) share names with the plugins' schemas on purpose:
# Hydra checks our keys against them, and warns that it does.
warnings.filterwarnings("ignore", message=r"[\s\S]*validated against ConfigStore schema")


def load_results(paths):
    """One row per run from records under run/sweep directories, globs or record files (see harness.records)."""
    from harness.records import load_results as _load
    return _load(paths)
