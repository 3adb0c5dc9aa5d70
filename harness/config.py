"""``treegate.toml``: the build server's gating configuration, validated with one-line errors.

::

    repo = "/srv/ostree/repo"          # relative paths are relative to this file
    backend = "qemu"                    # or "libvirt"
    libvirt_uri = "qemu:///system"      # optional, for backend = "libvirt"
    state_dir = ".treegate"             # optional

    [signing]                           # optional: see harness.signing
    gpg_homedir = "keys/gpg"
    key = "A49C92DEBD61489D"            # optional when the home holds one secret key

    quarantine = "quarantine.toml"      # optional: see harness.quarantine
    flaky_passes = false                # optional: a flaky test counts as a pass

    [streams.minimal]
    candidate = "treegate/bookworm/{arch}/minimal"
    tested = "treegate/bookworm/{arch}/minimal-tested"
    arches = ["x86_64", "aarch64"]      # default ["x86_64"]
    suites = ["smoke", "upgrade"]       # default: every suite that applies
    rebase = "treegate/bookworm/{arch}/docker"   # optional
    timeout_min = 45                    # optional: the whole gate of one commit

``treegate gate --config FILE --stream NAME`` and ``treegate watch --config FILE`` read it;
their command-line flags override what it says.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.arch import ARCHES
from harness.errors import UserError
from harness.machine.base import BACKENDS, Backend
from harness.suites import SUITES


@dataclass(frozen=True)
class Stream:
    """One gated stream: candidates on ``candidate`` are promoted to ``tested``."""

    name: str
    candidate: str
    tested: str
    arches: tuple[str, ...] = ("x86_64",)
    suites: tuple[str, ...] = ()
    rebase: str | None = None
    timeout_min: float | None = None


@dataclass(frozen=True)
class Signing:
    """The signing key's GnuPG home and, optionally, which key in it."""

    gpg_homedir: Path
    key: str | None = None


@dataclass(frozen=True)
class Config:
    """A whole ``treegate.toml``."""

    path: Path
    repo: Path
    streams: tuple[Stream, ...]
    backend: Backend = field(default_factory=Backend)
    state_dir: Path | None = None
    signing: Signing | None = None
    quarantine: Path | None = None
    flaky_passes: bool = False

    def stream(self, name: str | None) -> Stream:
        """The stream ``name``; without a name, the only one."""
        if name is None:
            if len(self.streams) != 1:
                names = ", ".join(s.name for s in self.streams)
                raise UserError(f"{self.path} has several streams ({names})", hint="pass --stream")
            return self.streams[0]
        for s in self.streams:
            if s.name == name:
                return s
        raise UserError(
            f"{self.path} has no stream {name!r}"
            + _did_you_mean(name, [s.name for s in self.streams])
        )


_TOP = {
    "repo": str,
    "backend": str,
    "libvirt_uri": str,
    "state_dir": str,
    "signing": dict,
    "streams": dict,
    "quarantine": str,
    "flaky_passes": bool,
}
_SIGNING = {"gpg_homedir": str, "key": str}
_STREAM = {
    "candidate": str,
    "tested": str,
    "arches": list,
    "suites": list,
    "rebase": str,
    "timeout_min": (int, float),
}
_REQUIRED_STREAM = ("candidate", "tested")


def load_config(path: Path) -> Config:
    """Read and validate ``path``; every problem is one line naming the key."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None
    _check_keys(path, "", data, _TOP)
    for key in ("repo", "streams"):
        if key not in data:
            raise UserError(f"{path}: {key} is missing")
    base = path.resolve().parent
    backend = data.get("backend", "qemu")
    if backend not in BACKENDS:
        raise UserError(f"{path}: backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    signing = None
    if "signing" in data:
        _check_keys(path, "signing.", data["signing"], _SIGNING)
        if "gpg_homedir" not in data["signing"]:
            raise UserError(f"{path}: signing.gpg_homedir is missing")
        signing = Signing(base / data["signing"]["gpg_homedir"], data["signing"].get("key"))
    streams = []
    for name, raw in data["streams"].items():
        where = f"streams.{name}."
        if not isinstance(raw, dict):
            raise UserError(f"{path}: streams.{name} must be a table, not {_kind(raw)}")
        _check_keys(path, where, raw, _STREAM)
        for key in _REQUIRED_STREAM:
            if key not in raw:
                raise UserError(f"{path}: {where}{key} is missing")
        arches = _strings(path, where + "arches", raw.get("arches", ["x86_64"]))
        for arch in arches:
            if arch not in ARCHES:
                raise UserError(
                    f"{path}: {where}arches: unknown arch {arch!r}" + _did_you_mean(arch, ARCHES)
                )
        suites = _strings(path, where + "suites", raw.get("suites", []))
        for suite in suites:
            if suite not in SUITES:
                raise UserError(
                    f"{path}: {where}suites: unknown suite {suite!r}" + _did_you_mean(suite, SUITES)
                )
        timeout = raw.get("timeout_min")
        if timeout is not None and timeout <= 0:
            raise UserError(f"{path}: {where}timeout_min must be positive, not {timeout}")
        streams.append(
            Stream(
                name=name,
                candidate=raw["candidate"],
                tested=raw["tested"],
                arches=arches,
                suites=suites,
                rebase=raw.get("rebase"),
                timeout_min=float(timeout) if timeout is not None else None,
            )
        )
    if not streams:
        raise UserError(f"{path}: streams is empty")
    return Config(
        path=path,
        repo=base / data["repo"],
        streams=tuple(streams),
        backend=Backend(backend, data.get("libvirt_uri", Backend().uri)),
        state_dir=base / data["state_dir"] if "state_dir" in data else None,
        signing=signing,
        quarantine=base / data["quarantine"] if "quarantine" in data else None,
        flaky_passes=data.get("flaky_passes", False),
    )


def _check_keys(path: Path, where: str, table: dict[str, Any], schema: dict[str, Any]) -> None:
    for key, value in table.items():
        if key not in schema:
            raise UserError(f"{path}: unknown key {where}{key}" + _did_you_mean(key, schema))
        expected = schema[key]
        # bool is an int to Python, never a number (or anything else) in a config.
        if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
            names = {
                str: "a string",
                list: "a list",
                dict: "a table",
                (int, float): "a number",
                bool: "true or false",
            }
            raise UserError(f"{path}: {where}{key} must be {names[expected]}, not {_kind(value)}")


def _strings(path: Path, key: str, value: list[Any]) -> tuple[str, ...]:
    if not all(isinstance(v, str) for v in value):
        raise UserError(f"{path}: {key} must be a list of strings")
    return tuple(value)


def _kind(value: object) -> str:
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    kinds.update({list: "a list", dict: "a table"})
    return f"{kinds.get(type(value), type(value).__name__)} ({value!r})"


def _did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
