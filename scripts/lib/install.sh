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
        .venv/bin/python -m pip install --disable-pip-version-check -q --upgrade pip >&2
        .venv/bin/python -m pip install --disable-pip-version-check -q -e "$spec" >&2
        touch "$stamp"
    fi
}
