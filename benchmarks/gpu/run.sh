#!/usr/bin/env bash
# One device-machine call (H200, the `device` tool): install the carried wheels (.whl: packages lowbit needs
# that the machine's image lacks), then run the stages named in $STAGES, each under its own time limit, logs
# and JSON under $OUT. The machine's python3 (torch 2.11, triton 3.6) runs lowbit from the working tree.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD LOWBIT_CACHE_DIR=/tmp/lowbit-cache
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PWD:/tmp/site
fi
stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s) $(date +%T)"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  echo "=== $name rc=$rc $((SECONDS - t0))s"; tail -n "${TAIL:-25}" "$OUT/$name.log"
}
for s in ${STAGES:-env}; do
  case $s in
    env) stage env 60 bash -c 'nvidia-smi; python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())"; python3 -c "import lowbit.ops, lowbit.codegen.triton as b; print(\"lowbit ok, interpret\", b.INTERPRET)"' ;;
    gputests) stage gputests 240 python3 -m pytest -q -m gpu -p no:cacheprovider $(grep -rl 'mark.gpu' tests) ;;
    bench_int4) stage bench_int4 330 python3 -m lowbit.cli bench gemm --dtypes int4 --out "$OUT" --json "$OUT/bench_int4.json" ;;
    bench_w4a8) stage bench_w4a8 240 python3 -m lowbit.cli bench gemm --dtypes int4 --M 1,64,1024,4096 --json "$OUT/bench_w4a8.json" ;;
    bench_bits) stage bench_bits 200 python3 -m lowbit.cli bench gemm --layers 8192x8192 --M 1,16 --dtypes int4,int3,int2,int8,fp6_e3m2,fp4_e2m1 --json "$OUT/bench_bits.json" ;;
    sweep) stage sweep $(( ${SWEEP_S:-400} + 60 )) python3 benchmarks/gpu/sweep.py --out "$OUT" --budget ${SWEEP_S:-400} ;;
    ab) stage ab 200 python3 benchmarks/gpu/sweep.py --out "$OUT" --grid ab --layers 8192x8192 --budget 150 ;;
    deep) stage deep 300 python3 benchmarks/gpu/sweep.py --out "$OUT" --grid deep --budget 240 ;;
    split) stage split $(( ${SPLIT_S:-240} + 60 )) python3 benchmarks/gpu/sweep.py --out "$OUT" --grid split --budget ${SPLIT_S:-240} ;;
    w4a8) stage w4a8 $(( ${W4A8_S:-200} + 60 )) python3 benchmarks/gpu/sweep.py --out "$OUT" --grid w4a8 --budget ${W4A8_S:-200} ;;
    swap) stage swap $(( ${SWAP_S:-240} + 60 )) python3 benchmarks/gpu/sweep.py --out "$OUT" --grid swap --budget ${SWAP_S:-240} ;;
    fold) stage fold $(( ${FOLD_S:-200} + 60 )) python3 benchmarks/gpu/sweep.py --out "$OUT" --grid fold --budget ${FOLD_S:-200} ;;
    fma) stage fma $(( ${FMA_S:-240} + 60 )) python3 benchmarks/gpu/sweep.py --out "$OUT" --grid fma --budget ${FMA_S:-240} ;;
    forms) stage forms $(( ${FORMS_S:-300} + 60 )) python3 benchmarks/gpu/gemv_forms.py --out "$OUT" --budget ${FORMS_S:-300} ;;
    tvmcuda) stage tvmcuda 120 python3 benchmarks/gpu/tvm_cuda_pack.py --run .tvmcuda/kernels.pkl ;;
    int8peak) stage int8peak 60 python3 -c "
import torch
from lowbit.bench.roofline import measure_peak_flops
x = torch.randint(-127, 128, (8192, 8192), dtype=torch.int8, device='cuda')
w = torch.randint(-127, 128, (8192, 8192), dtype=torch.int8, device='cuda')
for name, b in (('row-major W', w), ('W.t() (TN)', w.t())):
    torch._int_mm(x, b); torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record(); [torch._int_mm(x, b) for _ in range(10)]; e1.record(); torch.cuda.synchronize()
    print(name, round(2 * 8192**3 * 10 / (e0.elapsed_time(e1) * 1e-3) / 1e12), 'TOP/s')
print('measure_peak_flops int8', round(measure_peak_flops('int8', 'cuda') / 1e3), 'TOP/s')
" ;;
    *) echo "unknown stage $s" ;;
  esac
done
