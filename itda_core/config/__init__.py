"""The options of every job, one dataclass per job, each field with its help text (:func:`itda_core.options.option`).
They import nothing heavy, so the CLI derives its options and help from them without loading torch."""
