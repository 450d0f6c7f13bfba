#!/bin/sh
# debroot.sh WORK SHARED: install Ferry's .deb with dpkg -i into a copy of
# this machine that only this process sees, then start its systemd unit's
# command there. Run under `unshare --mount` (a mount namespace of its
# own): the machine's root becomes the lower layer of an overlay whose
# writes go to a tmpfs on WORK, so dpkg, its maintainer scripts and the
# agent write nothing on the host, and every mount goes when the agent
# exits. SHARED (the test's directory: ferry.deb, agent.json, the notify
# socket) is seen inside as /run/ferry-test.
#
# Steps, each reported on stdout: dpkg -i; the files where the README
# says; systemd-analyze verify on the installed unit (when the machine has
# it); then, as systemd would start ferry-agent.service: agent.env read,
# the ExecStart line run with NOTIFY_SOCKET, agent.json being SHARED's
# (so the test edits it to reload). The agent replaces this shell: the
# test's process is the unit's main process. Not a boot of systemd: there
# is no systemd PID 1 to start the unit on these machines.
set -eu
work=$1 shared=$2
mount --make-rprivate /
mount -t tmpfs -o mode=0755 ferry-debroot "$work"
mkdir "$work/upper" "$work/work" "$work/root"
mount -t overlay ferry-debroot -o "lowerdir=/,upperdir=$work/upper,workdir=$work/work" "$work/root"
root=$work/root
for m in proc sys dev; do
	mount --rbind "/$m" "$root/$m"
done
mkdir -p "$root/run/ferry-test"
mount --bind "$shared" "$root/run/ferry-test"

echo "== dpkg -i"
chroot "$root" dpkg -i /run/ferry-test/ferry.deb
echo "== files"
for f in /usr/bin/host-agent /usr/lib/ferry/host-agent /usr/lib/ferry/init /lib/systemd/system/ferry-agent.service \
	/etc/ferry/agent.json /etc/ferry/agent.env /usr/share/ferry/rootfs/build.sh /usr/share/ferry/examples/hello/main.py \
	/var/lib/ferry /etc/systemd/system/multi-user.target.wants/ferry-agent.service; do
	if chroot "$root" test -e "$f"; then
		echo "present $f"
	else
		echo "missing $f"
	fi
done
chroot "$root" dpkg-query -W -f '${Package} ${Status}\n' ferry
chroot "$root" sh -c 'cat /var/lib/dpkg/info/ferry.conffiles' | sed 's/^/conffile /'
echo "== systemd-analyze verify"
if chroot "$root" sh -c 'command -v systemd-analyze' >/dev/null; then
	# verify exits 0 on a line it ignores (a bad Type=, say), saying so:
	# anything it says is a failure.
	if ! said=$(chroot "$root" systemd-analyze verify /lib/systemd/system/ferry-agent.service 2>&1); then
		said="failed: $said"
	fi
	if [ -z "$said" ]; then
		echo "verify: ok"
	else
		printf 'verify: %s\n' "$said"
	fi
else
	echo "verify: skipped, no systemd-analyze"
fi

echo "== start"
mount --bind "$shared/agent.json" "$root/etc/ferry/agent.json"
# The overlay becomes this namespace's root (pivot_root, not a chroot: the
# kernel refuses user namespaces, which the sandbox backend makes, to a
# chrooted process).
cd "$root"
mkdir -p .debroot-old
pivot_root . .debroot-old
exec chroot . /bin/sh -c '
	set -eu
	umount -l /.debroot-old
	unit=/lib/systemd/system/ferry-agent.service
	# StateDirectory=, RuntimeDirectory=, EnvironmentFile=-
	install -d -m 0700 /var/lib/ferry
	install -d -m 0755 /run/ferry
	if [ -e /etc/ferry/agent.env ]; then
		set -a
		. /etc/ferry/agent.env
		set +a
	fi
	start=$(sed -n "s/^ExecStart=//p" "$unit")
	echo "ExecStart: $start"
	export NOTIFY_SOCKET=/run/ferry-test/notify.sock
	eval "exec $start"
'
