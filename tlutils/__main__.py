"""``python -m tlutils``: see :mod:`tlutils.cli`."""

from tlutils.cli import main

main()
