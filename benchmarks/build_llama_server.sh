#!/usr/bin/env bash
# Optional benchmark step: build llama.cpp's llama-server (and llama-bench) from the sources vendored in
# the llama-cpp-python sdist glm4-local runs on, so a comparison uses the same llama.cpp commit. Not a
# dependency of the project. About 8 minutes on 2 cores. Prints the binary's path.
#
#     bash benchmarks/build_llama_server.sh [DEST]      # default DEST: /tmp/llama-server-build
set -euo pipefail
dest=${1:-/tmp/llama-server-build}
version=$(python -c "import importlib.metadata as m; print(m.version('llama-cpp-python'))")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pip download "llama-cpp-python==$version" --no-deps --no-binary :all: -d "$work" >&2
tar xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
src=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >&2
cmake --build "$work/build" --target llama-server llama-bench -j"$(nproc)" >&2
mkdir -p "$dest"
cp -a "$work/build/bin/." "$dest/"
echo "$dest/llama-server"
