#!/usr/bin/env bash
# Install (or remove) persist-daemon as a systemd service. Idempotent.
#
#   scripts/install-systemd.sh              system service (root): /opt/persist/venv,
#                                            /etc/persist/config.toml, /var/lib/persist
#   scripts/install-systemd.sh --user       user service: ~/.local/share/persist/venv,
#                                            ~/.config/persist/config.toml, ~/.local/state/persist
#   scripts/install-systemd.sh [--user] --uninstall
#                                            stop, disable and remove the unit and the venv;
#                                            recordings and config are never deleted
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
mode=system action=install
for arg in "$@"; do
    case "$arg" in
        --user) mode=user ;;
        --uninstall) action=uninstall ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "install-systemd: unknown argument $arg (use --user, --uninstall)" >&2; exit 2 ;;
    esac
done

if [ "$mode" = system ]; then
    [ "$(id -u)" = 0 ] || { echo "install-systemd: the system service needs root (or use --user)" >&2; exit 1; }
    venv=/opt/persist/venv unit_dir=/etc/systemd/system config=/etc/persist/config.toml
    unit_src=$repo/systemd/persist-daemon.service ctl=(systemctl)
else
    venv=$HOME/.local/share/persist/venv unit_dir=$HOME/.config/systemd/user config=$HOME/.config/persist/config.toml
    unit_src=$repo/systemd/persist-daemon.user.service ctl=(systemctl --user)
fi
unit=$unit_dir/persist-daemon.service
have_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

if [ "$action" = uninstall ]; then
    if have_systemd; then "${ctl[@]}" disable --now persist-daemon.service 2>/dev/null || true; fi
    rm -f "$unit"
    rm -rf "$venv"
    if have_systemd; then "${ctl[@]}" daemon-reload; fi
    echo "install-systemd: removed $unit and $venv (recordings and $config kept)"
    exit 0
fi

python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$repo"
mkdir -p "$(dirname "$config")" "$unit_dir"
if [ ! -e "$config" ]; then
    install -m 0644 "$repo/daemon/persist.example.toml" "$config"
    echo "install-systemd: wrote $config (edit it, then: systemctl ${ctl[*]:1} reload persist-daemon)"
fi
install -m 0644 "$unit_src" "$unit"
if [ "$mode" = system ]; then
    read_cmd="sudo $venv/bin/persist-cli --log-dir /var/lib/persist/conversation_logs status"
else
    read_cmd="$venv/bin/persist-cli --log-dir $HOME/.local/state/persist/conversation_logs status"
fi
if have_systemd; then
    "${ctl[@]}" daemon-reload
    "${ctl[@]}" enable --now persist-daemon.service
    echo "install-systemd: persist-daemon enabled and started ($mode); status: ${ctl[*]} status persist-daemon"
    echo "install-systemd: read what it records: $read_cmd"
else
    echo "install-systemd: $unit installed; systemd is not running here, so nothing was started"
fi
