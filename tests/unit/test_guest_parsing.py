"""Parsing what the guest prints (no VM: text captured from ostree 2022.7)."""

from __future__ import annotations

from harness.guest import parse_admin_status

STATUS = """\
  debian 5e0c54d1b1b3b2e1aa4d3d2e41b2a5a5a1d3f1b7f1e3d5c6b7a8990a1b2c3d4e.0 (pending)
    Version: 2
    origin refspec: treegate:treegate/bookworm/x86_64/minimal
* debian dd9252fdeb7fde986870974775a7b4ffc84499808b8e0c79318655f827fc4962.0
    Version: 1
    origin refspec: treegate:treegate/bookworm/x86_64/minimal
  debian 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.1 (rollback)
    Version: 0
    origin refspec: treegate:treegate/bookworm/x86_64/minimal
"""


def test_admin_status_lists_deployments_in_order() -> None:
    deps = parse_admin_status(STATUS)
    assert [d.version for d in deps] == ["2", "1", "0"]
    assert [d.booted for d in deps] == [False, True, False]
    assert deps[0].pending and not deps[0].rollback
    assert deps[2].rollback and deps[2].serial == 1
    assert deps[1].checksum.startswith("dd9252fd")
    assert deps[1].origin == "treegate:treegate/bookworm/x86_64/minimal"


def test_admin_status_without_deployments() -> None:
    assert parse_admin_status("No deployments.\n") == []
