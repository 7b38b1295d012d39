"""A new version of a published model made from an older one (`training.sampler_version`,
`training.aggregate_prior`): the files are staged in a hidden folder beside the versions, and the folder
becomes the version only once its manifest verifies, so the service's watcher never sees half a version.

Versions are immutable: a version that exists is refused, never replaced.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from training.errors import ExportError
from vae_contract.manifest import latest_version, verify_model_dir


@dataclass(frozen=True)
class Staged:
    folder: Path  # where to write the new version's files
    version: int
    target: Path  # the version folder it becomes


@contextmanager
def staged_version(
    source: Path,
    name: str,
    keep_out: tuple[str, ...],
    version: int | None = None,
    models_dir: Path | None = None,
) -> Iterator[Staged]:
    """Stage a new version of `name` (default: latest + 1) holding `source`'s files except `keep_out`; when
    the block ends the staging folder is verified and renamed to the version, and if anything raises it is
    removed."""
    models_dir = Path(models_dir) if models_dir is not None else Path(source).parent.parent
    chosen = version if version is not None else (latest_version(models_dir, name) or 0) + 1
    target = models_dir / name / str(chosen)
    if target.exists():
        raise ExportError(f"{target} already exists; model versions are immutable")
    staging = Path(tempfile.mkdtemp(prefix=f".{chosen}.", dir=target.parent))
    try:
        for item in Path(source).iterdir():
            if item.is_file() and item.name not in keep_out:
                shutil.copy2(item, staging / item.name)
        yield Staged(staging, chosen, target)
        verify_model_dir(staging)
        staging.chmod(0o755)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
