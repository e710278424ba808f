#!/usr/bin/env bash
# Installs libomp from conda-forge's llvm-openmp (not Homebrew, whose builds
# target only the newest macOS) into a prefix that the wheel build compiles
# and links against; delocate then bundles libomp.dylib into the wheel.
set -euxo pipefail
prefix="${CBACKPROP_OPENMP_PREFIX:-$HOME/cbackprop-openmp}"
case "$(uname -m)" in
  arm64) platform=osx-arm64 ;;
  x86_64) platform=osx-64 ;;
  *) echo "unsupported machine $(uname -m)"; exit 1 ;;
esac
tmp=$(mktemp -d)
curl -fsSL "https://micro.mamba.pm/api/micromamba/${platform}/latest" \
  | tar -xj -C "$tmp" bin/micromamba
"$tmp/bin/micromamba" create --yes --prefix "$prefix" \
  --channel conda-forge --override-channels "llvm-openmp>=17"
ls "$prefix/lib"/libomp*.dylib
