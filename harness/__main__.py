"""`python -m harness ...`: the `harness` command, for machines where the package is on PYTHONPATH but not installed."""
from harness.cli import main

main()
