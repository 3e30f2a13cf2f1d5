"""The one exception type for bad user input: a one-line message naming the file and the field."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad input given by the user. The message names the file and the field and says what was expected; it is
    always one line (line breaks in a wrapped library message are folded into spaces)."""

    def __init__(self, path: str | Path | None, message: str, field: str | None = None):
        message = " ".join(str(message).split())  # one line, whatever a library's text held
        where = f"{path}" if path is not None else "<input>"
        if field:
            where += f" [{field}]"
        super().__init__(f"{where}: {message}")
        self.path = None if path is None else Path(path)
        self.field = field
