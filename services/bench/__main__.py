"""``python -m simultrain.bench``: the same as ``simultrain bench``."""

from simultrain.bench.cli import main

if __name__ == "__main__":
    main()
