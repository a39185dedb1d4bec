#!/bin/bash
# Re-run every committed benchmark, one after the other, from a clean clone of HEAD, and copy the result
# files back into benchmarks/results. Run it alone on an otherwise idle machine (no training, tests or
# other benchmarks meanwhile): that is what the --idle note written into every result file certifies.
#   bash benchmarks/speed/run_idle.sh [DATA_DIR]     (DATA_DIR: the h5 ModelNet10 train split for the epoch timing;
#                                                     default ../shared/data/modelnet10_hdf5_1024)   ~50 min on 2 cores
#   SKIP_CONV=1 bash benchmarks/speed/run_idle.sh    the same without bench_conv (its escnn baseline alone takes ~30 min)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
data=$(cd "${1:-$repo/../shared/data/modelnet10_hdf5_1024}" && pwd)
py="$repo/.venv/bin/python"
clone=$(mktemp -d /tmp/pcsym_bench.XXXXXX)
git clone -q "$repo" "$clone"
cd "$clone"
export PYTHONPATH="$clone"  # the clone's pcsym, not the working tree's (which may be edited meanwhile)
IDLE="ran alone from a clean clone of the commit (benchmarks/speed/run_idle.sh); no training, tests or other benchmarks meanwhile; the developer only edited files"
"$py" -m benchmarks.speed.bench_cli --idle "$IDLE"
"$py" -m benchmarks.speed.bench_model --idle "$IDLE"
"$py" -m benchmarks.speed.bench_model --baseline ca4b40c --rounds 3 --profile --levers --epoch-data "$data" --epoch-rounds 2 --idle "$IDLE"
files="bench_cli bench_model bench_model_baseline"
if [ -z "${SKIP_CONV:-}" ]; then
    "$py" -m benchmarks.speed.bench_conv --idle "$IDLE"
    files="$files bench_conv"
fi
for f in $files; do
    cp "benchmarks/results/$f.md" "benchmarks/results/$f.json" "$repo/benchmarks/results/"
done
echo "results copied to $repo/benchmarks/results (clone left in $clone)"
