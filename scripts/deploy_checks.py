"""Offline checks of the deployment files (scripts/check_deploy.sh, i.e. `make check-deploy`, runs them).

python scripts/deploy_checks.py compose        # compose files, each and merged, vs the Compose Spec schema
python scripts/deploy_checks.py k8s            # deploy/k8s vs Kubernetes schemas, deploy/kserve loosely
python scripts/deploy_checks.py start-command  # print the serving image's start command (Dockerfile CMD)
python scripts/deploy_checks.py smoke          # run that command in a fresh venv from requirements/serve.txt
python scripts/deploy_checks.py platforms [--extras serve,train]  # the pins resolve on the four platforms
"""

from __future__ import annotations

import argparse
import shlex
import sys

from deploycheck import COMPOSE_FILES, CheckError
from deploycheck.compose import check_compose
from deploycheck.dockerfile import start_command
from deploycheck.k8s import check_k8s
from deploycheck.smoke import smoke


def _report(problems: list[str], what: str) -> int:
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    if problems:
        print(f"{what}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{what}: ok")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("check", choices=["compose", "k8s", "start-command", "smoke", "platforms"])
    parser.add_argument("--extras", default="serve", help="platforms: the extras to resolve, comma-separated")
    args = parser.parse_args(argv)
    try:
        if args.check == "platforms":
            from deploycheck.platforms import check_all  # asks the package index

            extras = tuple(args.extras.split(","))
            return _report(check_all(extras), f"pins of .[{args.extras}] on every platform")
        if args.check == "compose":
            return _report(
                check_compose(), "compose (" + ", ".join(f.name for f in COMPOSE_FILES) + ", merged)"
            )
        if args.check == "k8s":
            return _report(check_k8s(), "kubernetes + kserve manifests")
        if args.check == "start-command":
            print(shlex.join(start_command()))
            return 0
        smoke()
        return 0
    except CheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
