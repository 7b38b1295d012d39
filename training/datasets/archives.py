"""Package archives as data containers: `ar` (Debian .deb), tar, and the two registry clients that fetch them.

A .deb is an `ar` archive (`!<arch>\n`, then 60-byte member headers) holding `debian-binary`,
`control.tar.*` and `data.tar.*`; reading it in Python means no dpkg and no root. Every download is checked
against a pinned sha256 before anything inside it is read.
"""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from training.errors import DataError

log = logging.getLogger("training")

AR_MAGIC = b"!<arch>\n"
AR_HEADER = 60


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_sha256(data: bytes, expected: str, what: str, how_to_fix: str) -> None:
    digest = sha256_bytes(data)
    if digest != expected:
        raise DataError(f"{what}: sha256 {digest} != expected {expected}; refusing to use it. {how_to_fix}")


def read_ar(data: bytes) -> dict[str, bytes]:
    """Members of an `ar` archive by name (System V / GNU names: a trailing '/' is dropped)."""
    if not data.startswith(AR_MAGIC):
        raise DataError("not an ar archive (bad magic); a .deb starts with '!<arch>'")
    members: dict[str, bytes] = {}
    pos = len(AR_MAGIC)
    while pos < len(data):
        header = data[pos : pos + AR_HEADER]
        if len(header) < AR_HEADER or header[58:60] != b"`\n":
            raise DataError(f"truncated or corrupt ar member header at byte {pos}")
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError as exc:
            raise DataError(f"corrupt ar member size at byte {pos}") from exc
        start = pos + AR_HEADER
        if start + size > len(data):
            raise DataError(f"ar member {name!r} is truncated ({size} bytes declared)")
        members[name] = data[start : start + size]
        pos = start + size + (size % 2)  # members are padded to an even offset
    return members


def deb_data_files(deb: bytes, prefix: str) -> dict[str, bytes]:
    """Regular files under `prefix` in a .deb's data.tar.{xz,gz,bz2,}, keyed by their path below prefix."""
    members = read_ar(deb)
    names = [n for n in members if n.startswith("data.tar")]
    if not names:
        raise DataError(f"no data.tar member in the package (members: {sorted(members)})")
    if names[0].endswith(".zst"):
        raise DataError("data.tar.zst is not readable by Python's tarfile; unpack it with `dpkg-deb -x`")
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(members[names[0]]), mode="r:*") as tar:
        for info in tar:
            path = info.name.removeprefix("./").lstrip("/")
            if info.isfile() and path.startswith(prefix):
                handle = tar.extractfile(info)
                if handle is not None:
                    files[path[len(prefix) :]] = handle.read()
    return files


def tar_members(archive: bytes, wanted: set[str]) -> dict[str, bytes]:
    """The regular files named in `wanted` from a (compressed) tar archive, read in one streaming pass."""
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
        for info in tar:
            if info.isfile() and info.name in wanted:
                handle = tar.extractfile(info)
                if handle is not None:
                    found[info.name] = handle.read()
    return found


def _run(cmd: list[str], cwd: Path, what: str, how_to_fix: str) -> None:
    if shutil.which(cmd[0]) is None:
        raise DataError(f"{cmd[0]} is not installed, so {what} cannot be fetched. {how_to_fix}")
    log.info("fetching %s: %s", what, " ".join(cmd))
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DataError(f"`{' '.join(cmd)}` failed ({detail[0]}). {how_to_fix}")


def download_deb(package: str, version: str, how_to_fix: str) -> bytes:
    """`apt-get download package=version` in a temporary folder (no install, no root needed); the bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        _run(["apt-get", "download", f"{package}={version}"], Path(tmp), package, how_to_fix)
        debs = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if not debs:
            raise DataError(f"apt-get download left no {package}_*.deb. {how_to_fix}")
        return debs[0].read_bytes()


def download_npm(spec: str, how_to_fix: str) -> bytes:
    """`npm pack name@version` in a temporary folder (the registry tarball, no install); the bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        _run(["npm", "pack", spec, "--silent"], Path(tmp), spec, how_to_fix)
        tgzs = sorted(Path(tmp).glob("*.tgz"))
        if not tgzs:
            raise DataError(f"npm pack {spec} left no .tgz. {how_to_fix}")
        return tgzs[0].read_bytes()
