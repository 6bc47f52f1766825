#!/usr/bin/env bash
# A one-node Slurm cluster on localhost, for tests and for trying the sbatch templates.
#
#   slurm/local_cluster.sh start DIR    install (if missing) and start munged + slurmctld + slurmd
#   slurm/local_cluster.sh stop DIR     cancel all jobs, stop the daemons recorded under DIR
#   slurm/local_cluster.sh status DIR   exit 0 if all three daemons of DIR are running
#
# Runs as root, without systemd. Everything lives under DIR:
#   DIR/slurm.conf   DIR/env.sh (source it: exports SLURM_CONF for sinfo/sbatch/srun/...)
#   DIR/state (slurmctld StateSaveLocation)   DIR/spool (slurmd spool)   DIR/log/*.log
#   DIR/munged.pid DIR/slurmctld.pid DIR/slurmd.pid   DIR/munge/ (key, seed, socket dir)
# Clients find the private munge socket through AuthInfo=socket=... in slurm.conf, so
# SLURM_CONF is all they need. Job state survives stop/start (job ids keep counting up, so
# default run dirs such as runs/<name>-<jobid> never collide with an earlier session).
#
# Environment:
#   LOCAL_SLURM_CTLD_PORT (6817), LOCAL_SLURM_SLURMD_PORT (6818)  ports; change them to run
#                                 two clusters at once (the test fixture picks free ones)
#   LOCAL_SLURM_TIMEOUT (60)      seconds to wait for the node to become idle
#
# Slurm 22.05 notes (Debian 12):
#   - no slurmdbd, so `sacct` does not work: use `squeue` / `scontrol show job`.
#   - a job requeued with `scontrol requeue` stays PENDING (BeginTime = now + ~120 s); send
#     `scontrol update JobId=N StartTime=now` once it is PENDING to start it at once, but
#     wait 2 s after the requeue first: a relaunch within the same second is refused by
#     slurmd ("Job credential revoked") and the job ends FAILED.
#   - a signal to a step (srun forwarding, scancel --signal without --batch) reaches EVERY
#     process of the step, children such as DataLoader workers included.
#   - `--signal=B:USR1@N` may arrive up to 60 s earlier than N seconds before the limit.
#   - `sbatch --wait` can return 2-10 s after the job ended.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

die() { echo "local_cluster.sh: error: $*" >&2; exit 1; }
log() { echo "local_cluster.sh: $*"; }

DAEMONS=(munged slurmctld slurmd)   # start order; stop goes in reverse

# PID of daemon $1 of this DIR if it is running, else nothing (checks the name, so a
# recycled PID of an unrelated process is never reported).
live_pid() {
    local pidfile="$DIR/$1.pid" pid
    [[ -s $pidfile ]] || return 0
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    [[ -r /proc/$pid/comm && $(<"/proc/$pid/comm") == "$1" ]] || return 0
    local stat
    stat=$(<"/proc/$pid/stat") 2>/dev/null || return 0
    stat=${stat##*) }                 # fields after "pid (comm) "
    [[ ${stat:0:1} == Z ]] || echo "$pid"   # a zombie has exited already
    return 0
}

all_running() {
    local d
    for d in "${DAEMONS[@]}"; do [[ -n $(live_pid "$d") ]] || return 1; done
}

ensure_installed() {
    local b missing=0
    for b in munged slurmctld slurmd sinfo sbatch srun scontrol; do
        command -v "$b" >/dev/null 2>&1 || missing=1
    done
    ((missing)) || return 0
    [[ $(id -u) == 0 ]] || die "Slurm/munge missing and not root: install slurmctld slurmd slurm-client munge"
    local pkgs=(slurmctld slurmd slurm-client munge)
    log "installing ${pkgs[*]}"
    # apt-get update only if the package index does not know the packages (or install fails).
    if apt-cache policy slurmctld 2>/dev/null | grep -q 'Candidate: (none)' ||
        ! apt-cache policy slurmctld 2>/dev/null | grep -q Candidate; then
        apt-get update -q
    fi
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}"; then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}"
    fi
}

# The node line from `slurmd -C` (CPU layout + RealMemory), renamed to localhost.
node_line() {
    local hw
    hw=$(slurmd -C | head -n 1) || die "slurmd -C failed"
    local keys='CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore|RealMemory'
    hw=$(tr ' ' '\n' <<<"$hw" | grep -E "^($keys)=" | tr '\n' ' ')
    echo "NodeName=localhost NodeAddr=127.0.0.1 ${hw}State=UNKNOWN"
}

write_conf() {
    cat >"$DIR/slurm.conf" <<EOF
# Written by slurm/local_cluster.sh: a one-node test cluster, everything under $DIR
ClusterName=turbods_local
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/run/munge.socket.2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups needed
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
# several 1-CPU jobs/tasks share the node
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
# --requeue / scontrol requeue (a requeued job waits ~120 s unless StartTime=now is set)
JobRequeue=1
MinJobAge=120
$(node_line)
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$DIR/env.sh" <<EOF
# source me: client commands (sinfo, sbatch, srun, scontrol, ...) for the cluster in $DIR
export SLURM_CONF=$DIR/slurm.conf
EOF
}

dump_logs() {
    local f
    for f in "$DIR"/log/*.log; do
        [[ -f $f ]] || continue
        echo "----- tail $f" >&2
        tail -n 25 "$f" >&2
    done
}

# Start daemon $1 (it forks and writes DIR/$1.pid) and wait until it is up.
start_daemon() {
    local name=$1 i
    shift
    rm -f "$DIR/$name.pid"
    # stdio to a file: a daemon must never hold the caller's pipes open
    "$@" </dev/null >>"$DIR/log/$name.stdout" 2>&1 ||
        { dump_logs; die "$name failed to start"; }
    for ((i = 0; i < 100; i++)); do
        [[ -n $(live_pid "$name") ]] && return 0
        sleep 0.1
    done
    dump_logs
    die "$name did not write a live pid to $DIR/$name.pid" \
        "(ports $CTLD_PORT/$SLURMD_PORT in use? see LOCAL_SLURM_*_PORT)"
}

start() {
    if all_running; then
        log "already running in $DIR (source $DIR/env.sh)"
        return 0
    fi
    stop_daemons quiet   # a half-running DIR: clean up first
    ensure_installed
    [[ $(id -u) == 0 ]] || die "start must run as root"
    local sock=$DIR/munge/run/munge.socket.2
    ((${#sock} < 100)) || die "DIR path too long for a unix socket ($sock): use a shorter DIR"
    mkdir -p "$DIR"/{state,spool,log,munge/run}
    chmod 0700 "$DIR/munge"
    chmod 0755 "$DIR/munge/run"   # munged insists on a 0755 socket dir
    if [[ ! -s $DIR/munge/munge.key ]]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1 count=1024 status=none
    fi
    chmod 0600 "$DIR/munge/munge.key"
    write_conf

    # --force: DIR may sit below a 0700 directory (pytest's tmp dirs), which munged
    # rejects for sockets meant for other users; here every client runs as root.
    # from here on, a failure stops whatever was started
    trap 'stop_daemons quiet' EXIT
    start_daemon munged munged --force \
        --socket="$DIR/munge/run/munge.socket.2" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/munged.pid" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge/munged.seed"
    start_daemon slurmctld slurmctld -f "$DIR/slurm.conf"
    start_daemon slurmd slurmd -f "$DIR/slurm.conf" -N localhost

    export SLURM_CONF=$DIR/slurm.conf
    local deadline=$((SECONDS + TIMEOUT)) state="" d
    while ((SECONDS < deadline)); do
        state=$(sinfo -h -N -n localhost -o %T 2>/dev/null || true)
        [[ $state == idle ]] && break
        for d in "${DAEMONS[@]}"; do
            [[ -n $(live_pid "$d") ]] || { dump_logs; die "$d exited during start-up"; }
        done
        sleep 0.5
    done
    if [[ $state != idle ]]; then
        dump_logs
        die "node not idle after ${TIMEOUT}s (sinfo state: '${state:-no answer}')"
    fi
    trap - EXIT
    log "running in $DIR: source $DIR/env.sh, then sinfo / sbatch / srun"
}

# Cancel every job (their slurmstepd/tasks would outlive slurmd otherwise) and wait.
cancel_jobs() {
    [[ -n $(live_pid slurmctld) && -f $DIR/slurm.conf ]] || return 0
    local ids i
    export SLURM_CONF=$DIR/slurm.conf
    ids=$(timeout 10 squeue -h -o %A 2>/dev/null || true)
    [[ -n $ids ]] || return 0
    log "cancelling jobs: ${ids//$'\n'/ }"
    # shellcheck disable=SC2086
    timeout 10 scancel $ids 2>/dev/null || true
    for ((i = 0; i < 60; i++)); do
        [[ -z $(timeout 10 squeue -h -o %A 2>/dev/null || true) ]] && return 0
        sleep 0.5
    done
    log "warning: jobs still listed after 30 s"
}

stop_daemons() {
    local quiet=${1:-} d pid i
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        d=${DAEMONS[i]}
        pid=$(live_pid "$d")
        if [[ -z $pid ]]; then
            [[ -n $quiet ]] || log "$d not running"
            rm -f "$DIR/$d.pid"
            continue
        fi
        kill -TERM "$pid" 2>/dev/null || true
        local n
        for ((n = 0; n < 150; n++)); do   # up to 15 s, then SIGKILL
            [[ -n $(live_pid "$d") ]] || break
            sleep 0.1
        done
        if [[ -n $(live_pid "$d") ]]; then
            log "$d ($pid) ignored SIGTERM, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
        fi
        [[ -n $quiet ]] || log "stopped $d ($pid)"
        rm -f "$DIR/$d.pid"
    done
}

stop() {
    [[ -d $DIR ]] || { log "$DIR does not exist, nothing to stop"; return 0; }
    cancel_jobs
    stop_daemons
}

status() {
    local d rc=0 pid
    for d in "${DAEMONS[@]}"; do
        pid=$(live_pid "$d")
        if [[ -n $pid ]]; then echo "$d running ($pid)"; else echo "$d not running"; rc=1; fi
    done
    return $rc
}

case ${1:-} in
    -h | --help | help) usage; exit 0 ;;
    start | stop | status) ;;
    *) usage >&2; exit 2 ;;
esac
[[ $# -eq 2 ]] || { usage >&2; exit 2; }
CMD=$1
if [[ $CMD == start ]]; then mkdir -p "$2" || die "cannot create $2"; fi
DIR=$(realpath -m "$2")
CTLD_PORT=${LOCAL_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${LOCAL_SLURM_SLURMD_PORT:-6818}
TIMEOUT=${LOCAL_SLURM_TIMEOUT:-60}
"$CMD"
