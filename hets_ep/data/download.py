"""Download-and-verify: fetch to a temporary file, check SHA-256, then rename into place.

A half-finished or corrupt download never takes the final name, so a file present in the
cache under its own name is a verified one (and it is verified again on every load).
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from hets_ep.errors import DataError

_CHUNK = 1 << 20


class DownloadError(DataError):
    """A file could not be fetched from any of its addresses; ``reason`` says why."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, sha256: str, remedy: str) -> None:
    """Raise a :class:`DataError` naming ``path`` unless its SHA-256 is ``sha256``."""
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a file")
    got = sha256_of(path)
    if got != sha256:
        raise DataError(f"{path}: SHA-256 mismatch (expected {sha256[:16]}…, got {got[:16]}…): "
                        f"the file is corrupt or truncated; {remedy}")


def _open(url: str, timeout: float):
    return urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "hets-ep"}), timeout=timeout)


def fetch(urls: tuple[str, ...], dest: Path, sha256: str, timeout: float = 30.0) -> Path:
    """Download ``dest`` from the first of ``urls`` that answers; verify; move into place. Its
    folder is made for the download and removed again if the download fails and leaves it empty."""
    made = not dest.parent.exists()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    errors = []
    for url in urls:
        try:
            with _open(url, timeout) as response, open(part, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        out.write(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError, ValueError) as err:
            errors.append(f"{url}: {getattr(err, 'reason', err)}")
            part.unlink(missing_ok=True)
            continue
        got = sha256_of(part)
        if got != sha256:
            part.unlink(missing_ok=True)
            errors.append(f"{url}: downloaded file has SHA-256 {got[:16]}…, expected {sha256[:16]}…")
            continue
        os.replace(part, dest)
        return dest
    if made and not any(dest.parent.iterdir()):
        dest.parent.rmdir()
    raise DownloadError(
        f"could not download {dest.name} ({'; '.join(errors)}). If this machine is offline, fetch it on "
        f"another machine from {urls[0]} and place it at {dest}, or pass dataset.root=DIR with the files",
        "; ".join(errors))
