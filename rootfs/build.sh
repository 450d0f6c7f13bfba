#!/usr/bin/env bash
# rootfs/build.sh builds what the qemu backend boots:
#
#   OUT/rootfs.squashfs  Debian bookworm (minbase) with python3, the Debian
#                        ASGI stack, ca-certificates and openssh-server (for
#                        instances; no host keys: each VM makes its own);
#                        Ferry's init is /sbin/init. zstd squashfs, mounted
#                        read-only.
#   OUT/vmlinuz          the kernel of Debian's linux-image-cloud-amd64
#   OUT/initrd.img       init plus the kernel modules it needs to reach the
#                        root image (virtio, blk, net, console, vsock,
#                        squashfs, overlay) with their modules.dep
#   OUT/kernel.release   the kernel's release string
#
# With FERRY_LAYOUT=aleph (make rootfs-aleph) it builds instead
#   OUT/rootfs-aleph.squashfs  the same Debian tree in the layout of the
#                        reference runtime's image (aleph-vm's
#                        runtimes/aleph-debian-12-python): Ferry's init as
#                        /sbin/init in place of init0.sh and init1.py, and
#                        the mount points and directories those use. For
#                        aleph-vm's supervisor under Firecracker, which boots
#                        its own kernel with no initrd (rootfs/README.md).
#
# Usage: rootfs/build.sh INIT_BINARY [OUT_DIR]   (as root; OUT_DIR defaults
# to build/rootfs). Each output is rebuilt only when its inputs changed: the
# Debian tree is keyed by this script and the package list, the squashfs and
# the initrd by init's checksum as well. FERRY_MIRROR overrides the Debian
# mirror (default: the first one in apt's sources).
set -euo pipefail

init_bin=${1:?usage: rootfs/build.sh INIT_BINARY [OUT_DIR]}
out=${2:-build/rootfs}
suite=bookworm
layout=${FERRY_LAYOUT:-ferry}
case $layout in ferry | aleph) ;; *) printf 'rootfs: error: FERRY_LAYOUT=%s: want ferry or aleph\n' "$layout" >&2; exit 1 ;; esac
# openssh-server is for instances (README "Instances"): init starts sshd only
# for them, programs booted from the same image never run it.
packages=python3,python3-fastapi,python3-uvloop,ca-certificates,openssh-server
# Bump when the debootstrap or trimming steps below change (the Debian tree
# is cached by this, the suite and the packages).
base_recipe=2
# Modules init loads before the root is mounted, by name; their dependencies
# come along from modules.dep.
modules="virtio_mmio virtio_pci virtio_blk virtio_net virtio_console vmw_vsock_virtio_transport squashfs overlay"

# Progress: every line carries the time since the start; a long step
# (debootstrap, the kernel's download, mksquashfs) says how far it is
# every FERRY_PROGRESS_EVERY seconds (default 10) and how long it took.
started_ns=$(date +%s%N)
elapsed() { local ms=$((($(date +%s%N) - started_ns) / 1000000)); printf '%d.%ds' $((ms / 1000)) $((ms % 1000 / 100)); }
say() { printf 'rootfs: [%s] %s\n' "$(elapsed)" "$*" >&2; }
die() { say "error: $*"; exit 1; }
bytes() { numfmt --to=iec-i --suffix=B "${1:-0}"; }
# tree_bytes DIR...: the bytes of the files under DIR (0 when missing),
# staying on DIR's filesystem: debootstrap mounts /proc in its target
# while it runs, and du must neither read it nor keep it busy.
tree_bytes() { { du -sbx "$@" 2>/dev/null || true; } | awk '{n += $1} END {print n + 0}'; }
# unmount_under DIR...: unmounts what is mounted below DIR (debootstrap
# mounts /proc, /sys and /dev/pts in its target and, should anything hold
# them when it ends, leaves them there), deepest first; fails if any stays.
unmount_under() {
	local dir mnt
	for dir in "$@"; do
		[ -d "$dir" ] || continue
		dir=$(cd "$dir" && pwd -P)
		for mnt in $(findmnt -rn -o TARGET | grep -F "$dir/" | sort -r); do
			umount "$mnt" 2>/dev/null || umount -l "$mnt" || die "cannot unmount $mnt"
		done
	done
}
# step LABEL STATUS CMD...: runs CMD; while it runs, says LABEL and what
# the function STATUS prints every FERRY_PROGRESS_EVERY seconds; then how
# long it took. Returns CMD's status.
step() {
	local label=$1 status=$2 every=${FERRY_PROGRESS_EVERY:-10} t0 pid rc=0 i
	shift 2
	t0=$(date +%s%N)
	say "$label: started"
	"$@" &
	pid=$!
	while kill -0 "$pid" 2>/dev/null; do
		for ((i = 0; i < every * 5; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.2
		done
		kill -0 "$pid" 2>/dev/null && say "$label: $($status)"
	done
	wait "$pid" || rc=$?
	local ms=$((($(date +%s%N) - t0) / 1000000))
	((rc == 0)) && say "$label: done in $((ms / 1000)).$((ms % 1000 / 100))s"
	return "$rc"
}

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, device nodes)"
for tool in debootstrap mksquashfs depmod cpio apt-get dpkg-deb sha256sum; do
	command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install debootstrap squashfs-tools kmod cpio)"
done
[ -x "$init_bin" ] || die "init binary $init_bin is not an executable"
file_type=$(head -c 4 "$init_bin" | od -An -c | tr -d ' ')
[ "$file_type" = '177ELF' ] || die "$init_bin is not an ELF binary"

mirror=${FERRY_MIRROR:-$(grep -hoE '^(URIs: |deb )https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | grep -v security | head -1 | sed -E 's/^(URIs: |deb )//' || true)}
mirror=${mirror:-http://deb.debian.org/debian}

mkdir -p "$out"
out=$(cd "$out" && pwd)
script_sum=$(sha256sum "$0" | cut -c1-16)
init_sum=$(sha256sum "$init_bin" | cut -c1-16)

# 1. The Debian tree, trimmed. Slow (debootstrap), so cached by its inputs.
base_key=$(printf '%s %s %s\n' "$base_recipe" "$suite" "$packages" | sha256sum | cut -c1-16)
base=$out/base-$base_key
if [ ! -e "$base/.complete" ]; then
	say "debootstrap $suite ($packages) from $mirror"
	unmount_under "$out"/base-*
	rm -rf --one-file-system "$out"/base-*
	# debootstrap's own last step (I: Retrieving, Extracting, Unpacking,
	# Configuring...), the packages downloaded so far and the tree's size.
	debootstrap_status() {
		local last
		last=$(grep -E '^I: ' "$out/debootstrap.log" 2>/dev/null | tail -1 | cut -c4-)
		printf '%s; downloaded %s; tree %s' "${last:-resolving}" "$(bytes "$(tree_bytes "$base.tmp"/var/cache/apt/archives)")" "$(bytes "$(tree_bytes "$base.tmp")")"
	}
	rc=0
	step debootstrap debootstrap_status debootstrap --variant=minbase --include="$packages" "$suite" "$base.tmp" "$mirror" >"$out/debootstrap.log" 2>&1 || rc=$?
	unmount_under "$base.tmp"
	((rc == 0)) || { tail -20 "$out/debootstrap.log" >&2; die "debootstrap failed (log: $out/debootstrap.log)"; }
	say "debootstrap: downloaded $(bytes "$(tree_bytes "$base.tmp"/var/cache/apt/archives)"), tree $(bytes "$(tree_bytes "$base.tmp")")"
	(
		cd "$base.tmp"
		rm -rf var/lib/apt/lists/* var/cache/apt/* var/cache/debconf/*-old var/log/* \
			usr/share/doc/* usr/share/man/* usr/share/info/* usr/share/lintian usr/share/bug
		find usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
		# A machine id is made per boot if anything needs one; the image has none.
		: >etc/machine-id
		# openssh-server's installation made host keys: an image shared by
		# every VM must not carry them (init makes each root's own, kept
		# when the root persists).
		rm -f etc/ssh/ssh_host_*
		# Mount points init uses.
		mkdir -p code data proc sys dev run tmp
	)
	touch "$base.tmp/.complete"
	mv "$base.tmp" "$base"
fi

# The reference layout: the tree with init as /sbin/init and the reference's
# directories added as pseudo files (the cached tree stays as it is):
# init0.sh's overlay mount points, /opt/code (the code drive), /opt/packages
# and /opt/aleph/libs (init1.py's sys.path and init0.sh's PYTHONPATH, where
# an operator puts the SDK), /data (input and output data) and /etc/ferry
# (where /etc/ferry/aleph-shell enables shell commands). mksquashfs's
# default compression (gzip), as the reference's create_disk_image.sh.
if [ "$layout" = aleph ]; then
	image_key=$(printf '%s %s %s aleph\n' "$base_key" "$init_sum" "$script_sum" | sha256sum | cut -c1-16)
	if [ "$(cat "$out/rootfs-aleph.key" 2>/dev/null)" != "$image_key" ]; then
		say "squashfs image in the reference layout"
		install -m 0755 "$init_bin" "$base/sbin/init"
		pseudo=()
		for dir in /overlay /mnt /mnt/rom /opt /opt/code /opt/packages /opt/aleph /opt/aleph/libs /data /etc/ferry; do
			[ -d "$base$dir" ] || pseudo+=(-p "$dir d 755 0 0")
		done
		rm -f "$out/rootfs-aleph.squashfs.tmp"
		mksquashfs "$base" "$out/rootfs-aleph.squashfs.tmp" -noappend -quiet -no-progress "${pseudo[@]}" -e .complete >/dev/null
		mv "$out/rootfs-aleph.squashfs.tmp" "$out/rootfs-aleph.squashfs"
		echo "$image_key" >"$out/rootfs-aleph.key"
	fi
	say "ready in $out: rootfs-aleph.squashfs $(du -h "$out/rootfs-aleph.squashfs" | cut -f1)"
	exit 0
fi

# 2. The kernel: Debian's cloud kernel package, unpacked (cached by version).
kernel_package() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}'; }
kpkg=$(kernel_package)
if [ -z "$kpkg" ]; then
	say "apt knows no linux-image-cloud-amd64; apt-get update"
	apt-get update -qq >/dev/null 2>&1 || true
	kpkg=$(kernel_package)
fi
[ -n "$kpkg" ] || die "cannot find the package linux-image-cloud-amd64 depends on (apt-get update?)"
kdir=$out/kernel-$kpkg
if [ ! -e "$kdir/.complete" ]; then
	ksize=$(apt-cache show --no-all-versions "$kpkg" 2>/dev/null | awk '/^Size:/ {print $2; exit}')
	say "downloading $kpkg ($(bytes "${ksize:-0}"))"
	rm -rf "$out"/kernel-*
	mkdir -p "$kdir.tmp"
	kernel_status() { printf '%s of %s' "$(bytes "$(tree_bytes "$kdir.tmp")")" "$(bytes "${ksize:-0}")"; }
	kernel_download() { cd "$kdir.tmp" && apt-get download "$kpkg" >/dev/null 2>&1; }
	step "kernel download" kernel_status kernel_download || die "apt-get download $kpkg failed"
	say "kernel download: $(bytes "$(tree_bytes "$kdir.tmp")")"
	dpkg-deb -x "$kdir.tmp"/*.deb "$kdir.tmp/x"
	touch "$kdir.tmp/.complete"
	mv "$kdir.tmp" "$kdir"
fi
release=$(ls "$kdir/x/lib/modules" | head -1)
[ -n "$release" ] || die "no modules directory in $kpkg"

# 3. The initrd: init and the modules it needs, with a modules.dep.
initrd_key=$(printf '%s %s %s %s\n' "$script_sum" "$init_sum" "$release" "$modules" | sha256sum | cut -c1-16)
if [ "$(cat "$out/initrd.key" 2>/dev/null)" != "$initrd_key" ]; then
	say "initrd for $release: started"
	stage=$(mktemp -d)
	trap 'rm -rf "$stage"' EXIT
	full=$kdir/x/lib/modules/$release
	[ -e "$full/modules.dep" ] || depmod -b "$kdir/x" -F "$kdir/x/boot/System.map-$release" "$release"
	mkdir -p "$stage/lib/modules/$release" "$stage/dev" "$stage/proc" "$stage/sys" "$stage/newroot"
	# The closure of the wanted modules over modules.dep.
	wanted=$(awk -v want="$modules" '
		function norm(p,  n) { n = p; sub(/.*\//, "", n); sub(/\.ko.*/, "", n); gsub(/-/, "_", n); return n }
		BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) need[w[i]] = 1 }
		{ sub(/:$/, "", $1); name = norm($1); path[name] = $1; deps[name] = ""; for (i = 2; i <= NF; i++) deps[name] = deps[name] " " norm($i) }
		END {
			for (k in need) { if (!(k in path)) { print "missing " k > "/dev/stderr"; exit 1 } }
			do { changed = 0; for (k in need) { m = split(deps[k], d, " "); for (i = 1; i <= m; i++) if (!(d[i] in need)) { need[d[i]] = 1; changed = 1 } } } while (changed)
			for (k in need) print path[k]
		}' "$full/modules.dep") || die "a wanted module is not in $kpkg"
	for rel in $wanted; do
		mkdir -p "$stage/lib/modules/$release/$(dirname "$rel")"
		cp "$full/$rel" "$stage/lib/modules/$release/$rel"
	done
	cp "$full/modules.builtin" "$full/modules.builtin.modinfo" "$full/modules.order" "$stage/lib/modules/$release/" 2>/dev/null || true
	depmod -b "$stage" -F "$kdir/x/boot/System.map-$release" "$release"
	cp "$init_bin" "$stage/init"
	mknod -m 600 "$stage/dev/console" c 5 1
	(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$out/initrd.img.tmp"
	mv "$out/initrd.img.tmp" "$out/initrd.img"
	cp "$kdir/x/boot/vmlinuz-$release" "$out/vmlinuz"
	echo "$release" >"$out/kernel.release"
	echo "$initrd_key" >"$out/initrd.key"
	rm -rf "$stage"
	trap - EXIT
	say "initrd: done, $(bytes "$(tree_bytes "$out/initrd.img")")"
fi

# 4. The root image: the Debian tree with init as /sbin/init.
image_key=$(printf '%s %s %s\n' "$base_key" "$init_sum" "$script_sum" | sha256sum | cut -c1-16)
if [ "$(cat "$out/rootfs.key" 2>/dev/null)" != "$image_key" ]; then
	install -m 0755 "$init_bin" "$base/sbin/init"
	rm -f "$out/rootfs.squashfs.tmp"
	tree=$(tree_bytes "$base")
	say "squashfs image of a $(bytes "$tree") tree"
	squashfs_status() { printf 'image %s so far (tree %s)' "$(bytes "$(tree_bytes "$out/rootfs.squashfs.tmp")")" "$(bytes "$tree")"; }
	step mksquashfs squashfs_status mksquashfs "$base" "$out/rootfs.squashfs.tmp" -comp zstd -noappend -quiet -no-progress -e .complete >/dev/null
	mv "$out/rootfs.squashfs.tmp" "$out/rootfs.squashfs"
	echo "$image_key" >"$out/rootfs.key"
fi
say "ready in $out: rootfs.squashfs $(du -h "$out/rootfs.squashfs" | cut -f1), vmlinuz ($release), initrd.img $(du -h "$out/initrd.img" | cut -f1)"
