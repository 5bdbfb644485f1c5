"""The ``cafusion`` command line."""
