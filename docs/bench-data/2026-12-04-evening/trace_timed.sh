#!/usr/bin/env bash
# Alternating pairs of the tokio throughput bench, tracing off / on.
set -u
cd "$(git rev-parse --show-toplevel)"
D=${D:?}; PAIRS=${PAIRS:-10}
mkdir -p "$D"
export FOREMAN_BENCH_POOLS=foreman,floor FOREMAN_BENCH_N=1,16 FOREMAN_BENCH_C=1,16
OFF=$(ls -t target/off/release/deps/throughput-* | grep -v '\.d$' | head -1)
ON=$(ls -t target/on/release/deps/throughput-* | grep -v '\.d$' | head -1)
uptime > "$D/load-start.txt"
for i in $(seq 1 $PAIRS); do
  "$OFF" --bench > "$D/off-$i.txt" 2>/dev/null
  "$ON" --bench > "$D/on-$i.txt" 2>/dev/null
done
uptime > "$D/load-end.txt"
