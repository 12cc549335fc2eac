#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine (munged, slurmctld, slurmd; no database), for tests/test_slurm.py
# and for trying profiles/slurm by hand. Needs root and Debian's apt.
#
#   tests/workflow/cluster/local_slurm.sh start    install if needed, write the config, start the daemons, wait for an idle node
#   tests/workflow/cluster/local_slurm.sh stop     stop the daemons by their PID files
#   tests/workflow/cluster/local_slurm.sh status   print the node state; exit 0 when the daemons run and the node is up
#
# Environment:
#   MMHEALTH_SLURM_STATE       state folder (default /tmp/mmhealth-slurm): config, spool, logs, PID files, job records
#   MMHEALTH_SLURM_PARTITIONS  partition names, space separated, the first is the default (default "main");
#                              they must include every slurm_partition that profiles/slurm/profile.yaml asks for
#
# The config lives in the state folder; while the cluster runs /etc/slurm/slurm.conf links to it, because the
# srun inside each Snakemake job drops SLURM_CONF. `stop` removes the link: with a config naming a stopped
# controller every Snakemake start on this machine would wait ~10 s (the slurm plugin runs `scontrol show config`).
# A real /etc/slurm/slurm.conf (not our link) is never touched: then `start` refuses.
# Job completion records (one line per finished job, no slurmdbd): $MMHEALTH_SLURM_STATE/jobcomp.txt
set -euo pipefail

STATE=${MMHEALTH_SLURM_STATE:-/tmp/mmhealth-slurm}
PARTITIONS=${MMHEALTH_SLURM_PARTITIONS:-main}
ETC=$STATE/etc
CONF=$ETC/slurm.conf
MUNGE=$STATE/munge
SOCKET=$MUNGE/munge.socket
LOGS=$STATE/log
SYSTEM_CONF=/etc/slurm/slurm.conf
export SLURM_CONF=$CONF

log() { echo "local_slurm: $*" >&2; }
die() { log "$*"; exit 1; }

pid_alive() {  # pid_alive FILE: the process named in FILE runs
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_packages() {
    local missing=()
    for cmd in slurmctld slurmd sbatch munged; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null || die "apt-get not found; install SLURM and munge by hand (missing: ${missing[*]})"
    log "installing slurmctld slurmd slurm-client munge"
    # Update the package lists only when apt does not know the packages yet.
    if ! apt-cache show slurmctld >/dev/null 2>&1; then
        apt-get update -q >&2
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge >&2
}

write_munge_key() {
    install -d -m 0755 -o munge -g munge "$MUNGE"  # clients need to reach the socket
    if [[ ! -s $MUNGE/munge.key ]]; then
        dd if=/dev/urandom of="$MUNGE/munge.key" bs=1024 count=1 status=none
    fi
    chown munge:munge "$MUNGE/munge.key"
    chmod 0400 "$MUNGE/munge.key"
}

write_config() {
    local host hardware first=1 partition_lines=""
    host=$(hostname -s)
    # The first line of `slurmd -C` is this machine's NodeName=... CPUs=... RealMemory=... line.
    hardware=$(slurmd -C | head -n 1)
    [[ $hardware == NodeName=* ]] || die "unexpected 'slurmd -C' output: $hardware"
    for partition in $PARTITIONS; do
        partition_lines+="PartitionName=$partition Nodes=ALL MaxTime=INFINITE State=UP Default=$( ((first)) && echo YES || echo NO)"$'\n'
        first=0
    done
    mkdir -p "$ETC" "$STATE/ctld" "$STATE/slurmd" "$LOGS"
    cat > "$CONF" <<EOF
# Written by tests/workflow/cluster/local_slurm.sh: one node, no database, no cgroups, one fake GPU.
ClusterName=mmhealth
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Reject at submission a job no partition can ever run (else it pends forever).
EnforcePartLimits=ALL
# squeue keeps finished jobs this long: the Snakemake plugin's squeue status checks rely on it.
MinJobAge=300
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/jobcomp.txt
GresTypes=gpu
$hardware NodeAddr=127.0.0.1 Gres=gpu:1 State=UNKNOWN
$partition_lines
EOF
    # A fake GPU: jobs asking --gpus=1 are scheduled and get CUDA_VISIBLE_DEVICES=0.
    echo "NodeName=$host Name=gpu File=/dev/null" > "$ETC/gres.conf"
    mkdir -p "$(dirname "$SYSTEM_CONF")"
    ln -sfn "$CONF" "$SYSTEM_CONF"
}

own_system_conf() {  # /etc/slurm/slurm.conf is absent or our link
    [[ ! -e $SYSTEM_CONF && ! -L $SYSTEM_CONF ]] || [[ $(readlink "$SYSTEM_CONF") == "$CONF" ]]
}

node_state() {
    sinfo --noheader --Node --format=%T 2>/dev/null | head -n 1
}

cmd_status() {
    pid_alive "$STATE/slurmctld.pid" && pid_alive "$STATE/slurmd.pid" || return 1
    local state
    state=$(node_state)
    case $state in
        idle | mixed | allocated | completing) echo "$state"; return 0 ;;
        *) return 1 ;;
    esac
}

has_partitions() {  # every partition in MMHEALTH_SLURM_PARTITIONS exists
    local known
    known=" $(sinfo --noheader --format=%R 2>/dev/null | tr '\n' ' ') "
    for partition in $PARTITIONS; do
        [[ $known == *" $partition "* ]] || return 1
    done
}

cmd_start() {
    [[ $(id -u) == 0 ]] || die "needs root"
    if cmd_status >/dev/null && has_partitions; then
        log "already running; config $CONF"
        return 0
    fi
    install_packages
    own_system_conf || die "$SYSTEM_CONF exists and is not ours: this machine has a SLURM setup; not touching it"
    cmd_stop 2>/dev/null || true
    write_munge_key
    write_config
    # munged refuses to run as root; its socket folder must belong to munge.
    runuser -u munge -- munged --socket="$SOCKET" --key-file="$MUNGE/munge.key" --pid-file="$MUNGE/munged.pid" \
        --log-file="$MUNGE/munged.log" --seed-file="$MUNGE/munged.seed"
    slurmctld -f "$CONF"
    slurmd -f "$CONF"
    local waited=0
    until cmd_status >/dev/null; do
        ((waited++ < 60)) || die "node not idle after 60 s (state '$(node_state)'); see $LOGS"
        # A node left DOWN by an earlier run comes back with ReturnToService=2 once slurmd registers.
        sleep 1
    done
    log "running: node $(node_state), partitions: $PARTITIONS, config $CONF (linked from $SYSTEM_CONF)"
}

stop_by_pid_file() {  # stop_by_pid_file NAME FILE
    local pid
    pid_alive "$2" || { rm -f "$2"; return 0; }
    pid=$(cat "$2")
    kill "$pid"
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$2"; return 0; }
        sleep 0.2
    done
    log "$1 ($pid) ignored SIGTERM for 10 s; sending SIGKILL"
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$2"
}

cmd_stop() {
    stop_by_pid_file slurmd "$STATE/slurmd.pid"
    stop_by_pid_file slurmctld "$STATE/slurmctld.pid"
    stop_by_pid_file munged "$MUNGE/munged.pid"
    if [[ -L $SYSTEM_CONF ]] && own_system_conf; then
        rm -f "$SYSTEM_CONF"
    fi
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) die "usage: $0 start|stop|status" ;;
esac
