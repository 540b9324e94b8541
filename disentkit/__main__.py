"""`python -m disentkit ...` is the `disentkit` command line."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
