"""A published version again as a new version with a sampler graph: the same weights, the same encoder,
decoder and scorer files byte for byte, plus `sampler.onnx` (`training.export.SamplerGraph`), which draws
images from p(x | z) instead of returning the mixture's mean.

A new version rather than a file added to the old one: versions are immutable, and a service that does not
know the manifest's `sampler` field refuses the whole folder (DESIGN: an old service never serves a new model
wrongly), so an older service keeps serving the old version beside it. Embeddings do not change: the encoder
is the same file.

    python -m training.sampler_version models/emoji/4            # -> models/emoji/5
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from training.errors import ExportError
from training.export import export_sampler, sampler_spec, write_sampler_preview
from training.onnx_weights import rebuild
from vae_contract.manifest import (
    MANIFEST_FILE,
    SAMPLER_FILE,
    Manifest,
    latest_version,
    verify_model_dir,
    write_manifest,
)

log = logging.getLogger(__name__)


def publish(source: Path, models_dir: Path | None = None, version: int | None = None) -> Path:
    """Copy `source` (a version folder) to a new version of the same model with a sampler graph."""
    source = Path(source)
    vae, manifest = rebuild(source)
    models_dir = Path(models_dir) if models_dir is not None else source.parent.parent
    chosen = version if version is not None else (latest_version(models_dir, manifest.name) or 0) + 1
    target = models_dir / manifest.name / str(chosen)
    if target.exists():
        raise ExportError(f"{target} already exists; model versions are immutable")
    staging = Path(tempfile.mkdtemp(prefix=f".{chosen}.", dir=target.parent))
    try:
        for item in source.iterdir():
            if item.is_file() and item.name not in (MANIFEST_FILE, "README.md"):
                shutil.copy2(item, staging / item.name)
        sampler_path = staging / SAMPLER_FILE
        diff = export_sampler(vae, sampler_path)
        parity = {**(manifest.parity or {}), "sampler_max_abs_diff": diff}
        raw = manifest.model_dump()
        raw.update(
            version=chosen,
            created=datetime.now(UTC),
            description=f"{manifest.description}; draws pixels from the mixture (sampler.onnx), weights of "
            f"{manifest.name}/{manifest.version}",
            sampler=sampler_spec(vae, sampler_path).model_dump(),
            parity=parity,
        )
        published = Manifest.model_validate(raw)
        write_manifest(staging, published)
        write_sampler_preview(staging, published)
        verify_model_dir(staging)
        staging.chmod(0o755)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("published %s (sampler parity %.3g)", target, diff)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a version folder, e.g. models/emoji/4")
    parser.add_argument("--version", type=int, default=None, help="the new version (default: latest + 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(publish(args.source, version=args.version))


if __name__ == "__main__":
    main()
