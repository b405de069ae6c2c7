"""Reading and writing one tar shard, on webdataset's tar layer.

Writing: :class:`ShardWriter` writes ``NAME.tar`` through a hidden temporary file renamed
into place when it is closed without an error, so a killed conversion never leaves a
half-written shard under a shard's name. Reading: :func:`iter_shard` yields each sample's
members (webdataset's ``{key}.{ext}`` grouping); a tar that ends mid-member is a
:class:`ShardError` naming the shard.
"""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["ShardError", "ShardWriter", "iter_shard"]


class ShardError(RuntimeError):
    """A shard that cannot be read (truncated, not a tar, missing): names the shard."""


class ShardWriter:
    """Writes the samples of one shard ``path`` atomically (tmp + rename on :meth:`close`).

    Use as a context manager; an exception inside the block discards the temporary file.
    Each sample is ``write(key, {ext: bytes})`` (a ``json`` value may be a dict).
    """

    def __init__(self, path: str | Path) -> None:
        import webdataset

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._tar = webdataset.TarWriter(self._file, encoder=False, mtime=0.0)
        self.count = 0

    def write(self, key: str, members: Mapping[str, Any]) -> None:
        """Adds sample ``key`` with its members (extension -> bytes; a dict is json-encoded)."""
        sample: dict[str, Any] = {"__key__": key}
        for ext, value in members.items():
            if isinstance(value, (dict, list)):
                value = json.dumps(value, separators=(",", ":")).encode("utf-8")
            elif isinstance(value, str):
                value = value.encode("utf-8")
            sample[ext] = value
        self._tar.write(sample)
        self.count += 1

    def close(self) -> int:
        """Finishes the tar and renames it into place; returns the number of samples."""
        self._tar.close()  # also closes the file object
        os.chmod(self._tmp, 0o644)
        os.replace(self._tmp, self.path)
        return self.count

    def discard(self) -> None:
        """Drops the temporary file (the shard is not written)."""
        try:
            self._tar.close()
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


def iter_shard(url: str | Path) -> Iterator[dict[str, Any]]:
    """The samples of shard ``url`` in stored order: ``{"__key__": key, ext: bytes, ...}``.

    ``url`` is a path or anything ``webdataset.gopen`` opens (``pipe:``, ``http(s)://``...).
    A :class:`ShardError` names the shard when it is missing, not a tar, or truncated.
    """
    import webdataset
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    name = str(url)
    if "://" not in name and not name.startswith("pipe:") and not Path(name).is_file():
        raise ShardError(f"shard {name} not found")
    stream = webdataset.gopen(name, "rb")
    try:
        files = ({**f, "__url__": name} for f in tar_file_iterator(stream))
        yield from group_by_keys(files)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ShardError(f"shard {name} is truncated or not a tar file ({e})") from None
    finally:
        stream.close()
