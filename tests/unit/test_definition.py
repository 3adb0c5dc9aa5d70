"""Tree definitions: parsing, inheritance, cache keys and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.definition import load_definition
from harness.errors import UserError

TREES = Path(__file__).resolve().parents[2] / "fixtures" / "trees"


def test_minimal_fixture_parses() -> None:
    d = load_definition(TREES / "minimal.toml")
    assert d.name == d.stream == "minimal"
    assert d.ref("aarch64") == "treegate/bookworm/aarch64/minimal"
    assert "openssh-server" in d.packages
    assert "ssh.service" in d.services
    assert any(f.path == "/etc/treegate-release" for f in d.files)


def test_derived_definition_appends_lists_and_overrides_files() -> None:
    base = load_definition(TREES / "minimal.toml")
    v2 = load_definition(TREES / "minimal-v2.toml")
    assert v2.stream == "minimal"
    assert v2.ref("x86_64") == base.ref("x86_64")
    release = {f.path: f.content for f in v2.files}["/etc/treegate-release"]
    assert release == "minimal 2\n"
    assert {f.path for f in base.files} <= {f.path for f in v2.files}
    docker = load_definition(TREES / "docker.toml")
    assert docker.packages[: len(base.packages)] == base.packages
    assert "docker.io" in docker.packages[len(base.packages) :]


def test_stream_is_not_inherited() -> None:
    broken = load_definition(TREES / "broken-init.toml")
    assert broken.stream == "broken-init"


def test_cache_key_changes_with_content_and_arch() -> None:
    base = load_definition(TREES / "minimal.toml")
    v2 = load_definition(TREES / "minimal-v2.toml")
    assert base.cache_key("x86_64", "1") == load_definition(TREES / "minimal.toml").cache_key(
        "x86_64", "1"
    )
    assert base.cache_key("x86_64", "1") != v2.cache_key("x86_64", "1")
    assert base.cache_key("x86_64", "1") != base.cache_key("aarch64", "1")
    assert base.cache_key("x86_64", "1") != base.cache_key("x86_64", "2")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('suite = "bookworm"\npackges = ["x"]\n', "unknown key 'packges'"),
        ("packages = [\n", "not valid TOML"),
        ("suite = 12\n", "'suite' must be a string"),
        ('suite = "bookworm"\npackages = "vim"\n', "'packages' must be a list of strings"),
        ('suite = "bookworm"\n[files."etc/x"]\ncontent = "a"\n', "must be absolute"),
        ('suite = "bookworm"\n[files."/etc/x"]\nmode = "0644"\n', "needs a string 'content'"),
        ('suite = "bookworm"\n[files."/etc/x"]\ncontent = "a"\nmode = "9z"\n', "bad mode"),
        ('version = "1"\n', "missing required key 'suite'"),
        ('extends = "nope.toml"\n', "does not exist"),
    ],
)
def test_bad_definitions_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserError) as caught:
        load_definition(path)
    assert message in caught.value.one_line()
    assert "\n" not in caught.value.one_line()


def test_extends_loop_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('extends = "b.toml"\nsuite = "bookworm"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(UserError, match="loops back"):
        load_definition(tmp_path / "a.toml")
