#!/bin/bash
# dracut module "treegate": the lean initramfs that treegate's compose puts in every tree.
# Its /init (init.sh beside this file) replaces dracut's systemd and udev stages; the tree's
# own ostree-prepare-root still does the OSTree part.  Used only when named in dracutmodules.

check() {
    return 255
}

depends() {
    return 0
}

install() {
    inst_multiple sh mount modprobe blkid switch_root sleep
    inst /usr/lib/ostree/ostree-prepare-root
    inst_dir /proc
    inst_dir /sys
    inst_dir /dev
    inst_dir /run
    inst_dir /sysroot
    inst_simple "$moddir/init.sh" /init
    chmod 0755 "$initdir/init"
}
