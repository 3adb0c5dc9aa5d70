"""Signed commits: the key treegate signs promotions with and trusts candidates from.

Debian's ostree 2022.7 is built without ed25519 signing (``ostree --version`` lists no
``sign-ed25519``), so treegate uses ostree's GPG signatures, with an ed25519 OpenPGP key.

A :class:`SigningKey` is a GnuPG home directory holding the secret key, and the key's
fingerprint.  With one configured:

* composes and promotions are signed with it (``ostree commit --gpg-sign``);
* a candidate (and a rebase target) must carry a good signature by it, or the gate refuses
  to gate it;
* images import its public key into the guest's remote with ``gpg-verify=true``, so every
  pull in a guest (upgrade, rebase) checks signatures too.

ostree verifies against ``pubring.gpg`` keyrings only (not GnuPG 2's ``pubring.kbx``), so
verification uses a keyring that holds this one public key: a signature by any other key
is "public key not found", which is a refusal.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError
from harness.run import run

DEMO_KEY_NAME = "treegate demo signing key <treegate@localhost>"


@dataclass(frozen=True)
class SigningKey:
    """An OpenPGP key in a GnuPG home directory (``homedir``), named by its fingerprint."""

    homedir: Path
    fingerprint: str

    @property
    def sign_args(self) -> list[str]:
        """The ``ostree commit`` / ``summary`` arguments that sign with this key."""
        return [f"--gpg-sign={self.fingerprint}", f"--gpg-homedir={self.homedir}"]

    def export_public_key(self, dest: Path) -> Path:
        """Write the public key to ``dest`` as a binary OpenPGP keyring (what ``ostree remote
        add --gpg-import`` and ostree's verifier read)."""
        run(
            ["gpg", "--homedir", str(self.homedir), "--export", self.fingerprint],
            stdout_path=dest,
        )
        return dest


def load_key(homedir: Path, key_id: str | None = None) -> SigningKey:
    """The secret key ``key_id`` (any form gpg accepts) in ``homedir``; without ``key_id``,
    its only secret key.  One-line errors for a missing directory or key."""
    if not homedir.is_dir():
        raise UserError(f"GnuPG home directory {homedir} does not exist")
    listing = run(
        ["gpg", "--homedir", str(homedir), "--batch", "--with-colons", "--list-secret-keys"]
        + ([key_id] if key_id else []),
        check=False,
    )
    fingerprints = []
    after_sec = False
    for line in listing.stdout.splitlines():
        fields = line.split(":")
        if fields[0] == "sec":
            after_sec = True
        elif fields[0] == "fpr" and after_sec:
            fingerprints.append(fields[9])
            after_sec = False
    if not fingerprints:
        what = f"secret key {key_id!r}" if key_id else "secret key"
        raise UserError(f"no {what} in {homedir}", hint="gpg --list-secret-keys")
    if len(fingerprints) > 1:
        raise UserError(
            f"{homedir} holds {len(fingerprints)} secret keys", hint="name one with --gpg-key"
        )
    return SigningKey(homedir.resolve(), fingerprints[0])


def create_key(homedir: Path, name: str = DEMO_KEY_NAME) -> SigningKey:
    """Make a new passphrase-less ed25519 signing key in ``homedir`` (created, mode 0700).

    For the demo and tests: local, automatic, never leaving the state directory.
    """
    homedir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(homedir, 0o700)
    run(
        [
            "gpg",
            "--homedir",
            str(homedir),
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--quick-gen-key",
            name,
            "ed25519",
            "sign",
            "never",
        ]
    )
    return load_key(homedir)


def demo_key(homedir: Path) -> SigningKey:
    """The key in ``homedir``, made on first use."""
    if homedir.is_dir():
        return load_key(homedir)
    return create_key(homedir)


def check_signed(repo_path: Path, commit: str, key: SigningKey) -> str | None:
    """``None`` when ``commit`` carries a good signature by ``key``; else why not, one line."""
    with tempfile.TemporaryDirectory(prefix="treegate-keyring-") as keyring:
        key.export_public_key(Path(keyring, "pubring.gpg"))
        out = run(
            ["ostree", "show", f"--repo={repo_path}", f"--gpg-homedir={keyring}", commit]
        ).stdout
    if "Good signature" in out:
        return None
    if "Found " not in out:
        return f"commit {commit[:12]} is not signed"
    if "BAD signature" in out:
        return f"commit {commit[:12]} has a bad signature"
    return f"commit {commit[:12]} is not signed by the trusted key {key.fingerprint[-16:]}"
