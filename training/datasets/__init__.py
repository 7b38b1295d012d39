"""Real datasets beyond MNIST, fetched by `python -m training data` from package registries, sha256-checked,
with their licences recorded: Fashion-MNIST (a Debian package) and colour emoji (two npm packages).
"""

from __future__ import annotations


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
