#!/usr/bin/env bash
# Build llama.cpp's own server (llama-server: continuous batching, --parallel slots) from the llama.cpp
# sources vendored in llama-cpp-python's sdist on PyPI, so it matches the in-process engine's llama.cpp.
# Usage: bash benchmarks/build_llama_server.sh [DIR]   -> prints the path of DIR/.../build/bin/llama-server
set -euo pipefail
dir="${1:-$HOME/.cache/selfguide/llama-server}"
version="$(python -c 'import llama_cpp; print(llama_cpp.__version__)')"
mkdir -p "$dir" && cd "$dir"
[ -f "llama_cpp_python-$version.tar.gz" ] || python -m pip download --no-deps --no-binary :all: -q -d . "llama-cpp-python==$version"
[ -d "llama_cpp_python-$version" ] || tar xzf "llama_cpp_python-$version.tar.gz"
cd "llama_cpp_python-$version/vendor/llama.cpp"
cmake -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
      -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON >/dev/null
cmake --build build --target llama-server -j"$(nproc)" >/dev/null
echo "$PWD/build/bin/llama-server"
