"""Tree definitions: the TOML files under ``fixtures/trees/`` that :mod:`harness.compose` builds.

A definition names a Debian suite, the packages, files and services of a tree::

    suite = "bookworm"
    version = "1"
    packages = ["systemd", "openssh-server"]
    services = ["ssh.service"]
    masked = ["e2scrub_reap.service", "systemd-sysv-generator"]

    [files."/etc/motd"]
    content = "hello\\n"
    mode = "0644"

A definition can ``extends = "other.toml"`` (relative to its own folder): it inherits
everything, its lists are appended to the parent's, its ``files`` are merged over the
parent's, and its scalars override.  ``stream`` names the ref the tree is committed on
(``treegate/<suite>/<arch>/<stream>``) and defaults to the definition's own file name, so a
``minimal-v2.toml`` that sets ``stream = "minimal"`` is a newer commit of the minimal tree.
``masked`` names units, or systemd generators (names ending in ``-generator``), that the tree
never runs.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from harness.errors import UserError

_KEYS = {
    "extends",
    "stream",
    "suite",
    "version",
    "packages",
    "services",
    "masked",
    "files",
    "description",
    "exclude_suites",
}


@dataclass(frozen=True)
class TreeFile:
    """A file the definition puts into the tree (paths under ``/etc`` land in ``/usr/etc``)."""

    path: str
    content: str
    mode: int = 0o644


@dataclass(frozen=True)
class Definition:
    """A fully resolved tree definition (parents merged in)."""

    name: str
    stream: str
    suite: str
    version: str
    description: str
    packages: tuple[str, ...]
    services: tuple[str, ...]
    masked: tuple[str, ...]
    files: tuple[TreeFile, ...]
    exclude_suites: tuple[str, ...] = field(default=())
    """Apt suites of the host's sources to leave out (e.g. a security suite whose index is stale)."""
    parent: Definition | None = None
    """The definition this one ``extends``, resolved."""

    def layers_on_parent(self) -> bool:
        """True when this definition adds only files and units to its parent's packages.

        Such a tree is composed as a layer on the parent's commit in seconds instead of a
        full mmdebstrap run.
        """
        p = self.parent
        return (
            p is not None
            and set(self.packages) == set(p.packages)
            and self.suite == p.suite
            and self.exclude_suites == p.exclude_suites
            and set(p.services) <= set(self.services)
            and set(p.masked) <= set(self.masked)
        )

    def ref(self, arch: str) -> str:
        """The ref this tree is committed on for ``arch``."""
        return f"treegate/{self.suite}/{arch}/{self.stream}"

    def cache_key(self, arch: str, recipe: str) -> str:
        """A digest of everything that decides the composed tree; equal keys mean equal trees."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "parent"}
        payload = json.dumps(
            {"def": asdict(_Plain(own))["data"], "arch": arch, "recipe": recipe}, sort_keys=True
        )
        return hashlib.sha256(payload.encode()).hexdigest()


def load_definition(path: str | Path) -> Definition:
    """Read and resolve the definition at ``path``; every mistake is a one-line :class:`UserError`."""
    raw = _load_merged(Path(path), seen=())
    name = Path(path).stem
    try:
        return Definition(
            name=name,
            stream=str(raw.get("stream", name)),
            suite=_str(raw, "suite", path),
            version=str(raw.get("version", "0")),
            description=str(raw.get("description", "")),
            packages=tuple(dict.fromkeys(_str_list(raw, "packages", path))),
            services=tuple(dict.fromkeys(_str_list(raw, "services", path))),
            masked=tuple(dict.fromkeys(_str_list(raw, "masked", path))),
            files=tuple(_files(raw.get("files", {}), path)),
            exclude_suites=tuple(_str_list(raw, "exclude_suites", path)),
            parent=_parent(Path(path)),
        )
    except KeyError as exc:
        raise UserError(f"{path}: missing required key {exc.args[0]!r}") from None


def _parent(path: Path) -> Definition | None:
    extends = tomllib.loads(path.read_text()).get("extends")
    return load_definition(path.parent / extends) if isinstance(extends, str) else None


@dataclass(frozen=True)
class _Plain:
    """Wraps a dict so ``asdict`` turns nested dataclasses (files) into plain data."""

    data: dict[str, Any]


def _load_merged(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise UserError(f"{path}: 'extends' loops back to itself")
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"tree definition {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise UserError(
            f"{path}: unknown key {unknown[0]!r}", hint=f"known keys: {', '.join(sorted(_KEYS))}"
        )
    parent_name = data.pop("extends", None)
    if parent_name is None:
        return data
    if not isinstance(parent_name, str):
        raise UserError(f"{path}: 'extends' must be a file name")
    parent = _load_merged(path.parent / parent_name, (*seen, path))
    parent.pop("stream", None)  # a stream belongs to the definition that names it
    merged = dict(parent)
    for key, value in data.items():
        if key in ("packages", "services", "masked", "exclude_suites"):
            merged[key] = list(parent.get(key, [])) + list(value)
        elif key == "files":
            merged[key] = {**parent.get("files", {}), **value}
        else:
            merged[key] = value
    return merged


def _str(raw: dict[str, Any], key: str, path: str | Path) -> str:
    value = raw[key]
    if not isinstance(value, str):
        raise UserError(f"{path}: {key!r} must be a string, not {type(value).__name__}")
    return value


def _str_list(raw: dict[str, Any], key: str, path: str | Path) -> list[str]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{path}: {key!r} must be a list of strings")
    return value


def _files(table: Any, path: str | Path) -> list[TreeFile]:
    if not isinstance(table, dict):
        raise UserError(f"{path}: 'files' must be a table of paths")
    out = []
    for dest, spec in sorted(table.items()):
        if not dest.startswith("/") or ".." in dest.split("/"):
            raise UserError(f"{path}: file path {dest!r} must be absolute and stay in the tree")
        if isinstance(spec, str):
            spec = {"content": spec}
        if not isinstance(spec, dict) or not isinstance(spec.get("content"), str):
            raise UserError(f"{path}: file {dest!r} needs a string 'content'")
        mode = spec.get("mode", "0644")
        try:
            mode_int = int(mode, 8) if isinstance(mode, str) else int(mode)
        except ValueError:
            raise UserError(f"{path}: file {dest!r} has a bad mode {mode!r}") from None
        out.append(TreeFile(path=dest, content=spec["content"], mode=mode_int))
    return out
