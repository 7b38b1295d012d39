"""Facts read from the Dockerfile: stages, the serving image's start command, its ENV and COPYs.

The Dockerfile is the single source of these; the smoke run and the tests read them from here, so they cannot
drift from what the image does.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from deploycheck import DOCKERFILE, SERVE_STAGE, CheckError


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def all(self, instruction: str) -> list[str]:
        return [args for ins, args in self.instructions if ins == instruction]


def dockerfile_stages(path: Path = DOCKERFILE) -> list[Stage]:
    """Stages in order, each with its instructions (continuation lines joined, comments dropped)."""
    stages: list[Stage] = []
    logical = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if logical and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        instruction, _, args = logical.partition(" ")
        instruction, args, logical = instruction.upper(), args.strip(), ""
        if instruction == "FROM":
            words = args.split()
            words = [w for w in words if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name=name, base=words[0]))
        elif stages:
            stages[-1].instructions.append((instruction, args))
    return stages


def stage(name: str, path: Path = DOCKERFILE) -> Stage:
    """A stage as the image it builds sees it: a stage FROM another stage inherits that stage's instructions
    (its files, ENV, USER, CMD, HEALTHCHECK), listed first."""
    stages = {s.name: s for s in dockerfile_stages(path)}
    if name not in stages:
        raise CheckError(f"{path.name} has no stage named {name!r}")
    chain = [stages[name]]
    while chain[-1].base in stages and len(chain) <= len(stages):
        chain.append(stages[chain[-1].base])
    merged = Stage(name=name, base=chain[-1].base)
    for s in reversed(chain):
        merged.instructions.extend(s.instructions)
    return merged


def _exec_form(args: str, what: str) -> list[str]:
    try:
        argv = json.loads(args)
    except json.JSONDecodeError:
        raise CheckError(f"{what} must be in exec form (a JSON array), got {args!r}") from None
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        raise CheckError(f"{what} must be a non-empty JSON array of strings")
    return argv


def start_command(path: Path = DOCKERFILE) -> list[str]:
    """The serving image's start command: its ENTRYPOINT (if any) followed by its CMD, both in exec form."""
    stages = dockerfile_stages(path)
    if stages[-1].name != SERVE_STAGE:
        raise CheckError(f"the last stage (the default `docker build` target) must be {SERVE_STAGE!r}")
    serve = stage(SERVE_STAGE, path)
    entrypoint = serve.all("ENTRYPOINT")
    cmd = serve.all("CMD")
    if not cmd:
        raise CheckError("the serve stage has no CMD")
    argv = _exec_form(entrypoint[-1], "ENTRYPOINT") if entrypoint else []
    return argv + _exec_form(cmd[-1], "CMD")


def stage_env(s: Stage) -> dict[str, str]:
    """ENV of one stage (`ENV K=V K2="V 2"` form), references like $PATH left as written."""
    env: dict[str, str] = {}
    for args in s.all("ENV"):
        for word in shlex.split(args):
            key, sep, value = word.partition("=")
            if not sep:
                raise CheckError(f"use the `ENV KEY=VALUE` form, got {args!r}")
            env[key] = value
    return env


def option_value(argv: list[str], option: str) -> str:
    if option not in argv or argv.index(option) + 1 >= len(argv):
        raise CheckError(f"the start command {argv} has no {option} VALUE")
    return argv[argv.index(option) + 1]


def with_options(argv: list[str], **values: str) -> list[str]:
    """argv with the values of existing options replaced: with_options(a, models_dir=...) -> --models-dir."""
    out = list(argv)
    for key, value in values.items():
        option = "--" + key.replace("_", "-")
        option_value(out, option)
        out[out.index(option) + 1] = value
    return out


def copies(s: Stage) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY in a stage that copies from the build context."""
    result = []
    for args in s.all("COPY"):
        words = shlex.split(args)
        if any(w.startswith("--from=") for w in words):
            continue
        paths = [w for w in words if not w.startswith("--")]
        result.append((paths[:-1], paths[-1]))
    return result
