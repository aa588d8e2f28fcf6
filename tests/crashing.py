"""A job module that cannot be imported: its workers crash at start-up."""

raise RuntimeError("this module is broken on purpose")
