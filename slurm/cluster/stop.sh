#!/usr/bin/env bash
# Stop the daemons slurm/cluster/start.sh started (by their pid files), newest first.
# Jobs still running are cancelled first. Safe to run when nothing runs.
set -uo pipefail
RUN=/run/slurm

stop() { # stop PIDFILE: SIGTERM, then SIGKILL after 10 s
  [ -s "$1" ] || return 0
  local p
  p=$(cat "$1")
  kill "$p" 2>/dev/null || return 0
  for _ in $(seq 50); do
    kill -0 "$p" 2>/dev/null || return 0
    grep -q '^State:.*Z' "/proc/$p/status" 2>/dev/null && return 0
    sleep 0.2
  done
  kill -9 "$p" 2>/dev/null || true
}
command -v scancel >/dev/null && timeout 10 scancel --user=root >/dev/null 2>&1
stop "$RUN/slurmd.pid"
stop "$RUN/slurmctld.pid"
stop "$RUN/slurmdbd.pid"
[ -S /run/mysqld/mysqld.sock ] && mariadb-admin -uroot shutdown 2>/dev/null
stop /run/munge/munged.pid
exit 0
