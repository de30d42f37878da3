#!/usr/bin/env bash
# A real one-node Slurm cluster on localhost (munged + slurmctld + slurmd), the way a facility runs lorefine:
# `sbatch slurm/refine.sbatch` as written, on a tiny simulated set; `scontrol requeue` while it runs; the job
# must come back and complete by itself, with results equal to an uninterrupted run (bitwise poses, maps
# to 1e-5); then, in its second attempt, the time-limit signal (scancel --signal=USR1): the job must requeue
# itself and complete as well. Installs slurm-wlm and munge with apt when they are missing. Needs root. The daemons use their
# own config (SLURM_CONF), ports, munge socket and state folder, and are stopped by PID at the end.
#   bash .ci/slurm_requeue.sh        # with the venv that holds lorefine and the mpich wheel active
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
T0=$EPOCHREALTIME
el() { printf '[slurm %6.1fs] %s\n' "$(awk "BEGIN{print $EPOCHREALTIME - $T0}")" "$*"; }
[ "$(id -u)" = 0 ] || { echo "slurm_requeue: needs root (slurmd and munged are started here)"; exit 1; }
command -v lorefine >/dev/null || { echo "slurm_requeue: activate the venv with lorefine first"; exit 1; }

if [ ! -x /usr/sbin/slurmctld ] || [ ! -x /usr/sbin/slurmd ] || [ ! -x /usr/sbin/munged ] || ! command -v sbatch >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
    el "installed $(/usr/sbin/slurmd -V) and munge"
fi

W=$(mktemp -d /tmp/lorefine-slurm.XXXXXX)
chmod 755 "$W"
M="$W/munge"
PIDS=()
stop_daemons() {
    for pidfile in "$W/slurmd.pid" "$W/slurmctld.pid" "$M/munged.pid"; do
        if [ -s "$pidfile" ]; then
            pid=$(cat "$pidfile")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
    done
    el "daemons stopped (slurmd, slurmctld, munged by PID); logs in $W"
}
trap stop_daemons EXIT

# --- munge: our own key, socket and pid file
mkdir -p "$M"
mungekey --create --keyfile="$M/munge.key" >/dev/null 2>&1 || dd if=/dev/urandom of="$M/munge.key" bs=1024 count=1 2>/dev/null
chown -R munge:munge "$M" && chmod 755 "$M" && chmod 400 "$M/munge.key"
runuser -u munge -- /usr/sbin/munged --socket="$M/munge.socket" --key-file="$M/munge.key" --pid-file="$M/munged.pid" \
    --log-file="$M/munged.log" --seed-file="$M/munged.seed"
munge -S "$M/munge.socket" -n | unmunge -S "$M/munge.socket" >/dev/null
el "munged up (pid $(cat "$M/munged.pid"))"

# --- slurm.conf: no cgroups, no accounting database, free ports; cred_expire (default 120 s) is also how long a
# requeued job waits before it may start again
read -r CTLD_PORT SLURMD_PORT < <(python3 -c 'import socket
s = [socket.socket() for _ in range(2)]
[x.bind(("", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
H=$(hostname -s)
mkdir -p "$W"/{state,spool,log}
export SLURM_CONF="$W/slurm.conf"
cat > "$SLURM_CONF" <<EOF
ClusterName=lorefine-ci
SlurmctldHost=$H
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$M/munge.socket,cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$W/log/jobcomp.txt
StateSaveLocation=$W/state
SlurmdSpoolDir=$W/spool
SlurmctldPidFile=$W/slurmctld.pid
SlurmdPidFile=$W/slurmd.pid
SlurmctldLogFile=$W/log/slurmctld.log
SlurmdLogFile=$W/log/slurmd.log
ReturnToService=2
KillWait=30
NodeName=$H CPUs=$(nproc) RealMemory=$(( $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) * 9 / 10 )) State=UNKNOWN
PartitionName=debug Nodes=$H Default=YES MaxTime=INFINITE State=UP
EOF
/usr/sbin/slurmctld -i -f "$SLURM_CONF"
/usr/sbin/slurmd -f "$SLURM_CONF"
for _ in $(seq 100); do [ "$(sinfo -h -o %T 2>/dev/null)" = idle ] && break; sleep 0.2; done
el "slurm up: $(sinfo -h -o '%P %a %D %T %N'), slurmctld pid $(cat "$W/slurmctld.pid"), slurmd pid $(cat "$W/slurmd.pid")"

# --- a tiny simulated set, and one config for the uninterrupted run and one for the job (two iterations: a search
# stage of this set takes under a second, and the time-limit signal must find work left in the second attempt)
lorefine simulate --output "$W/data" --n-particles 240 >/dev/null
for run in reference job; do
    mkdir -p "$W/$run"
    cat > "$W/$run/config.yaml" <<EOF
particles: ../data/particles.star
consensus_map: ../data/consensus.mrc
modules:
  - {name: large, mask: ../data/mask_module_1.mrc}
  - {name: small, mask: ../data/mask_module_2.mrc}
search: {cone_half_angle_deg: 4, angular_step_deg: 2, psi_half_range_deg: 4, psi_step_deg: 2, max_shift_px: 2, n_random_angles: 4}
parallel: {unit_size: 16}
iterations: 2
output: out
project_dir: ../data
seed: 1
EOF
done
el "dataset: 240 particles, box 64"
(cd "$W/reference" && mpiexec -n 2 lorefine refine config.yaml >/dev/null 2>&1)
el "uninterrupted run (mpiexec -n 2) done"

# --- the user's command, from the run's folder; requeue it once some work units are checkpointed
cd "$W/job"
jid=$(sbatch --parsable "$REPO/slurm/refine.sbatch" config.yaml)
el "submitted job $jid: sbatch slurm/refine.sbatch config.yaml"
units() { python3 - "$1" <<'EOF'
import sys, h5py
try:
    with h5py.File(sys.argv[1], "r", locking=False) as f:
        print(sum(int(f[s]["unit_done"][...].sum()) for s in ("iteration_01/large", "iteration_01/small") if s in f))
except (OSError, KeyError):
    print(0)
EOF
}
deadline=$((SECONDS + 240))
until [ "$(units out/results.h5)" -ge 4 ]; do
    [ $SECONDS -lt $deadline ] || { echo "slurm_requeue: the job did not start work in time"; squeue; exit 1; }
    sleep 0.5
done
before=$(units out/results.h5)
scontrol requeue "$jid"
el "scontrol requeue $jid with $before work units checkpointed"
# the second attempt: the time-limit signal (SIGUSR1 to the job's tasks, as --signal=USR1@300 sends it), once
# the attempt has checkpointed work of its own (the first attempt is gone when the second one starts)
deadline=$((SECONDS + 240))
until grep -q " attempt 2 " "lorefine_$jid.log" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "slurm_requeue: the requeued job did not start again in time"; squeue; exit 1; }
    sleep 0.5
done
before=$(units out/results.h5)
until [ "$(units out/results.h5)" -ge $((before + 3)) ]; do
    [ $SECONDS -lt $deadline ] || { echo "slurm_requeue: the requeued job did not resume in time"; squeue; exit 1; }
    sleep 0.5
done
again=$(units out/results.h5)
scancel --signal=USR1 "$jid"
el "scancel --signal=USR1 $jid (the time-limit signal) with $again work units checkpointed"
deadline=$((SECONDS + 400))
while squeue -h -j "$jid" 2>/dev/null | grep -q .; do
    [ $SECONDS -lt $deadline ] || { echo "slurm_requeue: job $jid did not finish in time"; squeue; tail -n 30 "lorefine_$jid.log"; exit 1; }
    sleep 1
done
state=$(scontrol show job "$jid" | grep -o 'JobState=[A-Z_]*' | head -n 1)
restarts=$(scontrol show job "$jid" | grep -o 'Restarts=[0-9]*')
el "job $jid finished: $state $restarts"
echo "----- lorefine_$jid.log (every attempt, appended) -----"
grep -E "attempt|stopped|requeue|search:|done" "lorefine_$jid.log" | sed 's/^/  /'
echo "-----"
[ "$state" = "JobState=COMPLETED" ] && [ "$restarts" = "Restarts=2" ]
[ "$(grep -c '^.* attempt ' "lorefine_$jid.log")" = 3 ]
PYTHONPATH="$REPO/tests/mpi" python3 -c "
from pathlib import Path
from mpi_jobs import assert_same
assert_same(Path('$W/reference'), Path('$W/job'))
print('results of the requeued job equal the uninterrupted run: poses bitwise, maps to 1e-5')"
el "passed: the requeued job completed by itself with the uninterrupted run's results"
