"""`python -m mlci` runs the CLI (used to start child processes with the same interpreter)."""

from mlci.cli import main

main()
