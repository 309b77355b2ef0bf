"""``python -m nas`` is ``python -m nas.search``."""
from nas.search import run_cli

if __name__ == "__main__":
    run_cli()
