"""One runner per task: train.py, attention.py, inference.py. A runner returns its results; only harness.records
writes files. Their exceptions live in harness.errors."""
