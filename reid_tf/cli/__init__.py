"""Command lines of reid-tf that are not ``solution.py`` (each run with ``python -m``)."""
