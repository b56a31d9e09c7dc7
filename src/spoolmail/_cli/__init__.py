"""The ``spoolmail`` command: the only place that assembles a whole service from settings."""
