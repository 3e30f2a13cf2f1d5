"""``python -m tomohet``: the same command as ``tomohet``."""

from .cli.main import app

app(prog_name="tomohet")
