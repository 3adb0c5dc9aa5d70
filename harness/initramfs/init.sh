#!/bin/sh
# treegate's lean initramfs: load the disk drivers, find the root filesystem, let the tree's
# own ostree-prepare-root set up the deployment named by ostree= and switch to it.  No udev
# and no systemd here: under an emulated CPU that saves seconds on every boot.  Any failure
# ends this init, which the kernel reports as a panic (what the console watcher looks for).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run

fail() {
    echo "treegate-initramfs: $*" >/dev/console
    exit 1
}

modprobe -a -q virtio_pci virtio_mmio virtio_blk crc32c_generic ext4

root=""
mode=rw
read -r cmdline </proc/cmdline
for arg in $cmdline; do
    case "$arg" in
        root=*) root=${arg#root=} ;;
        ro) mode=ro ;;
        rw) mode=rw ;;
    esac
done
[ -n "$root" ] || fail "no root= on the kernel command line"

# Devices appear asynchronously after the drivers load: poll for up to 60 s.
tries=0
while :; do
    case "$root" in
        LABEL=*) dev=$(blkid -l -o device -t "$root" 2>/dev/null) ;;
        UUID=*) dev=$(blkid -l -o device -t "$root" 2>/dev/null) ;;
        *) dev=$root; [ -b "$dev" ] || dev="" ;;
    esac
    [ -n "$dev" ] && break
    tries=$((tries + 1))
    [ "$tries" -lt 600 ] || fail "root device $root not found"
    sleep 0.1
done

mount -o "$mode" "$dev" /sysroot || fail "cannot mount $dev on /sysroot"
/usr/lib/ostree/ostree-prepare-root /sysroot || fail "ostree-prepare-root failed"
exec switch_root /sysroot /sbin/init
