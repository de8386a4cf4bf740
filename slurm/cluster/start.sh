#!/usr/bin/env bash
# Install (Debian: slurm-wlm, munge, slurmdbd, mariadb-server) and start a single-node SLURM
# cluster with job accounting on this machine, as root: munged, MariaDB, slurmdbd, slurmctld and
# slurmd, all on 127.0.0.1, no systemd, no cgroups. Used by .ci/run before the tests, and by
# developers (`sudo slurm/cluster/start.sh`; `slurm/cluster/stop.sh` stops it).
#
# Accounting is not optional: submitit polls `sacct` for job states, and without it a cancelled
# or requeued job makes a waiting launcher hang. Safe to re-run: a daemon that answers is left
# alone. Fails loudly (exit 1 and the daemons' log tails) when anything does not come up.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
LOG=/var/log/slurm RUN=/run/slurm STATE=/var/spool/slurm-agentrl
CTLDPORT=${SLURMCTLD_PORT:-6817} SLURMDPORT=${SLURMD_PORT:-6818} DBDPORT=${SLURMDBD_PORT:-6819}

die() {
  echo "slurm/cluster/start.sh: $*" >&2
  for f in "$LOG"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }; done
  exit 1
}
# wait_for SECONDS CMD...: run CMD every 0.5 s until it succeeds
wait_for() {
  local n=$(( $1 * 2 )); shift
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  return 1
}
# alive PIDFILE: the process of the pid file runs (and is not a zombie)
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null \
  && ! grep -q '^State:.*Z' "/proc/$(cat "$1")/status" 2>/dev/null; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts system daemons)"

# --- packages
pkgs="slurm-wlm slurmctld slurmd slurm-client slurmdbd munge mariadb-server"
missing=$(for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  echo "installing: $missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null || die "apt-get install failed"
fi

HOST=$(hostname -s)
NCPU=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p /etc/slurm "$STATE/slurmctld" "$STATE/slurmd" "$LOG" "$RUN" /run/munge /run/mysqld
chown slurm:slurm "$STATE/slurmctld" "$LOG" "$RUN"
chown munge:munge /run/munge
chown mysql:mysql /run/mysqld

# --- munge: the key Debian's postinst made, or a new one
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi
if ! munge -n >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged --force
  wait_for 10 munge -n || die "munged did not start"
fi

# --- MariaDB and the accounting database (a password of this machine, made once)
if ! mariadb -uroot -e 'select 1' >/dev/null 2>&1; then
  (/usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 >"$LOG/mariadb.log" 2>&1 &)
  wait_for 60 mariadb -uroot -e 'select 1' || die "mariadb did not start"
fi
PASSFILE=/etc/slurm/agentrl-dbpass
[ -s "$PASSFILE" ] || { head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$PASSFILE"; chmod 600 "$PASSFILE"; }
DBPASS=$(cat "$PASSFILE")
mariadb -uroot -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
  CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
  ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;" \
  || die "could not create the accounting database"

# --- configuration files
fill() {
  sed -e "s#@HOST@#$HOST#g" -e "s#@NCPU@#$NCPU#g" -e "s#@MEM@#$MEM_MB#g" -e "s#@LOG@#$LOG#g" \
      -e "s#@RUN@#$RUN#g" -e "s#@STATE@#$STATE#g" -e "s#@CTLDPORT@#$CTLDPORT#g" \
      -e "s#@SLURMDPORT@#$SLURMDPORT#g" -e "s#@DBDPORT@#$DBDPORT#g" -e "s#@DBPASS@#$DBPASS#g" "$1"
}
fill "$HERE/slurmdbd.conf.in" >/etc/slurm/slurmdbd.conf
chown slurm:slurm /etc/slurm/slurmdbd.conf
chmod 600 /etc/slurm/slurmdbd.conf
fill "$HERE/slurm.conf.in" >/etc/slurm/slurm.conf
chmod 644 /etc/slurm/slurm.conf

# --- daemons: slurmdbd, the cluster in the database, slurmctld, slurmd
alive "$RUN/slurmdbd.pid" || /usr/sbin/slurmdbd || die "slurmdbd failed to start"
wait_for 60 timeout 5 sacctmgr -n list cluster || die "slurmdbd does not answer"
timeout 10 sacctmgr -n -P list cluster format=cluster | grep -qx agentrl \
  || timeout 10 sacctmgr -i add cluster agentrl >/dev/null || die "could not add the cluster"
alive "$RUN/slurmctld.pid" || /usr/sbin/slurmctld || die "slurmctld failed to start"
wait_for 60 timeout 5 scontrol ping || die "slurmctld does not answer"
alive "$RUN/slurmd.pid" || /usr/sbin/slurmd || die "slurmd failed to start"
node_idle() { sinfo -h -N -o '%T' | grep -q -E '^(idle|mixed|allocated)'; }
if ! wait_for 30 node_idle; then
  scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
  wait_for 20 node_idle || die "the node did not become idle: $(sinfo -h -N -o '%T %E')"
fi

# --- a real round trip: a job runs, and accounting knows it
out=$(timeout 60 srun -N1 -n1 -t 1 echo agentrl-ok 2>&1) || die "srun failed: $out"
[ "$out" = agentrl-ok ] || die "srun printed '$out'"
wait_for 30 bash -c 'sacct -n -X -o state -S now-10minutes | grep -q COMPLETED' \
  || die "sacct does not report the test job"
sinfo
echo "slurm/cluster/start.sh: SLURM is up (cluster agentrl, node $HOST, $NCPU CPUs)"
