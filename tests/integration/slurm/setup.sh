#!/usr/bin/env bash
# Bring up a single-node Slurm on loopback for the integration tests: munged, MariaDB,
# slurmdbd, slurmctld and slurmd, each a private instance whose config, data, logs and
# pid files live under $HEMAFLOW_SLURM_STATE (default /tmp/hemaflow-slurm), and
# teardown.sh stops exactly these processes. The only file outside that dir is the
# symlink /etc/slurm/slurm.conf: the executor plugin's job step drops SLURM_CONF before
# it calls srun, so clients inside jobs must find the config at its default path.
# Installs the Debian packages on first use (root, no systemd needed). Idempotent: a
# second run with everything up only re-checks it.
set -euo pipefail

STATE=${HEMAFLOW_SLURM_STATE:-/tmp/hemaflow-slurm}
CLUSTER=${HEMAFLOW_SLURM_CLUSTER:-hemaflow}
ACCOUNT=${HEMAFLOW_SLURM_ACCOUNT:-hemaflow}
PARTITION=${HEMAFLOW_SLURM_PARTITION:-debug}
TIMEOUT=${HEMAFLOW_SLURM_TIMEOUT:-90}
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)

NODE=$(hostname -s)
ETC=$STATE/etc
MUNGE_DIR=$STATE/munge
DB_DIR=$STATE/mysql
DB_SOCKET=$DB_DIR/mysqld.sock
export SLURM_CONF=$ETC/slurm.conf

say() { echo "setup.sh: $*"; }
die() {
    echo "setup.sh: ERROR: $1" >&2
    if [ -n "${2:-}" ]; then
        echo "---- last lines of $2 ----" >&2
        tail -n 40 "$2" >&2 2>/dev/null || echo "(no log written)" >&2
    fi
    exit 1
}

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs Debian packages and starts daemons)"
command -v apt-get >/dev/null || die "needs a Debian-like system with apt-get"

# setup.sh and teardown.sh lock this file, so concurrent runs take turns.
exec 9<"${BASH_SOURCE[0]}"
flock 9

# ---------------------------------------------------------------- packages
# grep without -q reads all input: with pipefail, an early exit could fail the writer.
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep '^install ok installed$' >/dev/null; }
missing=()
for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    # Another apt run may hold the locks: wait for it rather than fail.
    apt-get -q -o DPkg::Lock::Timeout=600 update >/dev/null || die "apt-get update failed (message above)"
    apt-get -q -y -o DPkg::Lock::Timeout=600 install --no-install-recommends "${missing[@]}" >/dev/null ||
        die "apt-get install ${missing[*]} failed (message above)"
fi

# ---------------------------------------------------------------- process bookkeeping
# pidfile_of NAME -> where that daemon writes its pid (set by the configs below).
pidfile_of() {
    case $1 in
        munged) echo "$MUNGE_DIR/munged.pid" ;;
        mariadbd) echo "$DB_DIR/mysqld.pid" ;;
        *) echo "$STATE/run/$1.pid" ;;
    esac
}
# alive NAME: its pid file names a live process of that name (guards against pid reuse).
alive() {
    local f pid
    f=$(pidfile_of "$1")
    [ -s "$f" ] || return 1
    pid=$(tr -dc '0-9' <"$f")
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}
# await NAME LOG CMD...: wait until CMD succeeds; fail fast if NAME died, with its log.
await() {
    local name=$1 log=$2 end=$((SECONDS + TIMEOUT))
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [ -s "$(pidfile_of "$name")" ] && ! alive "$name"; then
            die "$name exited during start-up" "$log"
        fi
        [ $SECONDS -lt $end ] || die "$name not ready after ${TIMEOUT}s (waited for: $*)" "$log"
        sleep 0.5
    done
}
# Daemons must not hold our stdout (a caller capturing it would wait forever) nor the lock.
# setsid -f: the daemon is nobody's child here (MariaDB does not fork on its own).
detach() { setsid -f "$@" </dev/null >>"$STATE/log/daemons.out" 2>&1 9<&-; }

mkdir -p "$ETC" "$STATE/run" "$STATE/log" "$STATE/slurmctld" "$STATE/slurmd" "$MUNGE_DIR" "$DB_DIR"
chmod 755 "$STATE"
chown munge:munge "$MUNGE_DIR"
chown mysql:mysql "$DB_DIR"

# ---------------------------------------------------------------- configs
cpus=$(nproc)
mem_total=$(free -m | awk '/^Mem:/ {print $2}')
real_memory=$((mem_total * 95 / 100))  # slurmd drains the node if this exceeds what it sees

cat >"$ETC/slurm.conf" <<EOF
# Written by tests/integration/slurm/setup.sh: a single-node test cluster on loopback.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
# Bind to what the host name resolves to (127.0.0.1 here), not to every address.
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
AuthType=auth/munge
AuthInfo=socket=$MUNGE_DIR/munge.socket.2
CredType=cred/munge
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# No systemd and no delegated cgroups here: track processes through /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=300
# The Snakemake executor plugin reads job states with sacct, so accounting is required.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePass=$MUNGE_DIR/munge.socket.2
AccountingStorageEnforce=associations
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
MailProg=/bin/true
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_memory State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

cat >"$ETC/slurmdbd.conf" <<EOF
# Written by tests/integration/slurm/setup.sh.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_DIR/munge.socket.2
DbdHost=localhost
DbdAddr=127.0.0.1
CommunicationParameters=NoInAddrAny
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
chmod 600 "$ETC/slurmdbd.conf"  # slurmdbd refuses a config others can read

{
    echo "SLURM_CONF=$SLURM_CONF"
    echo "HEMAFLOW_SLURM_STATE=$STATE"
    echo "HEMAFLOW_SLURM_CLUSTER=$CLUSTER"
    echo "HEMAFLOW_SLURM_ACCOUNT=$ACCOUNT"
    echo "HEMAFLOW_SLURM_PARTITION=$PARTITION"
    echo "HEMAFLOW_SLURM_NODE=$NODE"
    echo "HEMAFLOW_SLURM_CPUS=$cpus"
    echo "HEMAFLOW_SLURM_MEM_MB=$real_memory"
} >"$STATE/cluster.env"

# A site's own slurm.conf is never replaced; ours is a symlink that teardown.sh removes.
if [ -e /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" != "$SLURM_CONF" ]; then
    die "/etc/slurm/slurm.conf exists and is not this test cluster's; move it away to run the Slurm tests here"
fi
ln -sfn "$SLURM_CONF" /etc/slurm/slurm.conf

# ---------------------------------------------------------------- munged
munge_socket=$MUNGE_DIR/munge.socket.2
if ! alive munged; then
    say "starting munged"
    if [ ! -s /etc/munge/munge.key ]; then
        runuser -u munge -- mungekey --create
    fi
    detach runuser -u munge -- /usr/sbin/munged --socket="$munge_socket" \
        --pid-file="$(pidfile_of munged)" --log-file="$MUNGE_DIR/munged.log" \
        --seed-file="$MUNGE_DIR/munged.seed"
fi
munge_roundtrip() { munge -n -S "$munge_socket" | unmunge -S "$munge_socket"; }
await munged "$MUNGE_DIR/munged.log" munge_roundtrip

# ---------------------------------------------------------------- MariaDB (socket only)
db_log=$DB_DIR/error.log
if ! alive mariadbd; then
    if [ ! -d "$DB_DIR/data/mysql" ]; then
        say "initialising MariaDB in $DB_DIR/data"
        mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR/data" \
            --auth-root-authentication-method=socket --skip-test-db >"$DB_DIR/install.log" 2>&1 ||
            die "mariadb-install-db failed" "$DB_DIR/install.log"
    fi
    say "starting MariaDB"
    # slurmdbd recommends a long lock wait; no TCP port at all (socket only).
    detach /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DB_DIR/data" \
        --socket="$DB_SOCKET" --pid-file="$(pidfile_of mariadbd)" --log-error="$db_log" \
        --skip-networking --innodb-lock-wait-timeout=900 --innodb-buffer-pool-size=128M
fi
await mariadbd "$db_log" mariadb-admin --no-defaults --socket="$DB_SOCKET" ping

# ---------------------------------------------------------------- slurmdbd
if ! alive slurmdbd; then
    say "starting slurmdbd"
    # libmariadb connects to "localhost" through MYSQL_UNIX_PORT.
    MYSQL_UNIX_PORT=$DB_SOCKET detach slurmdbd
fi
await slurmdbd "$STATE/log/slurmdbd.log" sacctmgr -n show cluster

listed() { grep -x "$1" >/dev/null; }
sacctmgr -n -P show cluster format=cluster | listed "$CLUSTER" ||
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
sacctmgr -n -P show account format=account | listed "$ACCOUNT" ||
    sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description="hemaflow tests" organization=hemaflow >/dev/null
sacctmgr -n -P show assoc where cluster="$CLUSTER" account="$ACCOUNT" user=root format=user | listed root ||
    sacctmgr -i add user root account="$ACCOUNT" cluster="$CLUSTER" >/dev/null

# ---------------------------------------------------------------- slurmctld, slurmd
if ! alive slurmctld; then
    say "starting slurmctld"
    detach slurmctld
fi
await slurmctld "$STATE/log/slurmctld.log" bash -c 'scontrol ping | grep -q UP'

if ! alive slurmd; then
    say "starting slurmd"
    detach slurmd
fi
node_idle() { [ "$(sinfo -h -N -n "$NODE" -p "$PARTITION" -o %T)" = idle ]; }
await slurmd "$STATE/log/slurmd.log" node_idle
root_assoc() { sacctmgr -n -P show assoc where cluster="$CLUSTER" account="$ACCOUNT" format=user | listed root; }
await slurmdbd "$STATE/log/slurmdbd.log" root_assoc

say "up: cluster=$CLUSTER account=$ACCOUNT partition=$PARTITION node=$NODE cpus=$cpus mem_mb=$real_memory"
say "use it with: export SLURM_CONF=$SLURM_CONF"
