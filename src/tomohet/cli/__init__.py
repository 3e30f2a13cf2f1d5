"""The ``tomohet`` command (Typer + rich)."""

__all__ = ["classify", "demo", "landscape", "main", "options", "reconstruct", "runfolder", "runlog", "simulate"]
