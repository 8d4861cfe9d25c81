#!/usr/bin/env bash
# The quiet window: every timed measurement of the session, one after another.
set -u
cd "$(git rev-parse --show-toplevel)"
E=docs/bench-data/2026-12-04-evening
mkdir -p $E/tracing $E/remote $E/throughput
{ date; nproc; grep -m1 'model name' /proc/cpuinfo; git rev-parse --short HEAD; uptime; } > $E/machine.txt
# 1. tracing off/on alternating pairs
D=$E/tracing PAIRS=${PAIRS:-12} docs/bench-data/2026-12-04-evening/trace_timed.sh
# 2. remote bench x5
uptime > $E/remote/load-start.txt
for i in 1 2 3 4 5; do cargo bench -q -p foreman-remote --bench remote > $E/remote/run-$i.txt 2>&1; done
uptime > $E/remote/load-end.txt
# 3. throughput benches, every pool, every cell
OFF=$(ls -t target/off/release/deps/throughput-* | grep -v '\.d$' | head -1)
"$OFF" --bench > $E/throughput/tokio-1.txt 2>&1
cargo bench -q -p foreman-smol --bench throughput_smol > $E/throughput/smol-1.txt 2>&1
cargo bench -q -p foreman-async-std --bench throughput_async_std > $E/throughput/async-std-1.txt 2>&1
"$OFF" --bench > $E/throughput/tokio-2.txt 2>&1
FOREMAN_BENCH_HANDLER=yield "$OFF" --bench > $E/throughput/tokio-yield.txt 2>&1
uptime >> $E/machine.txt
date >> $E/machine.txt
