# Shared by quickstart.sh and test.sh: create .venv once and install the project into it.
# pip keeps the compiled llama-cpp-python wheel in its cache, so a second run installs nothing new.
install_athanor() {
    local extras="$1"
    local python="${PYTHON:-python3}"
    if [ ! -x .venv/bin/python ]; then
        "$python" -m venv .venv
    fi
    local spec="."
    [ -n "$extras" ] && spec=".[$extras]"
    local stamp=".venv/.athanor-installed-$(cat pyproject.toml | sha256sum | cut -c1-16)-${extras:-base}"
    if [ ! -f "$stamp" ]; then
        echo "installing Athanor into .venv (the first time compiles llama-cpp-python: several minutes)..." >&2
        local log=".venv/install.log"
        if ! { .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip \
               && .venv/bin/python -m pip install --disable-pip-version-check -e "$spec"; } >"$log" 2>&1; then
            tail -n 40 "$log" >&2
            echo "install failed; the whole log is in $log" >&2
            return 1
        fi
        touch "$stamp"
    fi
}
