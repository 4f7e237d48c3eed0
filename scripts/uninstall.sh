#!/usr/bin/env bash
# Remove what scripts/install.sh installed. Run as root; running it again is safe.
#
#   sudo scripts/uninstall.sh [--purge] [--root DIR]
#
#   - stops and disables athanor.socket, athanor.service and athanor-retrain.timer (when systemd runs)
#   - removes the units and the GPU drop-ins from /etc/systemd/system, then systemctl daemon-reload
#   - removes /opt/athanor when install.sh created it there
#   - removes the athanor user and group
#   - keeps /etc/athanor (config, credentials) and /var/lib/athanor (cache, distillation log,
#     exports) unless --purge is given
#
# --root DIR uninstalls from DIR instead of / (tests): no user, no systemctl.
set -euo pipefail

args="$*"
root=""
purge=0

say() { echo "athanor-uninstall: $*"; }
die() { echo "athanor-uninstall: error: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --root) root="${2:?--root needs a folder}"; shift 2 ;;
        --purge) purge=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

if [ -n "$root" ]; then
    [ -d "$root" ] || die "no folder $root"
    root="$(cd "$root" && pwd)"
elif [ "$(id -u)" -ne 0 ]; then
    die "run as root: sudo $0 $args"
fi

units="$root/etc/systemd/system"
systemd_runs=0
if [ -z "$root" ] && [ -d /run/systemd/system ]; then systemd_runs=1; fi

if [ "$systemd_runs" -eq 1 ]; then
    systemctl disable --now athanor-retrain.timer athanor.socket athanor.service 2>/dev/null || true
    systemctl stop athanor-retrain.service 2>/dev/null || true
elif [ -z "$root" ]; then
    say "systemd is not running here (not PID 1): nothing to stop"
fi

marker="# Written by Athanor's scripts/install.sh"
for unit in athanor.socket athanor.service athanor-retrain.service athanor-retrain.timer; do
    rm -f "$units/$unit"
    dropin="$units/$unit.d/gpu.conf"
    if [ -f "$dropin" ] && head -n 1 "$dropin" | grep -qF "$marker"; then rm -f "$dropin"; fi
    rmdir "$units/$unit.d" 2>/dev/null || true  # kept when it holds drop-ins of your own
done
say "removed the units from $units"
if [ "$systemd_runs" -eq 1 ]; then
    systemctl daemon-reload
    systemctl reset-failed athanor.service athanor-retrain.service 2>/dev/null || true
fi

if [ -f "$root/opt/athanor/.created-by-athanor-install" ]; then
    rm -rf "$root/opt/athanor"
    say "removed $root/opt/athanor"
fi

if [ -z "$root" ]; then
    if getent passwd athanor >/dev/null; then
        uid="$(id -u athanor)"
        userdel athanor
        say "removed user athanor (uid $uid)"
        if [ "$purge" -eq 0 ]; then
            say "files it owned keep uid $uid; a later install may get another uid: chown -R athanor: /var/lib/athanor then"
        fi
    fi
    if getent group athanor >/dev/null; then
        groupdel athanor
        say "removed group athanor"
    fi
fi

if [ "$purge" -eq 1 ]; then
    rm -rf "$root/etc/athanor" "$root/var/lib/athanor" "$root/run/athanor"
    say "purged $root/etc/athanor and $root/var/lib/athanor"
else
    say "kept $root/etc/athanor and $root/var/lib/athanor (--purge removes them)"
fi
