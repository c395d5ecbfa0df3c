"""One runner per task. A runner returns its results; only harness.records writes files."""


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


class Unsupported(RuntimeError):
    """The variant, precision or layout cannot run on this device."""
