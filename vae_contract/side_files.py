"""Side files of plain arrays (`.npz`, no pickles) that a manifest declares beside its graphs: read with the
checks every such file gets before its own."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np


def read_plain_arrays(
    path: Path, names: tuple[str, ...], max_bytes: int, too_large: str, error: type[Exception]
) -> dict[str, np.ndarray]:
    """The arrays `names` of the .npz at path, exactly those, read with allow_pickle=False; `error` (with the
    path and what is wrong) for any other file. The members' declared sizes are checked against `max_bytes`
    before anything is read, since a zip member may inflate far beyond the file's size."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if sorted(npz.files) != sorted(names):
                raise error(f"{path}: expected the arrays {', '.join(names)}, found {npz.files}")
            if sum(info.file_size for info in npz.zip.infolist()) > max_bytes:
                raise error(f"{path}: its arrays are larger than {too_large}")
            return {name: npz[name] for name in names}
    except error:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise error(f"{path}: not an .npz of plain arrays ({exc})") from exc
