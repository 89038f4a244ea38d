#!/usr/bin/env bash
# Stop the daemons cluster-up.sh started, by the process ids it recorded (nothing else is touched).
PIDS=/run/vcon-slurm
for daemon in slurmd-n1 slurmd-n2 slurmd slurmctld slurmdbd mariadbd munged; do
  file=$PIDS/$daemon.pid
  [[ -s $file ]] || continue
  pid=$(cat "$file")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$file"
done
echo "slurm stopped"
