"""The ``tomohet`` command (Typer + rich)."""
