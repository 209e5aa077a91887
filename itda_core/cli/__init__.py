"""The ``itda`` command line, a leaf: it imports the library and nothing imports it (entry point
:func:`itda_core.cli.app.main`). One module per command group; each option comes from a config dataclass."""
