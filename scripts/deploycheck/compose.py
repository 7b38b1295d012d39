"""docker-compose.yml and its CPU override, each and merged, against the official Compose Spec schema.

The files are read as `docker compose` reads them: anchors and merge keys, `!reset` / `!override` tags, and
`${VAR:-default}` interpolation (defaults only, so the result does not depend on the caller's shell).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deploycheck import COMPOSE_FILES, SCHEMAS, CheckError


class Reset:
    """`!reset`: remove the key from the merged model (Compose 2.24+)."""


@dataclass
class Override:
    """`!override VALUE`: replace instead of merging."""

    value: Any


class ComposeLoader(yaml.SafeLoader):
    pass


def _reset(loader: yaml.SafeLoader, node: yaml.Node) -> Reset:
    return Reset()


def _override(loader: yaml.SafeLoader, node: yaml.Node) -> Override:
    if isinstance(node, yaml.MappingNode):
        return Override(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return Override(loader.construct_sequence(node, deep=True))
    return Override(loader.construct_scalar(node))  # type: ignore[arg-type]


ComposeLoader.add_constructor("!reset", _reset)
ComposeLoader.add_constructor("!override", _override)

_VARIABLE = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\})")


def interpolate(value: Any, environ: dict[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR:+alt} and $$ in every string."""
    if isinstance(value, dict):
        return {k: interpolate(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ) for v in value]
    if isinstance(value, Override):
        return Override(interpolate(value.value, environ))
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        present = name in environ and (environ[name] != "" or not (op or "").startswith(":"))
        if op in (":-", "-"):
            return environ[name] if present else arg
        if op in (":?", "?"):
            if not present:
                raise CheckError(f"${{{name}}} is required: {arg}")
            return environ[name]
        if op in (":+", "+"):
            return arg if present else ""
        return environ.get(name, "")

    return _VARIABLE.sub(substitute, value)


def load_compose(path: Path, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """A compose file with anchors and merge keys resolved and variables interpolated (defaults only unless
    `environ` is given, so the check does not depend on the caller's shell)."""
    data = yaml.load(path.read_text(), Loader=ComposeLoader)
    if not isinstance(data, dict):
        raise CheckError(f"{path.name}: not a mapping")
    return interpolate(data, environ or {})


def strip_tags(value: Any) -> Any:
    """One file as Compose reads it alone: `!reset` keys dropped, `!override` unwrapped."""
    if isinstance(value, dict):
        return {k: strip_tags(v) for k, v in value.items() if not isinstance(v, Reset)}
    if isinstance(value, list):
        return [strip_tags(v) for v in value if not isinstance(v, Reset)]
    if isinstance(value, Override):
        return strip_tags(value.value)
    return value


def merge(base: Any, override: Any) -> Any:
    """`docker compose -f base -f override`: mappings merge key by key, anything else is replaced; `!reset`
    removes and `!override` replaces. (Compose also merges some sequences, such as ports, by key; none of
    our overrides relies on that.)"""
    if isinstance(override, Override):
        return strip_tags(override.value)
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if isinstance(value, Reset):
                merged.pop(key, None)
            elif key in merged:
                merged[key] = merge(merged[key], value)
            else:
                merged[key] = strip_tags(value)
        return merged
    return strip_tags(override)


def compose_validator() -> Any:
    import jsonschema

    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_errors(validator: Any, document: Any) -> list[str]:
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def compose_models(files: tuple[Path, ...] = COMPOSE_FILES) -> dict[str, dict[str, Any]]:
    """Each file alone and the merged result, keyed by a label."""
    loaded = [load_compose(f) for f in files]
    models = {f.name: strip_tags(d) for f, d in zip(files, loaded, strict=True)}
    merged = strip_tags(loaded[0])
    for d in loaded[1:]:
        merged = merge(merged, d)
    models[" + ".join(f.name for f in files)] = merged
    return models


def check_compose(files: tuple[Path, ...] = COMPOSE_FILES) -> list[str]:
    validator = compose_validator()
    problems: list[str] = []
    models = compose_models(files)
    for label, model in models.items():
        problems += [f"{label}: {e}" for e in schema_errors(validator, model)]
    base, cpu = models[files[0].name], list(models.values())[-1]
    problems += [f"{files[0].name}: {p}" for p in compose_semantics(base, gpu=True)]
    problems += [f"merged CPU override: {p}" for p in compose_semantics(cpu, gpu=False)]
    return problems


def _gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]


def compose_semantics(model: dict[str, Any], gpu: bool) -> list[str]:
    """What the issue asks of the compose setup, beyond the schema."""
    problems = []
    services = model.get("services", {})
    for name in ("vae", "vae-replica", "train", "lb"):
        if name not in services:
            problems.append(f"no `{name}` service")
    if problems:
        return problems
    vae, train = services["vae"], services["train"]
    for name in ("vae", "vae-replica", "train"):
        if bool(_gpu_devices(services[name])) != gpu:
            problems.append(f"{name}: GPU reservation {'missing' if gpu else 'still present'}")
    if not gpu and services["vae"].get("environment", {}).get("VAE_PROVIDER") != "cpu":
        problems.append("vae: VAE_PROVIDER must be cpu")
    for name in ("vae", "vae-replica"):
        service = services[name]
        test = " ".join(service.get("healthcheck", {}).get("test", []))
        if "/readyz" not in test:
            problems.append(f"{name}: healthcheck must probe /readyz")
        if not service.get("restart"):
            problems.append(f"{name}: no restart policy")
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        if not {"cpus", "memory"} <= limits.keys():
            problems.append(f"{name}: resource limits need cpus and memory")
        mounts = [
            v for v in service.get("volumes", []) if isinstance(v, dict) and v.get("source") == "models"
        ]
        if not (mounts and all(m.get("read_only") and m.get("target") == "/app/models" for m in mounts)):
            problems.append(f"{name}: the `models` volume must be mounted read-only at /app/models")
    if "train" not in train.get("profiles", []) or "scale" not in services["lb"].get("profiles", []):
        problems.append("train must be under profile `train`, lb under profile `scale`")
    if not any(
        isinstance(v, dict) and v.get("source") == "models" and not v.get("read_only")
        for v in train.get("volumes", [])
    ):
        problems.append("train: must mount the `models` volume read-write")
    if "models" not in model.get("volumes", {}):
        problems.append("no top-level `models` volume")
    # The GPU file builds the CUDA image, the CPU override the CPU one; both as `make image` tags them.
    serve_target, serve_image = ("serve", "vae-service:latest") if gpu else ("serve-cpu", "vae-service:cpu")
    if vae.get("build", {}).get("target") != serve_target or train.get("build", {}).get("target") != "train":
        problems.append(f"vae must build target `{serve_target}`, train target `train`")
    for name in ("vae", "vae-replica"):
        if services[name].get("image") not in (serve_image, f"${{VAE_IMAGE:-{serve_image}}}"):
            problems.append(f"{name}: image must default to {serve_image}")
    command = train.get("command", [])
    latent = command[command.index("--latent-dim") + 1] if "--latent-dim" in command[:-1] else None
    if command[:1] == ["mnist"] and latent != "32":
        problems.append("train: a new mnist version must keep the served latent size (--latent-dim 32)")
    return problems
