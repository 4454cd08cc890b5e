# Stage two of the test VM, PID 1 on the overlay of the host's root: run the
# job script on the virtio console (its terminal, so Ctrl-C reaches it), report
# its exit status on the status port, and power off.
bb=/run/gslb-vm/busybox
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
$bb hostname gslb-vm
ip link set lo up
echo started > /dev/ttyS1
# A subshell is not a process group leader, so setsid does not fork and the
# exit status is the job's own.
( exec $bb setsid -c /bin/sh "$1" </dev/hvc0 >/dev/hvc0 2>&1 ) &
wait $!
echo "exit $?" > /dev/ttyS1
$bb sync
$bb reboot -f
