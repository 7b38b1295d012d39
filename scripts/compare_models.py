"""Print the test metrics of reproduced models beside the committed ones: `compare_models.py NEW OLD`."""

from __future__ import annotations

import sys
from pathlib import Path

from vae_contract.manifest import ManifestError, list_model_names, model_dir, verify_model_dir

FIELDS = ("neg_elbo", "iwae_nll", "iwae_k", "kl", "active_units")


def main(new_root: str, old_root: str) -> int:
    for name in list_model_names(Path(new_root)):
        new = verify_model_dir(model_dir(Path(new_root), name))
        try:
            old = verify_model_dir(model_dir(Path(old_root), name, new.version))
        except ManifestError:
            old = None
        for field in FIELDS:
            now = getattr(new.metrics, field, None)
            before = getattr(old.metrics, field, None) if old else None
            print(f"{name}/{new.version} {field:>13}: reproduced {now!s:>9}  committed {before!s:>9}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
