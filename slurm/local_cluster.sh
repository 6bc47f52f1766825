#!/usr/bin/env bash
# A Slurm cluster on this machine, for tests and for trying the sbatch templates.
#
#   slurm/local_cluster.sh start DIR [--nodes N]  install (if missing) and start munged + slurmctld +
#                                                 N slurmd (default 1); starts only what is missing
#                                                 when the cluster of DIR is partly running
#   slurm/local_cluster.sh stop DIR               cancel all jobs, stop the daemons, remove the network
#   slurm/local_cluster.sh status DIR             exit 0 if every daemon of DIR is running
#   slurm/local_cluster.sh kill-node DIR NODE     a node dies: cut its link, kill -9 every process in it
#                                                 (its slurmd, job steps, ranks); `start DIR` revives it
#
# Runs as root, without systemd. Everything lives under DIR:
#   DIR/slurm.conf   DIR/env.sh (source it: exports SLURM_CONF for sinfo/sbatch/srun/...)
#   DIR/state (slurmctld StateSaveLocation)   DIR/spool[/NODE] (slurmd spool)   DIR/log/*.log
#   DIR/munged.pid DIR/slurmctld.pid DIR/slurmd[.NODE].pid   DIR/munge/ (key, seed, socket dir)
#   DIR/cluster.env (node count, network names)   DIR/hosts (the nodes' /etc/hosts)
# Clients find the private munge socket through AuthInfo=socket=... in slurm.conf, so
# SLURM_CONF is all they need. Job state survives stop/start (job ids keep counting up, so
# default run dirs such as runs/<name>-<jobid> never collide with an earlier session).
#
# --nodes 1: one slurmd named localhost (127.0.0.1) in the host's namespaces.
# --nodes N > 1: nodes node1..nodeN, each slurmd (and so every job step and rank it starts)
#   in its own network, UTS and mount namespace: its own hostname, its own interface eth0
#   with address SUBNET.k on a bridge on the host (SUBNET.254, where slurmctld listens), and
#   DIR/hosts mounted over /etc/hosts so that node names resolve. The namespaces have no
#   default route and no NAT: they reach each other and the host, nothing else. They share
#   the host's filesystem (like cluster nodes on a shared filesystem), /dev/shm included,
#   and its CPUs and memory (every node declares all of them). Names are unique per DIR
#   (bridge tdsb<id>, namespaces tds-<id>-nodeK, <id> = a hash of DIR), so clusters in two
#   DIRs coexist. What limits N: one /24 subnet (at most 253 nodes) and memory (a node costs
#   one slurmd, ~LOCAL_SLURM_NODE_MB); CPU time is shared, so ranks on many nodes run slowly.
#
# Environment:
#   LOCAL_SLURM_CTLD_PORT (6817), LOCAL_SLURM_SLURMD_PORT (6818)  ports; change them to run
#                                 two clusters at once (the test fixture picks free ones)
#   LOCAL_SLURM_TIMEOUT (60)      seconds to wait for the nodes to become idle
#   LOCAL_SLURM_NODE_MB (64)      memory a node needs (slurmd and its namespaces), for the --nodes check
#   LOCAL_SLURM_SLURMD_TIMEOUT (30)  slurm.conf SlurmdTimeout of a multi-node cluster: seconds until
#                                 slurmctld declares a silent node DOWN (and fails/requeues its jobs)
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

# ----------------------------------------------------------------------- the nodes

# NODES (count) and NAMES (node names) of DIR's cluster: from --nodes at start, else from
# DIR/cluster.env; ID, BRIDGE, NS_PREFIX and SUBNET name its network (multi-node only).
load_layout() {
    local recorded="" k
    [[ ! -f $DIR/cluster.env ]] || recorded=$(sed -n 's/^NODES=//p' "$DIR/cluster.env")
    NODES=${WANT_NODES:-${recorded:-1}}
    ID=$(printf '%s' "$DIR" | sha1sum | cut -c1-8)
    BRIDGE=tdsb$ID
    NS_PREFIX=tds-$ID-
    SUBNET=""
    [[ $NODES != "$recorded" ]] || SUBNET=$(sed -n 's/^SUBNET=//p' "$DIR/cluster.env")
    NAMES=()
    if ((NODES == 1)); then
        NAMES=(localhost)
    else
        for ((k = 1; k <= NODES; k++)); do NAMES+=("node$k"); done
    fi
    if [[ -n $recorded && $NODES != "$recorded" ]] && any_running; then
        die "$DIR runs a $recorded-node cluster; stop it before starting it with --nodes $NODES"
    fi
}

netns() { echo "$NS_PREFIX$1"; }    # network namespace of node $1
veth() { echo "tds$ID${1#node}"; }   # host end of node $1's link (at most 15 characters)

# pid file of daemon $1 (slurmd: of node $2)
pidfile() {
    if [[ $1 == slurmd && $NODES -gt 1 ]]; then echo "$DIR/slurmd.$2.pid"; else echo "$DIR/$1.pid"; fi
}

# PID in pid file $2 if it is a live process named $1, else nothing (checks the name, so a
# recycled PID of an unrelated process is never reported).
pid_of() {
    local pid stat
    [[ -s $2 ]] || return 0
    pid=$(<"$2")
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    [[ -r /proc/$pid/comm && $(<"/proc/$pid/comm") == "$1" ]] || return 0
    stat=$(<"/proc/$pid/stat") 2>/dev/null || return 0
    stat=${stat##*) }                 # fields after "pid (comm) "
    [[ ${stat:0:1} == Z ]] || echo "$pid"   # a zombie has exited already
    return 0
}

# PID of daemon $1 (slurmd: of node $2) if it is running, else nothing.
live_pid() {
    pid_of "$1" "$(pidfile "$1" "${2:-}")"
}

# "slurmd node1", or "munged" for a host daemon (node "-")
label() {
    if [[ $2 == - ]]; then echo "$1"; else echo "$1 $2"; fi
}

# "daemon node" pairs in start order ("-": a host daemon); stop goes in reverse
daemons() {
    echo "munged -"
    echo "slurmctld -"
    local n
    for n in "${NAMES[@]}"; do echo "slurmd $n"; done
}

all_running() {
    local d n
    while read -r d n; do [[ -n $(live_pid "$d" "$n") ]] || return 1; done < <(daemons)
}

# Whether any daemon of DIR runs, whatever its node count.
any_running() {
    local f d
    for f in "$DIR"/*.pid; do
        [[ -f $f ]] || continue
        d=$(basename "$f" .pid)
        [[ -z $(pid_of "${d%%.*}" "$f") ]] || return 0
    done
    return 1
}

ensure_installed() {
    local b missing=0
    for b in munged slurmctld slurmd sinfo sbatch srun scontrol ip unshare; do
        command -v "$b" >/dev/null 2>&1 || missing=1
    done
    ((missing)) || return 0
    [[ $(id -u) == 0 ]] || die "Slurm/munge missing and not root: install slurmctld slurmd slurm-client munge iproute2"
    local pkgs=(slurmctld slurmd slurm-client munge iproute2 util-linux)
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

check_node_count() {
    ((NODES <= 253)) || die "--nodes $NODES: at most 253 (the nodes' addresses are one /24 subnet)"
    local avail_mb per_mb=${LOCAL_SLURM_NODE_MB:-64}
    avail_mb=$(($(sed -n 's/^MemAvailable: *\([0-9]*\) kB/\1/p' /proc/meminfo) / 1024))
    ((NODES * per_mb <= avail_mb)) || die "--nodes $NODES: needs ~$((NODES * per_mb)) MB ($per_mb MB per" \
        "node: a slurmd and its namespaces) but $avail_mb MB are available; use fewer nodes"
}

# The CPU layout + RealMemory of this machine from `slurmd -C` (every node declares it).
node_hw() {
    local hw keys='CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore|RealMemory'
    hw=$(slurmd -C | head -n 1) || die "slurmd -C failed"
    tr ' ' '\n' <<<"$hw" | grep -E "^($keys)=" | tr '\n' ' '
}

write_conf() {
    local hw ctld nodes per="" multi="" k
    hw=$(node_hw)
    if ((NODES == 1)); then
        ctld=localhost
        nodes="NodeName=localhost NodeAddr=127.0.0.1 ${hw}State=UNKNOWN"
    else
        ctld="localhost($SUBNET.254)"   # the host's end of the bridge: reachable from every node
        per=/%n                          # spool, pid and log files per node
        nodes=$(for ((k = 1; k <= NODES; k++)); do
            echo "NodeName=node$k NodeAddr=$SUBNET.$k NodeHostname=node$k ${hw}State=UNKNOWN"
        done)
        # A node that stops answering is DOWN after SlurmdTimeout s (its jobs then fail, or
        # requeue with --requeue); a cancelled step's processes get KillWait s after SIGTERM.
        multi="SlurmdTimeout=${LOCAL_SLURM_SLURMD_TIMEOUT:-30}"$'\n'"KillWait=10"
    fi
    cat >"$DIR/slurm.conf" <<EOF
# Written by slurm/local_cluster.sh: a $NODES-node test cluster, everything under $DIR
ClusterName=turbods_local
SlurmctldHost=$ctld
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/run/munge.socket.2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool$per
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd${per:+.%n}.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd${per:+.%n}.log
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
# several 1-CPU jobs/tasks share a node
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
# --requeue / scontrol requeue (a requeued job waits ~120 s unless StartTime=now is set)
JobRequeue=1
MinJobAge=120
$multi
$nodes
PartitionName=debug Nodes=$( ((NODES == 1)) && echo localhost || echo "node[1-$NODES]") Default=YES MaxTime=INFINITE State=UP
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

# ----------------------------------------------------------------------- the network

# A free 10.213.X.0/24: no address or route of this machine lies in it (the default route aside).
pick_subnet() {
    local x start=$((16#${ID:0:2}))
    for ((x = 0; x < 256; x++)); do
        SUBNET=10.213.$(((start + x) % 256))
        [[ -n $(ip -4 route show match "$SUBNET.1" | grep -v '^default') ]] || return 0
    done
    die "no free 10.213.X.0/24 subnet on this machine for the nodes' bridge"
}

# A bridge, and per node a namespace with a veth on it; no default route, no NAT.
setup_net() {
    ((NODES > 1)) || return 0
    [[ -n $SUBNET ]] || pick_subnet
    printf 'NODES=%s\nSUBNET=%s\nBRIDGE=%s\nNS_PREFIX=%s\n' "$NODES" "$SUBNET" "$BRIDGE" "$NS_PREFIX" >"$DIR/cluster.env"
    local k n ns link
    {
        echo "127.0.0.1 localhost"
        for ((k = 1; k <= NODES; k++)); do echo "$SUBNET.$k node$k"; done
    } >"$DIR/hosts"
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge || die "cannot create bridge $BRIDGE (root? network namespaces allowed?)"
        ip addr add "$SUBNET.254/24" dev "$BRIDGE"
    fi
    ip link set "$BRIDGE" up
    for n in "${NAMES[@]}"; do
        ns=$(netns "$n") link=$(veth "$n")
        [[ -e /run/netns/$ns ]] || ip netns add "$ns" || die "cannot create network namespace $ns"
        if ! ip link show "$link" >/dev/null 2>&1; then
            ip link add "$link" type veth peer name eth0 netns "$ns"
            ip -n "$ns" addr add "$SUBNET.${n#node}/24" dev eth0
        fi
        ip link set "$link" master "$BRIDGE" up
        ip -n "$ns" link set lo up
        ip -n "$ns" link set eth0 up
    done
}

# Every namespace and the bridge of DIR, whatever the node count (names follow from DIR).
teardown_net() {
    local ns pid link i
    for ns in $(ip netns list 2>/dev/null | awk -v p="$NS_PREFIX" 'index($1, p) == 1 {print $1}'); do
        # job steps and ranks that outlived their slurmd: this cluster's processes
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        for ((i = 0; i < 50; i++)); do
            [[ -n $(ip netns pids "$ns" 2>/dev/null) ]] || break
            sleep 0.1
        done
        ip netns del "$ns" || log "warning: could not delete network namespace $ns"
    done
    # Delete the host ends of the veths (that removes both ends at once): a namespace outlives
    # its name while anything still refers to it, and its veth with it.
    for link in $(our_links); do ip link del "$link" 2>/dev/null || true; done
    for ((i = 0; i < 100; i++)); do
        [[ -n $(our_links) ]] || break
        sleep 0.1
    done
    [[ -z $(our_links) ]] || log "warning: links left behind: $(our_links | tr '\n' ' ')"
    rm -f "$DIR/cluster.env" "$DIR/hosts"
}

# The bridge and veth host ends of DIR's cluster that exist now.
our_links() {
    ip -o link show 2>/dev/null | awk -v p="tds$ID" -v b="$BRIDGE" '{sub(/@.*/, "", $2); sub(/:$/, "", $2)}
        index($2, p) == 1 || $2 == b {print $2}'
}

# ----------------------------------------------------------------------- daemons

# Start daemon $1 of node $2 ("-": a host daemon) with the command that follows (it forks
# and writes its pid file) and wait until it is up.
start_daemon() {
    local name=$1 node=$2 i
    shift 2
    rm -f "$(pidfile "$name" "$node")"
    if [[ $name == slurmd && $NODES -gt 1 ]]; then
        # its own network, hostname (UTS) and /etc/hosts (mount namespace); not `ip netns
        # exec`, which remounts /sys and so hides the cgroup tree slurmd reads
        mkdir -p "$DIR/spool/$node"
        set -- nsenter --net="/run/netns/$(netns "$node")" unshare --uts --mount --propagation private -- \
            bash -c 'mount --bind "$1" /etc/hosts && hostname "$2" && shift 2 && exec "$@"' _ \
            "$DIR/hosts" "$node" "$@"
    fi
    # stdio to a file: a daemon must never hold the caller's pipes open
    "$@" </dev/null >>"$DIR/log/$name$([[ $node == - ]] || echo ".$node").stdout" 2>&1 ||
        { dump_logs; die "$(label "$name" "$node") failed to start"; }
    for ((i = 0; i < 100; i++)); do
        [[ -z $(live_pid "$name" "$node") ]] || return 0
        sleep 0.1
    done
    dump_logs
    die "$(label "$name" "$node") did not write a live pid to $(pidfile "$name" "$node")" \
        "(ports $CTLD_PORT/$SLURMD_PORT in use? see LOCAL_SLURM_*_PORT)"
}

# Wait until sinfo lists every node as up (idle, or running jobs after a restart).
wait_nodes_up() {
    local deadline=$((SECONDS + TIMEOUT)) states="" d n
    while ((SECONDS < deadline)); do
        states=$(sinfo -h -N -o '%N=%T' 2>/dev/null | sort -u || true)
        if [[ $(grep -cE '=(idle|mixed|allocated)$' <<<"$states") == "$NODES" ]]; then
            return 0
        fi
        while read -r d n; do
            [[ -n $(live_pid "$d" "$n") ]] || { dump_logs; die "$(label "$d" "$n") exited during start-up"; }
        done < <(daemons)
        sleep 0.5
    done
    dump_logs
    die "nodes not up after ${TIMEOUT}s (sinfo: $(echo ${states:-no answer}))"
}

# Node-to-node traffic crosses the bridge (node-to-controller traffic only reaches the host):
# node1 opens a TCP connection to every other node's slurmd.
check_node_links() {
    local k
    for ((k = 2; k <= NODES; k++)); do
        timeout 5 nsenter --net="/run/netns/$(netns node1)" bash -c "exec 3<>/dev/tcp/$SUBNET.$k/$SLURMD_PORT" 2>/dev/null ||
            die "node1 cannot reach node$k ($SUBNET.$k:$SLURMD_PORT) over bridge $BRIDGE; if br_netfilter is" \
                "loaded (/proc/sys/net/bridge/bridge-nf-call-iptables = 1), a FORWARD rule may drop bridged traffic"
    done
}

start() {
    load_layout
    check_node_count
    if all_running; then
        log "already running in $DIR: $NODES node(s) (source $DIR/env.sh)"
        return 0
    fi
    ensure_installed
    [[ $(id -u) == 0 ]] || die "start must run as root"
    local sock=$DIR/munge/run/munge.socket.2 n fresh=0
    ((${#sock} < 100)) || die "DIR path too long for a unix socket ($sock): use a shorter DIR"
    mkdir -p "$DIR"/{state,spool,log,munge/run}
    chmod 0700 "$DIR/munge"
    chmod 0755 "$DIR/munge/run"   # munged insists on a 0755 socket dir
    if [[ ! -s $DIR/munge/munge.key ]]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1 count=1024 status=none
    fi
    chmod 0600 "$DIR/munge/munge.key"

    # A cluster with its controller up only lost nodes (kill-node): revive those, keep the
    # rest (and their jobs) running. Otherwise start from scratch, and from here on a
    # failure stops whatever was started and removes the network.
    if [[ -n $(live_pid munged) && -n $(live_pid slurmctld) && -f $DIR/slurm.conf ]]; then
        # the running controller's ports, whatever this shell's LOCAL_SLURM_*_PORT say
        CTLD_PORT=$(sed -n 's/^SlurmctldPort=//p' "$DIR/slurm.conf")
        SLURMD_PORT=$(sed -n 's/^SlurmdPort=//p' "$DIR/slurm.conf")
    else
        fresh=1
        stop_daemons quiet
        trap 'stop_daemons quiet; teardown_net' EXIT
    fi
    setup_net
    if ((fresh)); then
        write_conf
        # --force: DIR may sit below a 0700 directory (pytest's tmp dirs), which munged
        # rejects for sockets meant for other users; here every client runs as root.
        start_daemon munged - munged --force \
            --socket="$DIR/munge/run/munge.socket.2" --key-file="$DIR/munge/munge.key" \
            --pid-file="$DIR/munged.pid" --log-file="$DIR/log/munged.log" \
            --seed-file="$DIR/munge/munged.seed"
        start_daemon slurmctld - slurmctld -f "$DIR/slurm.conf"
    fi
    for n in "${NAMES[@]}"; do
        [[ -n $(live_pid slurmd "$n") ]] || start_daemon slurmd "$n" slurmd -f "$DIR/slurm.conf" -N "$n"
    done
    export SLURM_CONF=$DIR/slurm.conf
    wait_nodes_up
    check_node_links
    trap - EXIT
    log "running in $DIR: $NODES node(s) (${NAMES[*]}); source $DIR/env.sh, then sinfo / sbatch / srun"
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
        [[ -n $(timeout 10 squeue -h -o %A 2>/dev/null || true) ]] || return 0
        sleep 0.5
    done
    log "warning: jobs still listed after 30 s"
}

# Stop daemon $2 of node $3: SIGTERM, SIGKILL after 15 s. $1 non-empty: quietly.
stop_one() {
    local quiet=$1 d=$2 n=$3 pid i
    pid=$(live_pid "$d" "$n")
    if [[ -z $pid ]]; then
        [[ -n $quiet ]] || log "$(label "$d" "$n") not running"
        rm -f "$(pidfile "$d" "$n")"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        [[ -n $(live_pid "$d" "$n") ]] || break
        sleep 0.1
    done
    if [[ -n $(live_pid "$d" "$n") ]]; then
        log "$(label "$d" "$n") ($pid) ignored SIGTERM, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    [[ -n $quiet ]] || log "stopped $(label "$d" "$n") ($pid)"
    rm -f "$(pidfile "$d" "$n")"
}

stop_daemons() {
    local quiet=${1:-} d n
    while read -r d n; do stop_one "$quiet" "$d" "$n"; done < <(daemons | tac)
}

stop() {
    [[ -d $DIR ]] || { log "$DIR does not exist, nothing to stop"; return 0; }
    load_layout
    cancel_jobs
    stop_daemons
    teardown_net
}

status() {
    load_layout
    local d n rc=0 pid
    while read -r d n; do
        pid=$(live_pid "$d" "$n")
        if [[ -n $pid ]]; then echo "$(label "$d" "$n") running ($pid)"; else echo "$(label "$d" "$n") not running"; rc=1; fi
    done < <(daemons)
    return $rc
}

# A node dies at once: its link goes down first (its peers then see silence, as after a
# power loss, not a closed connection), then every process in its namespace gets SIGKILL.
kill_node() {
    load_layout
    local node=$1 pids
    ((NODES > 1)) || die "kill-node: $DIR is a one-node cluster"
    [[ " ${NAMES[*]} " == *" $node "* ]] || die "kill-node: no node '$node' (nodes: ${NAMES[*]})"
    ip link set "$(veth "$node")" down
    pids=$(ip netns pids "$(netns "$node")" | tr '\n' ' ')
    # shellcheck disable=SC2086
    [[ -z ${pids// /} ]] || kill -KILL $pids 2>/dev/null || true
    log "killed $node: link down, SIGKILL to ${pids:-no process}"
}

CMD=${1:-}
case $CMD in
    -h | --help | help) usage; exit 0 ;;
    start | stop | status | kill-node) shift ;;
    *) usage >&2; exit 2 ;;
esac
(($#)) || { usage >&2; exit 2; }
ARG_DIR=$1
shift
WANT_NODES="" NODE=""
while (($#)); do
    case $CMD:$1 in
        start:--nodes) (($# >= 2)) || { usage >&2; exit 2; }; WANT_NODES=$2; shift 2 ;;
        start:--nodes=*) WANT_NODES=${1#--nodes=}; shift ;;
        kill-node:*) [[ -z $NODE ]] || { usage >&2; exit 2; }; NODE=$1; shift ;;
        *) usage >&2; exit 2 ;;
    esac
done
[[ $CMD != kill-node || -n $NODE ]] || { usage >&2; exit 2; }
[[ -z $WANT_NODES || $WANT_NODES =~ ^[1-9][0-9]*$ ]] || die "--nodes $WANT_NODES: must be a whole number >= 1"
if [[ $CMD == start ]]; then mkdir -p "$ARG_DIR" || die "cannot create $ARG_DIR"; fi
DIR=$(realpath -m "$ARG_DIR")
CTLD_PORT=${LOCAL_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${LOCAL_SLURM_SLURMD_PORT:-6818}
TIMEOUT=${LOCAL_SLURM_TIMEOUT:-60}
case $CMD in
    kill-node) kill_node "$NODE" ;;
    *) "$CMD" ;;
esac
