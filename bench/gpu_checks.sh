#!/usr/bin/env bash
# Every GPU measurement of the project, prepared, for a lent GPU machine whose time is counted (a part a device call):
#   smoke   - bench/smoke.py: every GPU path of a run once, briefly, side by side (the default run captured, gradual,
#             a recipe, low rank taught by the dense model, bert-micro compiled, a streamed JPEG folder with workers,
#             export, a resume after SIGTERM) and tests/test_cuda_graph.py's GPU tests; <= 4 min. Run it first: a
#             failure prints its log and makes the script exit 1, after the parts that follow it
#   graph   - train.cuda_graph: bench/train_speed.py with each step a CUDA graph (compiled bf16), the seven
#             configurations; <= 4.5 min (and first tests/test_cuda_graph.py's GPU tests, <= 3 min, without smoke)
#   vits    - bench/train_speed.py on ViT-S/16 and ViT-B/16 (random weights: no hub there), the seven configurations
#             compiled bf16 with graphs; <= 5 min
#   graph_precision - the offline default run compiled and captured in bf16, 3 seeds (against precision's), <= 4 min
#   speed   - bench/train_speed.py: the seven configurations, compiled bf16 (what a run uses) and eager bf16; the
#             dense model also in eager fp32 (the reference's setting)
#   precision - the offline default run (vit-micro, Fashion-MNIST, pruning 90 %, VCON) in bf16 and fp32, 3 seeds
#   export  - bench/export_speed.py on the GPU (2:4 sparse kernels, low-rank factors, packed formats)
#   torchvision - vcon's RandAugment against torchvision's, op by op (torchvision cannot be installed beside CPU torch)
#   decode  - bench/decode_speed.py: JPEG decoding on the machine's cores (Pillow, as streamed runs do) against nvJPEG
#             on the GPU (torchvision), 1,024 generated ImageNet-sized JPEGs; under 2 minutes
# Usage: bash bench/gpu_checks.sh "smoke graph vits graph_precision speed precision torchvision export decode" [results
#        folder, default bench/results]; "smoke graph" fits one device call of 9 minutes, other parts one each
# The machine needs torch, transformers and safetensors (its image has them); hydra-core, omegaconf and antlr4 (pure
# Python) come in a folder on PYTHONPATH (VCON_PYDEPS), and Fashion-MNIST's IDX files in VCON_FASHION_MNIST. With
# this workplace's device tool: `bash bench/gpu_prepare.sh` makes them in .gpu/ (ignored, 33 MB); carry ".gpu" and run
#   VCON_PYDEPS=$PWD/.gpu/pydeps VCON_FASHION_MNIST=$PWD/.gpu/fashion-mnist bash bench/gpu_checks.sh "smoke graph" $OUT
# Dry run here first, with VCON_GPU_DRY_RUN=1 added: the parts' commands on the CPU, briefly, importing only what the
# GPU machine's image has (bench/gpu_image/sitecustomize.py); the GPU tests then skip themselves.
# Seen on an H200 (2026-11-27): speed ~5 min (7 compiled configurations, 7 eager, 1 fp32), precision ~1 min,
# export ~3 min, torchvision ~10 s; a machine start ~40 s.
set -uo pipefail
what=" ${1:-smoke graph vits graph_precision speed precision torchvision export decode} "
out=${2:-bench/results}
mkdir -p "$out"
dry=${VCON_GPU_DRY_RUN:-}
export PYTHONUNBUFFERED=1 PYTHONPATH="${dry:+$PWD/bench/gpu_image:}${VCON_PYDEPS:+$VCON_PYDEPS:}$PWD${PYTHONPATH:+:$PYTHONPATH}"
fmnist=${VCON_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
status=0

if [[ -n $dry ]]; then  # each part's commands, on a CPU: fewer steps, smaller batches, the GPU-only options left out
  device=cpu smoke_timeout=900 brief="train.epochs=2 vcon.epochs=1 train.epoch_size=1024 data.test_size=1000"
  quick="--device cpu --steps 2 --warmup 1 --repeats 1 --batch 16" graph_variant=fp32:false capture=auto
  vits_configs=vanilla
  export_args="--budget-s 0.05"
  echo "dry run on the CPU: the parts' commands, briefly, with only the GPU image's packages" | tee "$out/gpu.txt"
else
  device=cuda smoke_timeout=240 brief="" quick="" graph_variant=bf16:true:graph capture=true
  vits_configs=vanilla,prune,prune_vcon,quant,quant_vcon,lrd,lrd_vcon
  export_args="--device cuda"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$out/gpu.txt"
fi
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

if [[ $what == *" smoke "* ]]; then  # the GPU tests run there, beside the runs, so that graph needs not wait on them
  timeout $((smoke_timeout + 60)) python3 bench/smoke.py --device $device --fashion-mnist "$fmnist" --out "$out" \
    --timeout $smoke_timeout 2>&1 | tee "$out/smoke.log" || status=1
fi

if [[ $what == *" graph "* ]]; then
  if [[ $what != *" smoke "* ]]; then
    timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graph.py 2>&1 | tail -30 \
      | tee "$out/cuda_graph_tests.log"
  fi
  timeout 270 python3 bench/train_speed.py --out "$out" --steps 20 --warmup 6 --variants $graph_variant $quick 2>&1 \
    | grep -v "^Loading" | tee "$out/train_speed_graph.log" || status=1
fi

if [[ $what == *" vits "* ]]; then
  for model in vit-small-scratch vit-base-scratch; do
    timeout 150 python3 bench/train_speed.py --out "$out" --model $model --configs $vits_configs --steps 10 --warmup 5 \
      --repeats 2 --variants $graph_variant $quick 2>&1 | grep -v "^Loading" | tee -a "$out/train_speed_vits.log"
  done
fi

if [[ $what == *" graph_precision "* ]]; then
  rm -rf /tmp/vcon-graph  # a run finished there earlier would be kept, not run again
  for seed in 0 1 2; do  # side by side, as precision's runs; compiled and captured, as a CUDA run would be
    timeout 240 python3 run.py seed=$seed train.precision=bf16 train.cuda_graph=$capture device=$device \
      data.root="$fmnist" tracking.wandb.mode=disabled outputs=/tmp/vcon-graph $brief >"/tmp/vcon-graph-$seed.log" 2>&1 &
  done
  wait
  tail -n 3 /tmp/vcon-graph-*.log >"$out/precision_graph.log"
  python3 -c 'import glob, json
for path in sorted(glob.glob("/tmp/vcon-graph/runs/*/results.json")):
    r = json.load(open(path))
    print("bf16, captured:", path.split("/")[-2], "test accuracy at beta=0", r["test_acc"], "last epoch",
          round(r["history"][-1]["images_per_s"]), "img/s, run", round(r["wall_time_s"]), "s")' | tee -a "$out/precision_graph.log"
fi

if [[ $what == *" speed "* ]]; then
  timeout 330 python3 bench/train_speed.py --out "$out" --steps 30 --warmup 8 --variants bf16:true,bf16:false $quick 2>&1 \
    | grep -v "^Loading" | tee "$out/train_speed.log"
  timeout 60 python3 bench/train_speed.py --out "$out" --steps 30 --warmup 8 --configs vanilla --variants fp32:false $quick \
    2>&1 | grep -v "^Loading" | tee -a "$out/train_speed.log"
fi

if [[ $what == *" precision "* ]]; then
  # Six independent runs side by side on the one GPU (each is small); eager, so that no compilation is timed.
  rm -rf /tmp/vcon-precision
  for precision in fp32 bf16; do
    for seed in 0 1 2; do
      timeout 150 python3 run.py seed=$seed train.precision=$precision train.compile=false device=$device data.root="$fmnist" \
        tracking.wandb.mode=disabled outputs=/tmp/vcon-precision $brief >"/tmp/vcon-precision-$precision-$seed.log" 2>&1 &
    done
  done
  wait
  tail -n 4 /tmp/vcon-precision-*.log >"$out/precision.log"
  python3 - "$out" <<'EOF'
import json, pathlib, statistics, sys
rows = {}
for path in sorted(pathlib.Path("/tmp/vcon-precision/runs").glob("*/results.json")):
    config = (path.parent / ".hydra" / "config.yaml").read_text()
    precision = "bf16" if "precision: bf16" in config else "fp32"
    r = json.loads(path.read_text())
    rows.setdefault(precision, []).append({"run": path.parent.name, "test_acc": r["test_acc"],
                                           "dense_test_acc": r["dense_test_acc"], "wall_time_s": r["wall_time_s"],
                                           "images_per_s": r["history"][-1]["images_per_s"]})
summary = {p: {"runs": v, "mean": statistics.mean(x["test_acc"] for x in v),
               "std": statistics.stdev(x["test_acc"] for x in v) if len(v) > 1 else 0.0} for p, v in rows.items()}
pathlib.Path(sys.argv[1], "precision.json").write_text(json.dumps(summary, indent=1))
for p, s in summary.items():
    print(f"{p}: test accuracy at beta=0 {s['mean']:.2f} +- {s['std']:.2f} over {len(s['runs'])} seeds:",
          [round(x["test_acc"], 2) for x in s["runs"]])
EOF
fi

if [[ $what == *" torchvision "* ]]; then
  timeout 60 python3 bench/randaugment_vs_torchvision.py 2>&1 | tee "$out/randaugment_vs_torchvision.txt" | tail -4
fi

if [[ $what == *" export "* ]]; then
  python3 bench/export_speed.py $export_args --out "$out" 2>&1 | tee "$out/export_speed.log"
fi

if [[ $what == *" decode "* ]]; then
  timeout 240 python3 bench/decode_speed.py --out "$out" 2>&1 | tee "$out/decode_speed.log"
fi
exit $status
