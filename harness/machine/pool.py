"""Base images on a remote libvirt host: a storage pool, filled through libvirt's stream API.

A remote daemon (``qemu+tcp://…``, ``qemu+ssh://…``) shares no files with the harness, so
the image a machine boots from is uploaded once into the ``treegate`` pool on that host,
named by the image's cache key, and each machine gets its own qcow2 overlay volume there.
The upload is a sparse stream: only the image's data is sent, not its holes (a 4.5 GB raw
image with 0.5 GB of data sends 0.5 GB).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import libvirt

from harness.errors import InfraError

POOL = "treegate"
POOL_PATH = "/var/lib/libvirt/images/treegate"
"""Where the pool keeps its volumes on the remote host."""


def pool(conn: libvirt.virConnect) -> libvirt.virStoragePool:
    """The ``treegate`` pool on ``conn``'s host, created (as a transient directory pool) and
    started when missing."""
    try:
        found = conn.storagePoolLookupByName(POOL)
    except libvirt.libvirtError:
        xml = (
            f"<pool type='dir'><name>{POOL}</name><target><path>{POOL_PATH}</path></target></pool>"
        )
        try:
            return conn.storagePoolCreateXML(xml, libvirt.VIR_STORAGE_POOL_CREATE_WITH_BUILD)
        except libvirt.libvirtError as exc:
            raise InfraError(f"cannot create storage pool {POOL}: {exc}") from None
    if not found.isActive():
        found.create(0)
    found.refresh(0)
    return found


def upload(conn: libvirt.virConnect, image: Path, key: str) -> str:
    """The path, on the remote host, of ``image`` uploaded as volume ``<key>.raw``.

    Uploaded once: a small ``<key>.done`` volume marks a finished upload, so an upload cut
    short (a crash, Ctrl-C) is thrown away and made again, never booted half-written.
    """
    p = pool(conn)
    name = f"{key}.raw"
    names = set(p.listVolumes())
    if f"{key}.done" in names and name in names:
        return str(p.storageVolLookupByName(name).path())
    if name in names:
        p.storageVolLookupByName(name).delete(0)
    size = image.stat().st_size
    vol = p.createXML(
        f"<volume><name>{name}</name><capacity unit='bytes'>{size}</capacity>"
        "<target><format type='raw'/></target></volume>",
        0,
    )
    stream = conn.newStream(0)
    try:
        vol.upload(stream, 0, size, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
        with open(image, "rb") as f:
            stream.sparseSendAll(_read, _hole, _skip, f.fileno())
        stream.finish()
    except BaseException as exc:
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
        with contextlib.suppress(libvirt.libvirtError):
            vol.delete(0)
        if isinstance(exc, libvirt.libvirtError):
            raise InfraError(f"uploading {image.name} to {conn.getURI()} failed: {exc}") from None
        raise
    p.createXML(
        f"<volume><name>{key}.done</name><capacity unit='bytes'>0</capacity>"
        "<target><format type='raw'/></target></volume>",
        0,
    )
    return str(vol.path())


def overlay(conn: libvirt.virConnect, base: str, name: str) -> libvirt.virStorageVol:
    """A new qcow2 volume ``<name>.qcow2`` in the pool, backed by the volume at ``base``."""
    size = conn.storageVolLookupByPath(base).info()[1]
    try:
        return pool(conn).createXML(
            f"<volume><name>{name}.qcow2</name><capacity unit='bytes'>{size}</capacity>"
            "<target><format type='qcow2'/></target>"
            f"<backingStore><path>{base}</path><format type='raw'/></backingStore></volume>",
            0,
        )
    except libvirt.libvirtError as exc:
        raise InfraError(f"cannot create overlay {name}.qcow2 on {conn.getURI()}: {exc}") from None


# Stream callbacks: the opaque value is the image's file descriptor.
def _read(_stream: libvirt.virStream, nbytes: int, fd: int) -> bytes:
    return os.read(fd, nbytes)


def _hole(_stream: libvirt.virStream, fd: int) -> list[int | bool]:
    """Whether the file position is in data or a hole, and how long that section runs."""
    pos = os.lseek(fd, 0, os.SEEK_CUR)
    end = os.fstat(fd).st_size
    if pos >= end:
        return [False, 0]
    try:
        data = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:  # ENXIO: only a hole is left
        data = end
    if data > pos:
        os.lseek(fd, pos, os.SEEK_SET)
        return [False, data - pos]
    hole = os.lseek(fd, pos, os.SEEK_HOLE)
    os.lseek(fd, pos, os.SEEK_SET)
    return [True, hole - pos]


def _skip(_stream: libvirt.virStream, length: int, fd: int) -> int:
    os.lseek(fd, length, os.SEEK_CUR)
    return 0
