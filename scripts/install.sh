#!/usr/bin/env bash
# Install Athanor as a systemd service on this machine. Run as root; running it again is safe.
#
#   sudo scripts/install.sh [--venv DIR] [--gpu | --no-gpu] [--no-enable] [--root DIR]
#
#   - system user and group `athanor`; the socket is group-owned: `usermod -aG athanor USER` lets USER ask
#   - /etc/athanor/athanor.toml from scripts/athanor.toml.example, only when absent (never overwritten)
#   - /etc/athanor/credentials/ (0700, root) with an empty gemini-api-key for LoadCredential=: put the
#     teacher's key in it
#   - /var/lib/athanor (0700, athanor: the socket's group must not read other callers' answers) for the cache, the distillation log and exports
#   - the Python environment: --venv DIR uses an existing one (DIR/bin/athanor); by default
#     /opt/athanor/.venv is created and this checkout installed into it (the first time compiles
#     llama-cpp-python: minutes). Not under /home or /root: the unit's ProtectHome=yes hides them.
#     llama.cpp's build is chosen as scripts/quickstart.sh chooses it (scripts/lib/install.sh): CUDA
#     when nvcc and an NVIDIA driver are found, or with --gpu (which then needs nvcc); CPU with
#     --no-gpu; ATHANOR_GPU=auto|cuda|cpu overrides both. Running again with another choice rebuilds.
#   - the units in /etc/systemd/system, ExecStart= pointing at that environment; with a GPU (found
#     as /dev/nvidia0 or nvidia-smi, or forced with --gpu) a drop-in athanor.service.d/gpu.conf that
#     opens /dev/nvidia* (the units keep every other device closed)
#   - systemctl daemon-reload, enable --now athanor.socket athanor-retrain.timer; skipped with a note
#     when systemd is not running (a container) or with --no-enable
#
# --root DIR installs into DIR instead of / (packaging, tests): no user, no chown, no systemctl.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
args="$*"
root=""
venv=""
gpu="auto"
enable=1

say() { echo "athanor-install: $*"; }
die() { echo "athanor-install: error: $*" >&2; exit 1; }
# shellcheck source=scripts/lib/install.sh
source "$repo/scripts/lib/install.sh"

while [ $# -gt 0 ]; do
    case "$1" in
        --root) root="${2:?--root needs a folder}"; shift 2 ;;
        --venv) venv="${2:?--venv needs a folder}"; shift 2 ;;
        --gpu) gpu="yes"; shift ;;
        --no-gpu) gpu="no"; shift ;;
        --no-enable) enable=0; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

if [ -n "$root" ]; then
    mkdir -p "$root"
    root="$(cd "$root" && pwd)"
elif [ "$(id -u)" -ne 0 ]; then
    die "run as root: sudo $0 $args"
fi

# --- user and group ---------------------------------------------------------------------------
if [ -z "$root" ]; then
    if ! getent group athanor >/dev/null; then
        groupadd --system athanor
        say "created group athanor"
    fi
    if ! getent passwd athanor >/dev/null; then
        useradd --system --gid athanor --home-dir /var/lib/athanor --no-create-home \
            --shell /usr/sbin/nologin --comment "Athanor inference appliance" athanor
        say "created user athanor"
    fi
else
    say "--root: not creating the athanor user and group (the target system needs them)"
fi

# own PATH MODE OWNER: set mode, and the owner when installing for real.
own() {
    chmod "$2" "$1"
    if [ -z "$root" ]; then chown "$3" "$1"; fi
}

# --- folders, config, credential --------------------------------------------------------------
install -d "$root/etc/athanor"
own "$root/etc/athanor" 0755 root:root
install -d "$root/etc/athanor/credentials"
own "$root/etc/athanor/credentials" 0700 root:root
install -d "$root/var/lib/athanor"
own "$root/var/lib/athanor" 0700 athanor:athanor
# Files an older install left group-readable (UMask=0027) are closed too.
chmod -R go-rwx "$root/var/lib/athanor"

config="$root/etc/athanor/athanor.toml"
if [ -e "$config" ]; then
    say "kept the existing $config"
else
    install -m 0640 "$repo/scripts/athanor.toml.example" "$config"
    own "$config" 0640 root:athanor
    say "wrote $config (edit it, then: systemctl reload athanor)"
fi

key="$root/etc/athanor/credentials/gemini-api-key"
if [ ! -e "$key" ]; then
    # LoadCredential= fails the unit when its file is missing, so an empty one stands in for "no key".
    (umask 077 && : > "$key")
    own "$key" 0600 root:root
    say "created an empty $key: put the teacher's API key in it when a teacher is configured"
fi

# --- Python environment -----------------------------------------------------------------------
if [ -z "$venv" ]; then
    venv="/opt/athanor/.venv"
    case "$gpu" in yes) build=cuda ;; no) build=cpu ;; *) build=auto ;; esac
    ATHANOR_GPU="${ATHANOR_GPU:-$build}" athanor_gpu_variant >/dev/null \
        || die "cannot build llama.cpp as asked (--gpu means the CUDA build; ATHANOR_GPU=cpu with --gpu installs the CPU build and still opens /dev/nvidia*)"
    installed="$(athanor_installed_variant "$root$venv")"
    if [ ! -x "$root$venv/bin/athanor" ] || [ "$installed" != "$athanor_variant" ]; then
        say "installing Athanor from $repo into $root$venv (the first time takes minutes)"
        say "llama.cpp build: $athanor_variant ($athanor_variant_why)"
        install -d "$root/opt/athanor"
        if [ ! -x "$root$venv/bin/python" ]; then
            "${PYTHON:-python3}" -m venv "$root$venv"
            touch "$root/opt/athanor/.created-by-athanor-install"
        fi
        athanor_before_install "$root$venv/bin/python" "$installed" "$athanor_variant" "$repo/pyproject.toml" \
            || die "installing llama.cpp's $athanor_variant build failed (above); the CUDA build needs the whole CUDA toolkit (nvcc and cuBLAS, the -dev packages), ATHANOR_GPU=cpu installs the CPU build"
        # [export]: the weekly retrain trains, exports and gates, beyond what serving needs.
        "$root$venv/bin/python" -m pip install --disable-pip-version-check --quiet "$repo[export]"
        athanor_after_install "$root$venv/bin/python" "$athanor_variant" "$repo/pyproject.toml" \
            || die "replacing onnxruntime with onnxruntime-gpu failed (above)"
        echo "$athanor_variant" > "$root$venv/.athanor-variant"
    fi
    athanor_bin="$venv/bin/athanor"
else
    venv="$(cd "$venv" 2>/dev/null && pwd)" || die "no virtual environment at $venv"
    [ -x "$venv/bin/athanor" ] || die "$venv/bin/athanor missing: install Athanor into that environment first (pip install '$repo[export]')"
    athanor_bin="$venv/bin/athanor"
fi
case "$athanor_bin" in
    /home/*|/root/*|/run/user/*)
        die "$athanor_bin is under a home folder, which the service cannot see (ProtectHome=yes); use --venv outside /home and /root, or the default /opt/athanor/.venv" ;;
esac

# --- units ------------------------------------------------------------------------------------
units="$root/etc/systemd/system"
install -d "$units"
for unit in athanor.socket athanor.service athanor-retrain.service athanor-retrain.timer; do
    sed "s|/opt/athanor/.venv/bin/athanor|$athanor_bin|g" "$repo/systemd/$unit" > "$units/$unit.tmp"
    chmod 0644 "$units/$unit.tmp"
    mv "$units/$unit.tmp" "$units/$unit"
done
say "installed the units in $units (ExecStart=$athanor_bin)"

if [ "$gpu" = "auto" ]; then
    if [ -e /dev/nvidia0 ] || command -v nvidia-smi >/dev/null 2>&1; then gpu="yes"; else gpu="no"; fi
fi
marker="# Written by Athanor's scripts/install.sh"
for unit in athanor.service athanor-retrain.service; do
    dropin="$units/$unit.d/gpu.conf"
    if [ "$gpu" = "yes" ]; then
        install -d "$units/$unit.d"
        cat > "$dropin" <<EOF
$marker (--gpu, or a GPU was found): open the NVIDIA devices, which
# DevicePolicy=closed keeps shut. char-nvidia* covers every major in /proc/devices named nvidia*:
# nvidia-frontend (/dev/nvidia0.., /dev/nvidiactl), nvidia-uvm, nvidia-caps.
# /dev/nvidia-uvm must exist before the service starts (ProtectKernelModules=yes forbids loading
# the module from inside): run \`nvidia-modprobe -u -c=0\` at boot if it does not.
[Service]
DeviceAllow=char-nvidia* rw
EOF
        chmod 0644 "$dropin"
    elif [ -f "$dropin" ] && head -n 1 "$dropin" | grep -qF "$marker"; then
        rm -f "$dropin"
        rmdir "$units/$unit.d" 2>/dev/null || true
    fi
done
if [ "$gpu" = "yes" ]; then say "GPU: the service may open /dev/nvidia*"; else say "no GPU: the service sees no devices beyond the basics"; fi

# --- systemd ----------------------------------------------------------------------------------
if [ -n "$root" ] || [ "$enable" -eq 0 ]; then
    say "not enabling anything (--root or --no-enable); on the target: systemctl daemon-reload && systemctl enable --now athanor.socket athanor-retrain.timer"
elif [ ! -d /run/systemd/system ]; then
    say "systemd is not running here (not PID 1): skipped systemctl daemon-reload and enable --now athanor.socket athanor-retrain.timer; run them once it is"
else
    systemctl daemon-reload
    systemctl enable --now athanor.socket athanor-retrain.timer
    systemctl try-restart athanor.service  # a running daemon picks up a new environment or units
    say "enabled athanor.socket (the daemon starts on the first request) and athanor-retrain.timer"
fi

say "done. Next: put the teacher key in /etc/athanor/credentials/gemini-api-key if you use one, edit /etc/athanor/athanor.toml, add users to the athanor group, and run \`athanor doctor\`"
