#!/bin/busybox sh
# Stage one of the test VM, PID 1 in the initramfs that xtask/src/vm/assets.rs
# builds: load the modules for the host's shared root (virtiofs) and an
# overlay over it, mount that as the new root, and hand over to stage two.
# The host's files are never written: the overlay's upper layer is tmpfs.
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /host /upper /newroot
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# A failure before the command runs is reported on the status port.
fail() {
    echo "gslb-vm: $*" > /dev/ttyS0
    echo "boot-failed $*" > /dev/ttyS1
    reboot -f
}

for module in $(cat /modules/order); do
    insmod "/modules/$module" || fail "cannot load module $module"
done
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        gslb.job=*) job="${arg#*=}" ;;
        gslb.modules=*) modules="${arg#*=}" ;;
        gslb.kmod=*) kmod="${arg#*=}" ;;
    esac
done

mount -t virtiofs host /host -o ro || fail "cannot mount the host's root (virtiofs)"
mount -t tmpfs -o mode=0755 upper /upper
mkdir /upper/data /upper/work
mount -t overlay root -o lowerdir=/host,upperdir=/upper/data,workdir=/upper/work /newroot \
    || fail "cannot mount the overlay root"

r=/newroot
mount -t proc proc $r/proc
mount -t sysfs sysfs $r/sys
mount -t devtmpfs devtmpfs $r/dev
mkdir -p $r/dev/pts $r/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $r/dev/pts
mount -t tmpfs -o mode=1777 shm $r/dev/shm
# A fresh /run; /tmp stays the host's (through the overlay, so writes stay
# here), as a checkout or a build may be under it.
mount -t tmpfs -o mode=0755 run $r/run
mount -t bpf bpf $r/sys/fs/bpf
mount -t cgroup2 cgroup2 $r/sys/fs/cgroup
# The guest kernel's modules, and a modprobe for the kernel to call
# (the host may have no kmod installed).
mkdir -p "$r/lib/modules/$(uname -r)"
mount --bind "$r$modules" "$r/lib/modules/$(uname -r)" || fail "cannot mount the kernel's modules"
ln -sf "$kmod" $r/sbin/modprobe
mkdir -p $r/run/gslb-vm
cp /bin/busybox /stage2 $r/run/gslb-vm/
umount /proc /sys /dev
exec switch_root /newroot /run/gslb-vm/busybox sh /run/gslb-vm/stage2 "$job"
