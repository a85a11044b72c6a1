"""Every child's output into its own file (the Supervisor writes one prefixed stream).

WHY: the secret scan must read everything each process printed, and a failing run is
diagnosed from one service's file, not from an interleaved console.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO


class LogSplitter:
    """A text sink for `shared.supervisor.Supervisor(out=...)`: lines `name | text` go
    to `<dir>/<name>.log`, the supervisor's own lines to `supervisor.log`, all of it to
    `all.log` as well."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, IO[str]] = {}
        self._all = self._open("all")
        self._partial = ""

    def _open(self, name: str) -> IO[str]:
        f = self._files.get(name)
        if f is None:
            f = (self.directory / f"{name}.log").open("a", encoding="utf-8")
            self._files[name] = f
        return f

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        self._all.write(text)
        data = self._partial + text
        lines = data.split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._route(line)
        return len(text)

    def _route(self, line: str) -> None:
        name, sep, rest = line.partition(" | ")
        name = name.strip()
        if sep and name and " " not in name:
            self._open(name).write(rest + "\n")
        else:
            self._open("supervisor").write(line + "\n")

    def flush(self) -> None:
        for f in self._files.values():
            f.flush()

    def close(self) -> None:
        if self._partial:
            self._route(self._partial)
            self._partial = ""
        for f in self._files.values():
            f.close()
        self._files.clear()

    def files(self) -> list[Path]:
        return sorted(self.directory.glob("*.log"))
