"""A cache of parsed kline files: the columns of one file in an uncompressed `.npz`.

Why: parsing a month of 1m CSV costs tens of milliseconds per symbol even with numpy's C
parser (gunzip, then text to float); reading the same columns back from an `.npz` is a
memory copy.  A backtest re-reads the same files run after run, so the second run should
not parse them again.

Trust rules (a cache must never change a result):
- an entry belongs to one source path (its name is a hash of the absolute path) and records
  the source's size and mtime_ns; if either differs, the entry is stale and the file is
  parsed again (and the entry overwritten);
- any failure to read an entry (truncated, bad zip CRC, missing column, wrong dtype or
  length, bad JSON) makes it a miss: it is parsed again and rewritten, never half-used;
- entries are written to a temporary file in the same directory and renamed into place, so a
  reader never sees a half-written entry and two writers never mix their bytes;
- the cache is an optimization: a directory that cannot be written just means no cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = 1  # bump when the parsed columns or the meta change meaning
_META = "__meta__"


class KlineCache:
    """Parsed columns of kline files under `root`, keyed by source path, size and mtime."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.hits = self.misses = self.writes = 0

    def entry(self, source: Path) -> Path:
        """Where the entry of `source` lives (one entry per absolute source path)."""
        src = str(source.resolve())
        digest = hashlib.sha256(src.encode()).hexdigest()[:24]
        return self.root / f"{source.name}.{digest}.npz"

    @staticmethod
    def _identity(source: Path) -> dict[str, Any]:
        st = source.stat()
        return {"format": FORMAT, "path": str(source.resolve()), "size": st.st_size,
                "mtime_ns": st.st_mtime_ns}  # fmt: skip

    def get(
        self, source: Path, schema: dict[str, type]
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """(columns, meta) stored for `source`, or None when absent, stale or unreadable.
        `schema` maps every expected column to its dtype; all columns must be 1-D, of
        that dtype and of one non-zero length."""
        path = self.entry(source)
        try:
            ident = self._identity(source)
            with np.load(path, allow_pickle=False) as z:
                if set(z.files) != {*schema, _META}:
                    raise ValueError("columns differ")
                meta = json.loads(z[_META].tobytes())
                if meta.get("identity") != ident:
                    raise ValueError("stale")
                cols = {k: z[k] for k in schema}
            n = len(cols[next(iter(schema))])
            for k, dtype in schema.items():
                a = cols[k]
                if a.ndim != 1 or a.dtype != np.dtype(dtype) or len(a) != n or n == 0:
                    raise ValueError(f"bad column {k}")
            data = dict(meta["data"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError,
                zipfile.BadZipFile):  # fmt: skip
            self.misses += 1
            return None
        self.hits += 1
        return cols, data

    def put(self, source: Path, cols: dict[str, np.ndarray], data: dict[str, Any]) -> bool:
        """Store `cols` and the JSON-able `data` for `source`; False if it could not be
        written (read-only or full disk): the caller just goes on without a cache."""
        tmp = None
        try:
            meta = {"identity": self._identity(source), "data": data}
            blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".npz")
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **cols, **{_META: blob})
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from others
            os.replace(tmp, self.entry(source))
            tmp = None
        except OSError:
            return False
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
        self.writes += 1
        return True
