#!/usr/bin/env bash
# Stop what setup.sh started (slurmd, slurmctld, slurmdbd, MariaDB, munged) and remove its
# state dir and its /etc/slurm/slurm.conf symlink. Only the processes named in setup.sh's pid files, and job steps of that
# slurmd, are signalled. `--keep` leaves the state dir (logs, database) for inspection.
set -euo pipefail

STATE=${HEMAFLOW_SLURM_STATE:-/tmp/hemaflow-slurm}
keep=false
[ "${1:-}" = --keep ] && keep=true

if [ ! -d "$STATE" ]; then
    echo "teardown.sh: nothing to stop ($STATE does not exist)"
    exit 0
fi
exec 9<"$(dirname "${BASH_SOURCE[0]}")/setup.sh"
flock 9
export SLURM_CONF=$STATE/etc/slurm.conf

# running PID NAME: PID is a live (not zombie) process called NAME.
running() {
    [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] &&
        [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}
# stop NAME PIDFILE: SIGTERM, then SIGKILL after 30 s.
stop() {
    local name=$1 pid
    [ -s "$2" ] || return 0
    pid=$(tr -dc '0-9' <"$2")
    running "$pid" "$name" || return 0
    kill -TERM "$pid"
    for _ in $(seq 60); do
        running "$pid" "$name" || { echo "teardown.sh: stopped $name (pid $pid)"; return 0; }
        sleep 0.5
    done
    echo "teardown.sh: $name (pid $pid) ignored SIGTERM for 30s; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
}

# Jobs first, so their steps end cleanly; this cluster is private to the tests.
if running "$(tr -dc '0-9' 2>/dev/null <"$STATE/run/slurmctld.pid")" slurmctld; then
    scancel --user="$(id -un)" 2>/dev/null || true
fi
stop slurmd "$STATE/run/slurmd.pid"
# Job steps that outlived slurmd: only those started under this cluster's config.
for pid in $(pgrep -x slurmstepd || true); do
    if tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | grep -x "SLURM_CONF=$SLURM_CONF" >/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
done
stop slurmctld "$STATE/run/slurmctld.pid"
stop slurmdbd "$STATE/run/slurmdbd.pid"
stop mariadbd "$STATE/mysql/mysqld.pid"
stop munged "$STATE/munge/munged.pid"

if [ "$(readlink /etc/slurm/slurm.conf)" = "$SLURM_CONF" ]; then
    rm -f /etc/slurm/slurm.conf
fi
if $keep; then
    echo "teardown.sh: kept $STATE"
else
    rm -rf "$STATE"
fi
