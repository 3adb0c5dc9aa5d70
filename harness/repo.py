"""An OSTree repository, through the ``ostree`` command line.

Everything treegate knows about commits comes from here: resolving a ref or checksum,
reading metadata, committing composed trees.  Bad refs and missing commits become one-line
:class:`~harness.errors.UserError` s naming the repo.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import functools
import http.server
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.errors import CommandError, UserError
from harness.run import run
from harness.signing import SigningKey, check_signed

_CHECKSUM = re.compile(r"^[0-9a-f]{64}$")

SCRATCH_ZLIB_LEVEL = 1
"""Compression of the repositories treegate composes for itself (the fixture trees, the
demo): composed, tested and thrown away, so commit speed wins over size."""


@dataclass(frozen=True)
class Commit:
    """A resolved commit: its checksum, the ref it was named by (if any), its metadata and
    its timestamp (seconds since the epoch, UTC: what ``ostree admin upgrade`` compares)."""

    checksum: str
    ref: str | None
    metadata: dict[str, str]
    timestamp: int = 0

    @property
    def version(self) -> str:
        return self.metadata.get("version", "")

    @property
    def short(self) -> str:
        return self.checksum[:12]

    def is_older_than(self, other: Commit) -> bool:
        """True when ``ostree admin upgrade`` from ``other`` to this commit would be refused
        as a downgrade (this commit's timestamp is the older)."""
        return self.timestamp < other.timestamp

    @property
    def date(self) -> str:
        """The timestamp as ``2026-12-07 14:08:43 UTC``."""
        when = datetime.datetime.fromtimestamp(self.timestamp, datetime.UTC)
        return when.strftime("%Y-%m-%d %H:%M:%S UTC")


class Repo:
    """An OSTree repository on the local filesystem."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()

    def __repr__(self) -> str:
        return f"Repo({str(self.path)!r})"

    def _ostree(self, *args: str, check: bool = True, input: str | None = None) -> str:
        return run(["ostree", *args, f"--repo={self.path}"], check=check, input=input).stdout

    def exists(self) -> bool:
        """True when ``path`` holds an OSTree repository."""
        return (self.path / "config").is_file() and (self.path / "objects").is_dir()

    def check(self) -> None:
        """Raise a one-line :class:`UserError` unless ``path`` is a readable repository."""
        if not self.path.exists():
            raise UserError(f"repository {self.path} does not exist")
        if not self.exists():
            raise UserError(f"{self.path} is not an OSTree repository (no config or objects/)")

    def init(self, mode: str = "archive", *, zlib_level: int | None = None) -> None:
        """Create the repository if it does not exist yet (``archive`` mode serves over HTTP).

        ``zlib_level`` sets the archive's compression level (ostree's default is 6).  Level 1
        commits a tree 2.6 times faster for a tenth more disk (measured on a 245 MB tree):
        the right trade for a repository that is composed, tested and thrown away.
        """
        if self.exists():
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self._ostree("init", f"--mode={mode}")
        if zlib_level is not None:
            self._ostree("config", "set", "archive.zlib-level", str(zlib_level))

    def refs(self) -> list[str]:
        """Every ref in the repository, sorted."""
        self.check()
        return sorted(self._ostree("refs").split())

    def resolve(self, rev: str) -> Commit:
        """Resolve a ref or a full or abbreviated checksum to a :class:`Commit` that exists."""
        self.check()
        try:
            checksum = self._ostree("rev-parse", rev).strip()
        except CommandError:
            if re.fullmatch(r"[0-9a-f]{4,64}", rev):
                raise UserError(f"commit {rev} is not in repository {self.path}") from None
            raise UserError(
                f"ref {rev!r} is not in repository {self.path}",
                hint=_suggest(rev, self.refs()),
            ) from None
        if not _CHECKSUM.match(checksum):
            raise UserError(f"{rev!r} does not name a commit in {self.path}")
        try:
            meta, timestamp = self._read_commit(checksum)
        except CommandError as exc:
            if "Couldn't find" in exc.stderr or "No such" in exc.stderr:
                raise UserError(
                    f"commit {checksum[:12]} is not in repository {self.path}"
                ) from None
            last = exc.stderr.strip().splitlines()[-1] if exc.stderr.strip() else "unreadable"
            raise UserError(
                f"commit {checksum[:12]} (from {rev!r}) cannot be read from {self.path}: {last}",
                hint="the repository may be corrupt: ostree fsck",
            ) from None
        named_by_checksum = checksum.startswith(rev) and re.fullmatch(r"[0-9a-f]{4,64}", rev)
        return Commit(
            checksum=checksum,
            ref=None if named_by_checksum else rev,
            metadata=meta,
            timestamp=timestamp,
        )

    def try_resolve(self, rev: str) -> Commit | None:
        """Like :meth:`resolve`, but ``None`` when the ref or commit does not exist."""
        try:
            return self.resolve(rev)
        except UserError:
            return None

    def parent(self, checksum: str) -> str | None:
        """The parent commit's checksum, or ``None`` for the first commit of a history."""
        out = run(["ostree", "rev-parse", f"--repo={self.path}", f"{checksum}^"], check=False)
        parent = out.stdout.strip()
        return parent if out.returncode == 0 and _CHECKSUM.match(parent) else None

    def history(self, rev: str, limit: int = 100) -> list[Commit]:
        """``rev`` and its ancestors, newest first (empty when ``rev`` does not exist).

        Ancestors whose objects are not in the repository (a shallow pull) end the walk.
        """
        head = self.try_resolve(rev)
        if head is None:
            return []
        out = [head]
        while len(out) < limit:
            parent = self.parent(out[-1].checksum)
            if parent is None:
                break
            try:
                meta, timestamp = self._read_commit(parent)
            except CommandError:
                break
            out.append(Commit(parent, None, meta, timestamp))
        return out

    def ref_containing(self, checksum: str) -> str:
        """A ref whose recent history holds ``checksum`` (to use as a deployment's origin)."""
        for ref in self.refs():
            if any(c.checksum == checksum for c in self.history(ref, limit=50)):
                return ref
        raise UserError(
            f"commit {checksum[:12]} is on no ref of {self.path}",
            hint="name a ref with --commit, or put the commit on one",
        )

    def _read_commit(self, checksum: str) -> tuple[dict[str, str], int]:
        # `ostree show --raw` prints the commit GVariant: metadata is its first member, a
        # dict of string keys (only string values are kept: that is all treegate writes);
        # the timestamp is the uint64 before the two checksums that end it.
        raw = self._ostree("show", "--raw", checksum)
        return _parse_string_metadata(raw), _parse_timestamp(raw)

    def commit(
        self,
        tree: Path,
        ref: str,
        *,
        subject: str,
        metadata: dict[str, str],
        base: str | None = None,
    ) -> str:
        """Commit the directory ``tree`` on ``ref`` and return the new checksum.

        With ``base`` (a commit), ``tree`` is laid over that commit's tree: files in ``tree``
        replace or add to the base's, everything else is kept.
        """
        args = [
            "commit",
            f"--branch={ref}",
            *([f"--tree=ref={base}"] if base else []),
            f"--tree=dir={tree}",
            f"--subject={subject}",
            # Sizes of a layered commit would read and compress every object of the base
            # again (half a minute for an ARM tree): only a full tree gets them.
            *([] if base else ["--generate-sizes"]),
        ]
        args += [f"--add-metadata-string={k}={v}" for k, v in sorted(metadata.items())]
        checksum = self._ostree(*args).strip()
        # Clients that find a summary trust it over refs/: a stale one would hide this commit.
        self.update_summary()
        return checksum

    def promote(
        self,
        candidate: Commit,
        tested_ref: str,
        *,
        subject: str,
        metadata: dict[str, str],
        timestamp: int | None = None,
        sign: SigningKey | None = None,
    ) -> str:
        """Move ``tested_ref`` to the candidate's tree in one atomic ref update.

        The new commit on ``tested_ref`` has the candidate's exact tree, the previous tested
        commit as parent, and ``metadata`` recording why it was promoted; then the summary is
        regenerated so remotes see it.  With ``sign``, the commit and the summary are signed.
        ``timestamp`` (seconds since the epoch) is the commit's; by default the candidate's
        own, so that the tested ref's history keeps compose order: a promotion stamped with
        the time it happened would be newer than a candidate composed while it was gated,
        and ``ostree admin upgrade`` refuses a commit older than the booted one.
        Returns the promotion commit's checksum.
        """
        meta = {"version": candidate.version, **metadata}
        args = [
            "commit",
            f"--branch={tested_ref}",
            f"--tree=ref={candidate.checksum}",
            f"--subject={subject}",
            f"--timestamp=@{candidate.timestamp if timestamp is None else timestamp}",
            # No --generate-sizes: it reads and compresses every object of the tree again
            # (12 s for the minimal tree) for metadata the candidate commit already carries.
        ]
        args += [f"--add-metadata-string={k}={v}" for k, v in sorted(meta.items())]
        args += sign.sign_args if sign is not None else []
        checksum = self._ostree(*args).strip()
        self.update_summary(sign)
        return checksum

    def sign(self, commit: str, key: SigningKey) -> None:
        """Sign ``commit`` with ``key`` (a detached signature; the checksum stays), once."""
        if check_signed(self.path, commit, key) is None:
            return
        self._ostree("gpg-sign", f"--gpg-homedir={key.homedir}", commit, key.fingerprint)

    def set_ref(self, ref: str, checksum: str) -> None:
        """Point ``ref`` at ``checksum`` (creating or moving it), then update the summary."""
        self._ostree("refs", "--force", f"--create={ref}", checksum)
        self.update_summary()

    def delete_ref(self, ref: str) -> None:
        """Remove ``ref`` if it exists (its commits stay until pruned)."""
        if ref in self.refs():
            self._ostree("refs", "--delete", ref)
            self.update_summary()

    def update_summary(self, sign: SigningKey | None = None) -> None:
        """Regenerate the summary file so remotes see the current refs (signed with ``sign``)."""
        # Composes of several arches commit to one repo side by side; without the lock, a
        # summary that read the refs before another's commit could be written last.
        with open(self.path / "treegate-summary.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._ostree("summary", "-u", *(sign.sign_args if sign is not None else []))

    def content_checksum(self, commit: str) -> str:
        """The checksum of the commit's tree: equal for commits with identical content."""
        for line in self._ostree("show", commit).splitlines():
            if line.startswith("ContentChecksum:"):
                return line.split(":", 1)[1].strip()
        raise UserError(f"commit {commit[:12]} has no content checksum")

    def read_file(self, commit: str, path: str) -> str:
        """The text of ``path`` inside ``commit``."""
        return self._ostree("cat", commit, path)

    def export_file(self, commit: str, path: str, dest: Path) -> Path:
        """Write the file ``path`` of ``commit`` to ``dest`` (binary-safe)."""
        run(["ostree", "cat", f"--repo={self.path}", commit, path], stdout_path=dest)
        return dest

    def checkout(self, commit: str, subpath: str, dest: Path) -> Path:
        """Check out the directory ``subpath`` of ``commit`` into ``dest`` (which must not
        exist), as the calling user: one ``ostree checkout`` instead of a ``cat`` per file."""
        self._ostree("checkout", "-U", f"--subpath={subpath}", commit, str(dest))
        return dest

    def has_path(self, commit: str, path: str) -> bool:
        """True when ``path`` exists inside ``commit``."""
        out = run(["ostree", "ls", f"--repo={self.path}", commit, path], check=False)
        return out.returncode == 0

    def kernel_version(self, commit: str) -> str:
        """The kernel version directory under ``/usr/lib/modules`` that holds a vmlinuz."""
        listing = self._ostree("ls", commit, "/usr/lib/modules")
        for line in listing.splitlines():
            name = line.split()[-1].rsplit("/", 1)[-1]
            if (
                name
                and name != "modules"
                and self.has_path(commit, f"/usr/lib/modules/{name}/vmlinuz")
            ):
                return name
        raise UserError(f"commit {commit[:12]} has no kernel in /usr/lib/modules/*/vmlinuz")


class _ReadOnlyHandler(http.server.SimpleHTTPRequestHandler):
    """GET and HEAD of files only: no directory listings, no uploads, no logging to stderr."""

    def list_directory(self, path: str | Path) -> None:  # type: ignore[override]
        self.send_error(404)
        return None

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(repo: Repo) -> Iterator[int]:
    """Serve ``repo`` read-only over HTTP on 127.0.0.1 for the length of a ``with`` block.

    Yields the port.  Guests reach it only through their QEMU guest forward; nothing else
    is listening beyond loopback.  Only GET and HEAD exist (the stdlib handler has no
    write methods), and directory listings are refused.
    """
    repo.check()
    handler = functools.partial(_ReadOnlyHandler, directory=str(repo.path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="treegate-repo-server", daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _parse_timestamp(raw: str) -> int:
    # The commit variant is the line that opens with "(": (metadata, parent, related,
    # subject, body, uint64 TIMESTAMP, root tree checksum, root meta checksum).  Only the two
    # checksums follow the timestamp, printed as [byte …] or, when GLib takes them for a
    # string, as b'…': the last "uint64 N," of the line is the timestamp.  A signed commit's
    # signatures are printed on the lines after it.
    variant = next((line for line in raw.splitlines() if line.startswith("(")), "")
    found = re.findall(r"\buint64 (\d+), ", variant)
    if not found:
        raise UserError("an ostree commit printed without its timestamp: is ostree too old?")
    return int(found[-1])


def _parse_string_metadata(raw: str) -> dict[str, str]:
    meta: dict[str, str] = {}
    start = raw.find("{")
    if start < 0:
        return meta
    # GVariant text quotes a string with ' unless it contains one, then with ".
    pattern = r"'([^']+)': <(?:'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\")>"
    for m in re.finditer(pattern, raw[start:]):
        value = m.group(2) if m.group(2) is not None else m.group(3)
        meta[m.group(1)] = re.sub(r"\\(.)", r"\1", value)
    return meta


def _suggest(rev: str, refs: list[str]) -> str | None:
    if not refs:
        return "the repository has no refs"
    import difflib

    close = difflib.get_close_matches(rev, refs, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"known refs: {', '.join(refs[:5])}{' …' if len(refs) > 5 else ''}"
