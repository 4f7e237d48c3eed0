# Shared by quickstart.sh and test.sh: create .venv once and install the project into it.
# pip keeps the compiled llama-cpp-python wheel in its cache, so a second run installs nothing new.
#
# ATHANOR_GPU=auto|cuda|cpu (auto by default) picks the llama.cpp build. The CUDA build is compiled
# into a wheel folder of Athanor's own, never pip's cache: pip keys that cache by the sdist alone, so
# it would hand the CPU wheel back for a CUDA install (or the CUDA one to a later CPU install).
# scripts/install.sh sources this file too, for the same detection and build.

# Where the toolkit and the driver usually are when nvcc is not on PATH; tests point them elsewhere.
athanor_cuda_home_default=/usr/local/cuda
athanor_nvidia_device=/dev/nvidia0

# athanor_find_nvcc: prints nvcc's path, status 1 when there is none. NVIDIA's packages install the
# toolkit in /usr/local/cuda without putting it on PATH, hence the usual places after PATH.
athanor_find_nvcc() {
    local dir
    if command -v nvcc 2>/dev/null; then
        return 0
    fi
    for dir in ${CUDA_HOME:+"$CUDA_HOME/bin"} "$athanor_cuda_home_default/bin"; do
        if [ -x "$dir/nvcc" ]; then
            echo "$dir/nvcc"
            return 0
        fi
    done
    return 1
}

# athanor_cuda_version NVCC: "12.4" from its "Cuda compilation tools, release 12.4, V12.4.131".
athanor_cuda_version() {
    local version
    # sed quits at the first match; `|| true`: nvcc's SIGPIPE must not trip a caller's pipefail.
    version="$("$1" --version 2>/dev/null \
        | sed -n '/release [0-9]/{s/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p;q;}')" || true
    if [ -z "$version" ]; then
        echo "athanor: error: no CUDA version in the output of \`$1 --version\`" >&2
        return 1
    fi
    echo "$version"
}

# athanor_gpu_driver: prints what showed an NVIDIA driver, status 1 when nothing did. nvidia-smi
# can hang on a wedged driver, hence the timeout.
athanor_gpu_driver() {
    if command -v nvidia-smi >/dev/null 2>&1 && timeout 30 nvidia-smi -L >/dev/null 2>&1; then
        echo "nvidia-smi lists a GPU"
        return 0
    fi
    if [ -e "$athanor_nvidia_device" ]; then
        echo "$athanor_nvidia_device exists"
        return 0
    fi
    return 1
}

# athanor_gpu_variant: prints cpu or cuda and sets athanor_variant and athanor_variant_why (call it
# without $(...) to keep them). Status 1, the fix on stderr, when ATHANOR_GPU asks for what cannot be.
athanor_gpu_variant() {
    local want="${ATHANOR_GPU:-auto}" nvcc version driver
    athanor_variant=cpu
    case "$want" in
        cpu)
            athanor_variant_why="ATHANOR_GPU=cpu"
            echo cpu
            return 0 ;;
        auto|cuda) ;;
        *)
            echo "athanor: error: ATHANOR_GPU=$want: use auto (the default), cuda or cpu" >&2
            return 1 ;;
    esac
    if ! nvcc="$(athanor_find_nvcc)"; then
        if [ "$want" = cuda ]; then
            echo "athanor: error: ATHANOR_GPU=cuda, but no nvcc on PATH, in \$CUDA_HOME/bin or in" \
                 "$athanor_cuda_home_default/bin. Install the CUDA toolkit (its nvcc compiles llama.cpp's" \
                 "CUDA kernels; put it on PATH or set CUDA_HOME), or install the CPU build: ATHANOR_GPU=cpu" >&2
            return 1
        fi
        athanor_variant_why="ATHANOR_GPU=auto found no nvcc (the CUDA toolkit); ATHANOR_GPU=cuda insists"
        echo cpu
        return 0
    fi
    version="$(athanor_cuda_version "$nvcc")" || return 1
    if driver="$(athanor_gpu_driver)"; then
        athanor_variant_why="ATHANOR_GPU=$want: $nvcc is CUDA $version and $driver"
    elif [ "$want" = cuda ]; then
        # A build machine need not hold the GPU the wheel is for.
        athanor_variant_why="ATHANOR_GPU=cuda: $nvcc is CUDA $version; no NVIDIA driver here, so a portable build (the common GPU architectures) for another machine"
    else
        athanor_variant_why="ATHANOR_GPU=auto found $nvcc (CUDA $version) but no NVIDIA driver (nvidia-smi lists no GPU, no $athanor_nvidia_device); ATHANOR_GPU=cuda insists"
        echo cpu
        return 0
    fi
    athanor_variant=cuda
    echo cuda
}

# athanor_llama_version [PYPROJECT]: the llama-cpp-python version pyproject.toml pins, so the CUDA
# build is the release the CPU install would get.
athanor_llama_version() {
    local pyproject="${1:-pyproject.toml}" version
    version="$(sed -n '/^[[:space:]]*"llama-cpp-python==/{s/^[[:space:]]*"llama-cpp-python==\([^"]*\)".*/\1/p;q;}' "$pyproject")" || true
    if [ -z "$version" ]; then
        echo "athanor: error: $pyproject pins no \"llama-cpp-python==VERSION\" in its dependencies" >&2
        return 1
    fi
    echo "$version"
}

# athanor_onnxruntime_gpu_spec [PYPROJECT]: the requirement in pyproject's `gpu` extra.
athanor_onnxruntime_gpu_spec() {
    local pyproject="${1:-pyproject.toml}" spec
    spec="$(sed -n 's/^gpu = \["\(onnxruntime-gpu[^"]*\)"\].*/\1/p' "$pyproject")" || true
    if [ -z "$spec" ]; then
        echo "athanor: error: $pyproject has no \`gpu = [\"onnxruntime-gpu...\"]\` extra" >&2
        return 1
    fi
    echo "$spec"
}

# athanor_cuda_wheel_dir [PYPROJECT]: the folder that keeps the CUDA build. Keyed by the CUDA
# version too: a wheel compiled against one toolkit needs that runtime.
athanor_cuda_wheel_dir() {
    local nvcc version llama
    if ! nvcc="$(athanor_find_nvcc)"; then
        echo "athanor: error: no nvcc (the CUDA toolkit) on PATH, in \$CUDA_HOME/bin or in $athanor_cuda_home_default/bin" >&2
        return 1
    fi
    version="$(athanor_cuda_version "$nvcc")" || return 1
    llama="$(athanor_llama_version "${1:-pyproject.toml}")" || return 1
    echo "${XDG_CACHE_HOME:-$HOME/.cache}/athanor/wheels/llama-cpp-python-$llama-cuda$version"
}

# athanor_install_llama_cuda PYTHON [PYPROJECT]: the pinned llama-cpp-python compiled with CUDA into
# PYTHON's environment; compiled once, the wheel is reused from athanor_cuda_wheel_dir after that.
athanor_install_llama_cuda() {
    local python="$1" pyproject="${2:-pyproject.toml}" dir llama nvcc wheel tmp portable=""
    dir="$(athanor_cuda_wheel_dir "$pyproject")" || return 1
    llama="$(athanor_llama_version "$pyproject")" || return 1
    nvcc="$(athanor_find_nvcc)" || return 1
    wheel="$(athanor_find_llama_wheel "$dir" "$llama")" || wheel=""
    if [ -z "$wheel" ]; then
        echo "compiling llama-cpp-python $llama with CUDA into $dir" >&2
        mkdir -p "$dir" || return 1
        # Built beside the folder and moved in whole: an interrupted build leaves no wheel to reuse.
        tmp="$(mktemp -d "$dir/.build.XXXXXX")" || return 1
        # With no GPU to look at, CMake's default "native" CUDA architecture stops the build;
        # GGML_NATIVE=OFF builds the common architectures (and no -march=native) instead.
        if ! athanor_gpu_driver >/dev/null; then
            portable=" -DGGML_NATIVE=OFF"
        fi
        # --no-cache-dir: pip's cache would answer with the CPU wheel it already holds.
        # CMAKE_CUDA_COMPILER: the nvcc found above need not be on PATH. The caller's CMAKE_ARGS
        # (say -DCMAKE_CUDA_ARCHITECTURES=89) come last, so they win.
        if ! CMAKE_ARGS="-DGGML_CUDA=on$portable -DCMAKE_CUDA_COMPILER=$nvcc${CMAKE_ARGS:+ $CMAKE_ARGS}" \
                "$python" -m pip wheel --disable-pip-version-check --no-cache-dir --no-deps \
                --wheel-dir "$tmp" "llama-cpp-python==$llama"; then
            rm -rf "$tmp"
            return 1
        fi
        mv "$tmp"/llama_cpp_python-*.whl "$dir"/ || { rm -rf "$tmp"; return 1; }
        rm -rf "$tmp"
        wheel="$(athanor_find_llama_wheel "$dir" "$llama")" || {
            echo "athanor: error: pip wheel left no llama_cpp_python-$llama-*.whl in $dir" >&2
            return 1
        }
    fi
    # --force-reinstall: the CPU build of the same version would otherwise count as installed.
    "$python" -m pip install --disable-pip-version-check --force-reinstall --no-deps "$wheel"
}

athanor_find_llama_wheel() {
    local wheel
    for wheel in "$1"/llama_cpp_python-"$2"-*.whl; do
        if [ -f "$wheel" ]; then
            echo "$wheel"
            return 0
        fi
    done
    return 1
}

# athanor_install_onnxruntime_gpu PYTHON [PYPROJECT]: onnxruntime-gpu (the `gpu` extra) in place of
# onnxruntime. Both ship the module `onnxruntime`: whichever comes last overwrites the other's files,
# and uninstalling either deletes them, so both go before the GPU one is installed alone.
athanor_install_onnxruntime_gpu() {
    local python="$1" spec
    spec="$(athanor_onnxruntime_gpu_spec "${2:-pyproject.toml}")" || return 1
    "$python" -m pip uninstall --disable-pip-version-check -y onnxruntime onnxruntime-gpu \
        && "$python" -m pip install --disable-pip-version-check "$spec"
}

# athanor_installed_variant VENV: the build recorded in VENV (cpu where none is: every install
# before the CUDA build existed was a CPU one).
athanor_installed_variant() {
    cat "$1/.athanor-variant" 2>/dev/null || echo cpu
}

# athanor_before_install PYTHON INSTALLED WANTED [PYPROJECT], before pip installs Athanor itself.
# CUDA goes in first so that pip, finding the pinned version installed, never compiles the CPU build;
# leaving CUDA, its packages go so that pip puts the CPU ones (from its cache) back.
athanor_before_install() {
    if [ "$3" = cuda ]; then
        athanor_install_llama_cuda "$1" "${4:-pyproject.toml}"
    elif [ "$2" = cuda ]; then
        "$1" -m pip uninstall --disable-pip-version-check -y llama-cpp-python onnxruntime onnxruntime-gpu
    fi
}

# athanor_after_install PYTHON WANTED [PYPROJECT], after pip installed Athanor (and onnxruntime with it).
athanor_after_install() {
    if [ "$2" = cuda ]; then
        athanor_install_onnxruntime_gpu "$1" "${3:-pyproject.toml}"
    fi
}

install_athanor() {
    local extras="$1"
    local python="${PYTHON:-python3}"
    athanor_gpu_variant >/dev/null || return 1
    local variant="$athanor_variant"
    if [ ! -x .venv/bin/python ]; then
        "$python" -m venv .venv
    fi
    local spec="."
    [ -n "$extras" ] && spec=".[$extras]"
    local stamp=".venv/.athanor-installed-$(cat pyproject.toml | sha256sum | cut -c1-16)-${extras:-base}-$variant"
    local installed
    installed="$(athanor_installed_variant .venv)"
    # The recorded build too: going cpu -> cuda -> cpu leaves the first cpu stamp behind.
    if [ ! -f "$stamp" ] || [ "$installed" != "$variant" ]; then
        echo "installing Athanor into .venv (the first time compiles llama-cpp-python: several minutes)..." >&2
        echo "llama.cpp build: $variant ($athanor_variant_why)" >&2
        if [ "$variant" = cuda ]; then
            local wheels
            wheels="$(athanor_cuda_wheel_dir)" || return 1
            echo "the CUDA wheel is kept in $wheels (only the first install compiles it: tens of minutes)" >&2
        fi
        local log=".venv/install.log"
        if ! { .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip \
               && athanor_before_install .venv/bin/python "$installed" "$variant" \
               && .venv/bin/python -m pip install --disable-pip-version-check -e "$spec" \
               && athanor_after_install .venv/bin/python "$variant"; } >"$log" 2>&1; then
            tail -n 40 "$log" >&2
            echo "install failed; the whole log is in $log" >&2
            if [ "$variant" = cuda ]; then
                echo "the CUDA build needs the whole CUDA toolkit (nvcc and cuBLAS, the -dev packages)" \
                     "and a C++ compiler; ATHANOR_GPU=cpu installs the CPU build" >&2
            fi
            return 1
        fi
        echo "$variant" > .venv/.athanor-variant
        touch "$stamp"
    fi
}
