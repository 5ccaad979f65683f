#!/usr/bin/env bash
# Build llama.cpp's llama-server (and llama-bench) from the sources vendored in the llama-cpp-python sdist
# glm4-local runs on, so engines and comparisons use the same llama.cpp commit: for the tests of
# `serve --engine` (.ci/run calls it when the binary is missing) and the benchmarks that compare with
# llama-server. Not a dependency of the project. About 8 minutes on 2 cores, once per machine. Prints the
# binary's path.
#
#     bash benchmarks/build_llama_server.sh [DEST]
#     # default DEST: ${XDG_CACHE_HOME:-~/.cache}/glm4-local/llama-server-VERSION (where the tests look)
set -euo pipefail
version=$(python -c "import importlib.metadata as m; print(m.version('llama-cpp-python'))")
dest=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/glm4-local/llama-server-$version}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pip download "llama-cpp-python==$version" --no-deps --no-binary :all: -d "$work" >&2
tar xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
src=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >&2
cmake --build "$work/build" --target llama-server llama-bench -j"$(nproc)" >&2
# copied whole into place, then renamed: an interrupted build leaves no half binary where the tests look
mkdir -p "$(dirname "$dest")"
rm -rf "$dest.partial" && mkdir -p "$dest.partial"
cp -a "$work/build/bin/." "$dest.partial/"
rm -rf "$dest"
mv "$dest.partial" "$dest"
echo "$dest/llama-server"
