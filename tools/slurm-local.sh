#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine (Debian packages slurm-wlm + munge), for the
# integration tests of `spatialspec sweep --launcher slurm` (tests/test_sweep_slurm.py) and for
# trying the launcher by hand. Root only; nothing outside this machine is contacted except the
# apt mirror, once, to install the packages. Installs in ~11 s, starts in ~5 s.
#
#   tools/slurm-local.sh start       install if needed, configure, start; idempotent (exit 0 when
#                                    the node is already up); exit 1 with a reason otherwise
#   tools/slurm-local.sh stop        stop slurmd, slurmctld, munged (and wait for them)
#   tools/slurm-local.sh status      sinfo + squeue
#   tools/slurm-local.sh idle [S]    wait (at most S seconds, default 120) until no job is left
#
# The node offers all CPUs and the memory minus 2 GB; one partition `debug` (default). KillWait
# is 10 s (scancel: SIGTERM, then SIGKILL 10 s later), so cancelled test tasks go quickly.
set -euo pipefail
cmd=${1:-start}
H=$(hostname -s)
CONF=/etc/slurm/slurm.conf

up() { sinfo -h -o %t 2>/dev/null | grep -Eq '^(idle|mix|alloc|comp)'; }

install() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
  [ "$(id -u)" = 0 ] || { echo "slurm-local: not root, cannot install slurm-wlm" >&2; return 1; }
  command -v apt-get >/dev/null || { echo "slurm-local: no apt-get on this machine" >&2; return 1; }
  local apt=(-o Acquire::Retries=1 -o Acquire::http::Timeout=20 -o Acquire::https::Timeout=20)
  apt-get "${apt[@]}" update -qq >/dev/null 2>&1 || { echo "slurm-local: apt-get update failed (no mirror reachable?)" >&2; return 1; }
  DEBIAN_FRONTEND=noninteractive apt-get "${apt[@]}" install -y -qq --no-install-recommends \
    slurm-wlm munge >/dev/null 2>&1 || { echo "slurm-local: apt-get install slurm-wlm munge failed" >&2; return 1; }
}

configure() {
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
  [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
  chown munge:munge /etc/munge/munge.key /run/munge
  chmod 400 /etc/munge/munge.key
  local cpus mem
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 2048 ))
  cat > "$CONF" <<CONF
ClusterName=local
SlurmctldHost=$H
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
KillWait=10
NodeName=$H CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$H Default=YES MaxTime=INFINITE State=UP
CONF
}

start() {
  if up; then exit 0; fi
  [ "$(id -u)" = 0 ] || { echo "slurm-local: not root" >&2; exit 1; }
  install || exit 1
  configure
  pgrep -x munged >/dev/null || /usr/sbin/munged --force 2>/dev/null
  pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
  pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
  for _ in $(seq 30); do
    up && exit 0
    # a node left down or drained by an earlier run of the daemons comes back
    scontrol update nodename="$H" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  echo "slurm-local: the node did not become idle; see /var/log/slurm/" >&2
  exit 1
}

stop() {
  for p in slurmd slurmctld munged; do
    pids=$(pgrep -x "$p" || true)
    [ -n "$pids" ] && kill $pids
  done
  for _ in $(seq 20); do
    pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || pgrep -x munged >/dev/null || exit 0
    sleep 0.5
  done
  echo "slurm-local: daemons still running after 10 s" >&2
  exit 1
}

idle() {
  local limit=${1:-120}
  for _ in $(seq "$limit"); do
    [ -z "$(squeue -h 2>/dev/null)" ] && exit 0
    sleep 1
  done
  echo "slurm-local: jobs still queued after ${limit} s" >&2
  exit 1
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) sinfo; squeue ;;
  idle) idle "${2:-120}" ;;
  *) echo "usage: $0 start|stop|status|idle [seconds]" >&2; exit 2 ;;
esac
