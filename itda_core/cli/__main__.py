"""``python -m itda_core.cli``: the same as the ``itda`` command."""

from itda_core.cli.app import main

main()
