#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine, for `python -m petl sweep GRID --executor slurm` and its test
# (tests/test_slurm.py). Needs root; installs Debian's slurmctld, slurmd, slurm-client and munge (8 packages) when
# missing, writes /etc/slurm/slurm.conf for this host (all its cores and memory, one partition "debug"), and starts
# munged, slurmctld and slurmd without systemd. Idempotent: daemons already running are left as they are.
#
#   sudo bash scripts/slurm_one_node.sh && sinfo
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "error: run as root (it installs packages and starts daemons)" >&2; exit 1; }
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
   || ! command -v sbatch >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge
fi
host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /etc/munge /var/lib/munge \
         /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 400 /etc/munge/munge.key
cat > /etc/slurm/slurm.conf <<EOF
# Written by petl's scripts/slurm_one_node.sh: one node, jobs run as the submitting user, no cgroups.
ClusterName=petl
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do
  state=$(sinfo -h -o %T 2>/dev/null | head -1 || true)
  case "$state" in idle*|mix*|alloc*) echo "SLURM is up: node $host ($cpus CPUs, $mem MB), partition debug ($state)"; exit 0;; esac
  sleep 0.5
done
echo "error: the node did not come up (sinfo says '${state:-nothing}'); see /var/log/slurm/" >&2
exit 1
