#!/bin/bash
# sbatch slurm/refine.sbatch on a one-node Slurm cluster on localhost (real slurmctld + slurmd + munged),
# the way a cluster user submits lorefine. Needs root and `apt-get install slurm-wlm munge` (or
# slurmctld slurmd slurm-client munge). Usage:
#   VENV=/path/to/venv-with-lorefine bash benchmarks/slurm_localhost.sh
# Prints the job's final state and the tail of its log; stops the daemons at the end.
set -euo pipefail
W=${SLURM_CI_DIR:-$(mktemp -d)}
VENV=${VENV:?set VENV to a virtual environment where lorefine and the mpich wheel are installed}
REPO=$(cd "$(dirname "$0")/.." && pwd)
[ -s /etc/munge/munge.key ] || { mungekey --create --force; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
mkdir -p /run/munge && chown munge:munge /run/munge
runuser -u munge -- /usr/sbin/munged
mkdir -p "$W"/{state,spool,log}
H=$(hostname -s)
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=$H
SlurmUser=root
AuthType=auth/munge
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
NodeName=$H CPUs=$(nproc) RealMemory=$(( $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) * 9 / 10 )) State=UNKNOWN
PartitionName=debug Nodes=$H Default=YES MaxTime=INFINITE State=UP
CONF
/usr/sbin/slurmctld -i
/usr/sbin/slurmd
for i in $(seq 50); do [ "$(sinfo -h -o %T 2>/dev/null)" = idle ] && break; sleep 0.2; done
# A small dataset and its config, then the user's command: sbatch slurm/refine.sbatch CONFIG
"$VENV/bin/lorefine" simulate --output "$W/data" --n-particles 400 > /dev/null
cd "$W"
jid=$(LOREFINE_VENV="$VENV" sbatch --parsable --nodes=1 --ntasks-per-node=2 --mem-per-cpu=1G --time=00:20:00 \
      --output="$W/lorefine_%j.log" "$REPO/slurm/refine.sbatch" "$W/data/lorefine.yaml")
while squeue -h -j "$jid" 2>/dev/null | grep -q .; do sleep 1; done
state=$(awk -v j="JobId=$jid" '$1==j' "$W/log/jobcomp.txt" | grep -o 'JobState=[A-Z]*')
echo "job $jid: $state"
tail -n 4 "$W/lorefine_$jid.log"
ls "$W/data/refined"
kill "$(cat "$W/slurmd.pid")" "$(cat "$W/slurmctld.pid")"; sleep 1; kill "$(cat /run/munge/munged.pid)"
[ "$state" = "JobState=COMPLETED" ]
