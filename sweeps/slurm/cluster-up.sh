#!/usr/bin/env bash
# Start a real SLURM cluster on this machine, as root: munge, MariaDB + slurmdbd (accounting, without which submitit
# cannot see a job that died), slurmctld, and two compute nodes, n1 and n2: two slurmd daemons on their own ports,
# so that multi-node jobs (hydra.launcher.nodes=2) really run across two nodes. For CI and for trying sweeps locally.
# Every daemon's process id goes to /run/vcon-slurm/*.pid, which cluster-down.sh uses to stop exactly these.
#   sweeps/slurm/cluster-up.sh            # prints sinfo when the nodes are idle
set -euo pipefail
[[ $(id -u) == 0 ]] || { echo "cluster-up.sh: must run as root (it starts system daemons)" >&2; exit 1; }
PIDS=/run/vcon-slurm
PACKAGES="munge slurmctld slurmd slurm-client slurmdbd mariadb-server"
if ! dpkg -s $PACKAGES >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null
fi

host=$(hostname -s)
NODES="n1 n2"
for name in $host $NODES; do  # the nodes' names resolve here: jobs meet at their first node (MASTER_ADDR)
  getent hosts "$name" >/dev/null || echo "127.0.0.1 $name" >>/etc/hosts
done
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
# Offer more CPUs than the machine has (slurmd accepts it with config_overrides), so that a test's jobs are not
# queued behind a long sweep on a 2-core machine; set VCON_SLURM_CPUS=$(nproc) for a faithful count. Each node
# offers them all, and the machine's memory.
cpus=${VCON_SLURM_CPUS:-$(( $(nproc) * 4 ))}
install -d -m 0755 "$PIDS" /etc/slurm /var/spool/slurmctld /var/spool/slurmd-n1 /var/spool/slurmd-n2 /var/log/slurm

until_ok() {  # until_ok SECONDS command...: retry every 0.25 s
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do
    (( $(date +%s) < deadline )) || { echo "cluster-up.sh: timed out waiting for: $*" >&2; return 1; }
    sleep 0.25
  done
}
alive() { [[ -s $PIDS/$1.pid ]] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }
pid_of() { pgrep -nx "$1"; }
record() { until_ok 20 test -s "/run/$1.pid" && cp "/run/$1.pid" "$PIDS/$1.pid"; }  # daemons write it after forking

# munge: authentication between the daemons and the client commands
[[ -s /etc/munge/munge.key ]] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=128 status=none
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
if ! alive munged; then
  rm -f /run/munge/munge.socket.2*
  runuser -u munge -- /usr/sbin/munged
  until_ok 10 sh -c 'munge -n | unmunge'
  pid_of munged >"$PIDS/munged.pid"
fi

cat >/etc/slurm/slurm.conf <<CONF
ClusterName=vcon
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd-%n
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
KillWait=5
MinJobAge=300
NodeName=n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=17001 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
NodeName=n2 NodeHostname=$host NodeAddr=127.0.0.1 Port=17002 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

# accounting: MariaDB and slurmdbd
install -d -o mysql -g root -m 0755 /run/mysqld
if ! alive mariadbd; then
  setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 >/var/log/slurm/mariadb.out 2>&1 </dev/null &
  echo $! >"$PIDS/mariadbd.pid"
  until_ok 60 mysqladmin ping
fi
mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
          CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'vcon-ci';
          GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
cat >/etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=vcon-ci
StorageLoc=slurm_acct_db
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
CONF
chmod 600 /etc/slurm/slurmdbd.conf
if ! alive slurmdbd; then
  slurmdbd
  until_ok 40 bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819'
  record slurmdbd
fi

# controller and node daemons, restarted so that they read the slurm.conf written above
for daemon in slurmd-n1 slurmd-n2 slurmd slurmctld; do  # (slurmd: one node, as an earlier version started)
  if alive $daemon; then pid=$(cat "$PIDS/$daemon.pid"); kill "$pid"; until_ok 20 sh -c "! kill -0 $pid"; fi
done
slurmctld && record slurmctld
for node in $NODES; do slurmd -N "$node" && record "slurmd-$node"; done
nodes_ready() { [[ $(sinfo -h -N -o %t | grep -Ec '^(idle|mix|alloc)') == 2 ]]; }
until_ok 60 nodes_ready || { scontrol update nodename=n[1-2] state=resume || true; until_ok 30 nodes_ready; }
until_ok 40 sh -c "sacctmgr -n show cluster format=cluster | grep -q vcon"
sinfo
