# Sourced, not run: points buildah and podman (and whatever they start) at
# Molt's own container storage and engine settings, so deploy checks never
# touch the machine's default storage nor another user's containers.
#
# What this machine kind needs (see deploy/README.md, "Checks"): the vfs
# storage driver (no overlay mounts inside the VM), the runc runtime with
# cgroupfs (crun fails on the hybrid cgroup layout), events in a file (no
# journald). Containers run on the host network, so no CNI set-up is needed.
#
# MOLT_CONTAINERS_DIR (default ~/.cache/molt/containers) holds the image
# layers; the run state goes under /run when it is writable, so a reboot
# never leaves stale container state behind.

molt_containers_setup() {
    local dir="${MOLT_CONTAINERS_DIR:-$HOME/.cache/molt/containers}"
    # One run directory per storage directory: podman refuses a run state
    # that belongs to other storage.
    local run
    run="/run/molt-containers-$(id -u)-$(printf '%s' "$dir" | sha256sum | cut -c1-8)"
    if ! mkdir -p "$run" 2>/dev/null; then
        run="$dir/run"
    fi
    mkdir -p "$dir/storage" "$run/libpod" "$dir/conf"
    # runc refuses rlimits above what this VM lets it set, and podman's
    # defaults (nofile 1048576, nproc at the host's) are above them here:
    # open files up to our own hard limit, 4096 processes (threads) each.
    local nofile
    nofile="$(ulimit -Hn)"
    [[ "$nofile" == unlimited ]] && nofile=1048576
    cat >"$dir/conf/storage.conf" <<CONF
[storage]
driver = "vfs"
graphroot = "$dir/storage"
runroot = "$run/storage"
CONF
    cat >"$dir/conf/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=4096:4096"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$run/events.log"
runtime = "runc"
tmp_dir = "$run/libpod"
CONF
    export CONTAINERS_STORAGE_CONF="$dir/conf/storage.conf"
    export CONTAINERS_CONF="$dir/conf/containers.conf"
}

molt_containers_setup
