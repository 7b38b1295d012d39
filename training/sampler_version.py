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
from datetime import UTC, datetime
from pathlib import Path

from training.export import export_sampler, sampler_spec, write_preview
from training.new_version import staged_version
from training.onnx_weights import rebuild
from vae_contract.manifest import (
    MANIFEST_FILE,
    SAMPLER_FILE,
    Manifest,
    write_manifest,
)

log = logging.getLogger(__name__)


def publish(source: Path, models_dir: Path | None = None, version: int | None = None) -> Path:
    """Copy `source` (a version folder) to a new version of the same model with a sampler graph."""
    source = Path(source)
    vae, manifest = rebuild(source)
    with staged_version(source, manifest.name, (MANIFEST_FILE, "README.md"), version, models_dir) as new:
        sampler_path = new.folder / SAMPLER_FILE
        diff = export_sampler(vae, sampler_path)
        parity = {**(manifest.parity or {}), "sampler_max_abs_diff": diff}
        raw = manifest.model_dump()
        raw.update(
            version=new.version,
            created=datetime.now(UTC),
            description=f"{manifest.description}; draws pixels from the mixture (sampler.onnx), weights of "
            f"{manifest.name}/{manifest.version}",
            sampler=sampler_spec(vae, sampler_path).model_dump(),
            parity=parity,
        )
        published = Manifest.model_validate(raw)
        write_manifest(new.folder, published)
        write_preview(new.folder, published)
    log.info("published %s (sampler parity %.3g)", new.target, diff)
    return new.target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a version folder, e.g. models/emoji/4")
    parser.add_argument("--version", type=int, default=None, help="the new version (default: latest + 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(publish(args.source, version=args.version))


if __name__ == "__main__":
    main()
