#!/usr/bin/env bash
# Run the rows x seeds of benchmarks/semi_supervised.py as parallel processes (one GPU holds them all easily: the
# hippocampus patches are small and one process alone leaves the GPU mostly idle), then merge the table.
# usage: benchmarks/ssl_parallel.sh DATA OUT ITERATIONS DEVICE "ROWS" "SEEDS" [extra semi_supervised.py args...]
# SSL_TIMEOUT=SECONDS stops runs that take longer; the table then merges the runs that finished.
set -uo pipefail
data=$1; out=$2; iters=$3; device=$4; rows=$5; seeds=$6; shift 6
parts=/tmp/sscce_ssl_parts; rm -rf "$parts"; mkdir -p "$parts" "$out"
here=$(cd "$(dirname "$0")" && pwd)
for row in $rows; do for seed in $seeds; do
  timeout "${SSL_TIMEOUT:-0}" python3 "$here/semi_supervised.py" --data "$data" --methods "$row" --seeds "$seed" --iterations "$iters" --device "$device" \
    --out "$parts/${row}_$seed" --runs "$parts/runs" "$@" > "$parts/${row}_$seed.log" 2>&1 &
done; done
wait
cat "$parts"/*.log > "$out/ssl_log.txt"
python3 "$here/semi_supervised.py" --data "$data" --merge "$parts"/*/ssl.json --out "$out"
