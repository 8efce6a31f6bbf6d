#!/usr/bin/env bash
# Install or upgrade the Gondola shelf-unit daemon on a Raspberry Pi (64-bit Raspberry Pi OS
# Bookworm), from this checkout. Safe to run again: a rerun upgrades, and a run that was
# interrupted is repaired. See systemd/README.md ("Installing on a shelf unit" in the README).
#
#   sudo systemd/install.sh [--config FILE] [--mqtt-password-file F] [--mqtt-key-file F]
#   sudo systemd/install.sh --uninstall [--purge]
#   systemd/install.sh --root DIR ...      everything under DIR, no real system touched
#
# How it never leaves a half-installed unit: the new code is built in its own release
# directory (/opt/gondola/releases/ID, complete once ID/.complete exists), checked against the
# config, and only then made current by an atomic symlink swap (/opt/gondola/current). Every file is written to a
# temporary name and renamed. A marker records a run in progress; the next run cleans up.
set -Eeuo pipefail
umask 022

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT=""
FORCE=0
ACTION=install
PURGE=0
CONFIG_IN=""
PASSWORD_IN=""
KEY_IN=""
FIRMWARE=1
START=1
PYTHON="${PYTHON:-python3}"
PIP_ARGS=()
BOOT=""

EX_USAGE=64 EX_SOFTWARE=70 EX_CONFIG=78 EX_UNAVAILABLE=69 EX_NOPERM=77

say() { printf 'gondola-install: %s\n' "$*"; }
die() { local code=$1; shift; printf 'gondola-install: error: %s\n' "$*" >&2; exit "$code"; }

usage() {
  cat <<'EOF'
usage: install.sh [options]
  --config FILE              the unit's shelfd YAML (copied to /etc/shelfd/shelfd.yaml)
  --mqtt-password-file FILE  broker password  (→ /etc/credstore/shelfd-mqtt-password, 0600)
  --mqtt-key-file FILE       TLS client key   (→ /etc/credstore/shelfd-mqtt-key, 0600)
  --no-firmware              leave /boot/firmware and udev rules alone
  --no-start                 install and enable, but do not (re)start the service
  --python PY                interpreter for the venv (default python3, must be ≥ 3.11)
  --pip-arg ARG              extra argument for pip install (repeatable; e.g. --find-links DIR)
  --boot DIR                 boot partition (default /boot/firmware, or /boot on older images)
  --root DIR                 install under DIR: no user, systemctl or udev changes are made,
                             they are written to DIR/var/lib/gondola-install/commands instead
  --force                    install on a machine that is not a 64-bit Raspberry Pi
  --uninstall [--purge]      remove the service; --purge also deletes config, credentials,
                             state (outbox, calibration) and the shelfd user
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --config) CONFIG_IN="${2:?--config needs a file}"; shift ;;
    --mqtt-password-file) PASSWORD_IN="${2:?--mqtt-password-file needs a file}"; shift ;;
    --mqtt-key-file) KEY_IN="${2:?--mqtt-key-file needs a file}"; shift ;;
    --no-firmware) FIRMWARE=0 ;;
    --no-start) START=0 ;;
    --python) PYTHON="${2:?--python needs an interpreter}"; shift ;;
    --pip-arg) PIP_ARGS+=("${2:?--pip-arg needs a value}"); shift ;;
    --boot) BOOT="${2:?--boot needs a directory}"; shift ;;
    --root) ROOT="${2:?--root needs a directory}"; shift ;;
    --force) FORCE=1 ;;
    --uninstall) ACTION=uninstall ;;
    --purge) PURGE=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "$EX_USAGE" "unknown option: $1" ;;
  esac
  shift
done
if [ -n "$ROOT" ]; then
  mkdir -p "$ROOT" || die "$EX_USAGE" "--root $ROOT: cannot create it"
  ROOT="$(cd "$ROOT" && pwd)"
  [ "$ROOT" != "/" ] || die "$EX_USAGE" "--root / is the real system; leave --root out instead"
fi
[ "$PURGE" = 0 ] || [ "$ACTION" = uninstall ] || die "$EX_USAGE" "--purge goes with --uninstall"

# ------------------------------------------------------------------ paths (all under $ROOT)
PREFIX="$ROOT/opt/gondola"
RELEASES="$PREFIX/releases"
CURRENT="$PREFIX/current"
UNIT="$ROOT/etc/systemd/system/shelfd.service"
SYSUSERS="$ROOT/etc/sysusers.d/gondola.conf"
UDEV_RULES="$ROOT/etc/udev/rules.d/60-gondola.rules"
CONF_DIR="$ROOT/etc/shelfd"
CONFIG="$CONF_DIR/shelfd.yaml"
CREDSTORE="$ROOT/etc/credstore"
STATE="$ROOT/var/lib/shelfd"
INSTALL_STATE="$ROOT/var/lib/gondola-install"
MARKER="$INSTALL_STATE/in-progress"
COMMANDS="$INSTALL_STATE/commands"
if [ -z "$BOOT" ]; then
  if [ -d "$ROOT/boot/firmware" ] || [ ! -f "$ROOT/boot/config.txt" ]; then BOOT="$ROOT/boot/firmware"
  else BOOT="$ROOT/boot"; fi
else
  BOOT="$ROOT$BOOT"
fi
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"

# ------------------------------------------------------------------ helpers

# A system command: run it, or under --root only record it (the tests read the record).
sys() {
  if [ -n "$ROOT" ]; then
    mkdir -p "$INSTALL_STATE"
    printf '%s\n' "$*" >>"$COMMANDS"
  else
    "$@"
  fi
}

# Fault injection for the tests: GONDOLA_INSTALL_KILL_AT=<step> kills this run abruptly there,
# as a power cut or Ctrl-C would, so a test can prove that the next run repairs it.
step() {
  printf '%s %s\n' "$(date -u +%FT%TZ)" "$1" >"$MARKER.tmp" && mv -f "$MARKER.tmp" "$MARKER"
  if [ "${GONDOLA_INSTALL_KILL_AT:-}" = "$1" ]; then kill -KILL $$; fi
}

# install_file SRC DEST MODE: copy atomically (temporary name, then rename); 0 if it changed.
install_file() {
  local src=$1 dest=$2 mode=$3
  mkdir -p "$(dirname "$dest")"
  if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
    chmod "$mode" "$dest"
    return 1
  fi
  cp "$src" "$dest.gondola-tmp"
  chmod "$mode" "$dest.gondola-tmp"
  mv -f "$dest.gondola-tmp" "$dest"
  return 0
}

# Point symlink LINK at TARGET atomically (rename a fresh link over the old one).
swap_link() {
  local target=$1 link=$2
  ln -sfn "$target" "$link.gondola-tmp"
  mv -fT "$link.gondola-tmp" "$link"
}

chown_as() {  # chown under a real install only (the test's root has no shelfd user in /etc/passwd of the host)
  if [ -z "$ROOT" ]; then chown "$@"; fi
}

is_pi() {
  local model=""
  [ -r /proc/device-tree/model ] && model="$(tr -d '\0' </proc/device-tree/model)"
  case "$model" in *"Raspberry Pi"*) return 0 ;; esac
  return 1
}

preflight() {
  if [ -z "$ROOT" ]; then
    [ "$(id -u)" = 0 ] || die "$EX_NOPERM" "run as root (sudo $0 ...), or with --root DIR to try it out"
    if [ "$FORCE" = 0 ]; then
      is_pi || die "$EX_UNAVAILABLE" "this is not a Raspberry Pi ($(tr -d '\0' </proc/device-tree/model 2>/dev/null || uname -m)); use --force to install anyway, or --root DIR to try it out"
      [ "$(uname -m)" = aarch64 ] || die "$EX_UNAVAILABLE" "64-bit Raspberry Pi OS is needed (uname -m says $(uname -m)); use --force to install anyway"
    fi
  fi
  { [ -f "$SRC/pyproject.toml" ] && [ -d "$SRC/daemon" ]; } || die "$EX_SOFTWARE" "$SRC is not a Gondola checkout"
  "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null \
    || die "$EX_UNAVAILABLE" "$PYTHON is missing or older than 3.11 (sudo apt-get install python3 python3-venv)"
  for f in "$CONFIG_IN" "$PASSWORD_IN" "$KEY_IN"; do
    [ -z "$f" ] || [ -r "$f" ] || die 66 "$f: not found or not readable"
  done
}

# ------------------------------------------------------------------ steps

repair_interrupted() {
  if [ -f "$MARKER" ]; then
    say "a previous run stopped during step '$(cut -d' ' -f2 "$MARKER")'; repairing"
  fi
  # Leftovers of an interrupted run: half-built releases (no .complete) and temporary files.
  # Nothing live points at them: current only ever names a complete release.
  local r d
  for r in "$RELEASES"/*; do
    [ -d "$r" ] && [ ! -f "$r/.complete" ] && rm -rf "$r"
  done
  for d in "$PREFIX" "$ROOT/etc/systemd/system" "$CONF_DIR" "$CREDSTORE" "$ROOT/etc/udev/rules.d" \
           "$ROOT/etc/sysusers.d" "$BOOT" "$BOOT/overlays"; do
    [ -d "$d" ] && find "$d" -maxdepth 1 -name '*.gondola-tmp' -exec rm -rf {} +
  done
  return 0
}

ensure_user() {
  step user
  install_file "$SRC/systemd/sysusers-gondola.conf" "$SYSUSERS" 0644 || true
  if [ -n "$ROOT" ] && command -v systemd-sysusers >/dev/null; then
    systemd-sysusers --root="$ROOT" "$SYSUSERS" >/dev/null  # writes DIR/etc/passwd and group only
  else
    sys systemd-sysusers "${SYSUSERS#"$ROOT"}"
  fi
}

project_version() {
  sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$SRC/pyproject.toml" | head -n1
}

build_release() {
  step release
  local id rel
  id="$(project_version)-$STAMP-$$"
  rel="$RELEASES/$id"
  mkdir -p "$rel"
  # Built at its final path (venvs are not relocatable); complete only once .complete exists.
  # --system-site-packages lets the camera code import picamera2, which only Raspberry Pi OS's
  # apt provides.
  "$PYTHON" -m venv --system-site-packages "$rel/venv" \
    || die "$EX_UNAVAILABLE" "cannot create a venv (sudo apt-get install python3-venv)"
  step pip
  say "installing gondola $(project_version) with the Pi extras into ${rel#"$ROOT"}/venv (this takes a while)"
  # -c: the versions CI tested (constraints.txt), so every unit of a fleet runs the same ones
  "$rel/venv/bin/python" -m pip install --quiet --disable-pip-version-check -c "$SRC/constraints.txt" \
    ${PIP_ARGS[@]+"${PIP_ARGS[@]}"} "${SRC}[pi]" \
    || die "$EX_UNAVAILABLE" "pip install failed; the running version is untouched (rerun when the network is back)"
  mkdir -p "$rel/docs"
  cp "$SRC"/docs/*.md "$rel/docs/" 2>/dev/null || true
  cp "$SRC/README.md" "$rel/docs/README.md"
  "$rel/venv/bin/shelfd" --version >/dev/null 2>&1 || die "$EX_SOFTWARE" "the new shelfd does not run"
  : >"$rel/.complete"
  NEW_RELEASE="$rel"
}

place_config() {
  step config
  mkdir -p "$CONF_DIR" "$STATE"
  chmod 0755 "$CONF_DIR"
  chmod 0750 "$STATE"
  if [ -n "$CONFIG_IN" ]; then
    if [ -f "$CONFIG" ] && ! cmp -s "$CONFIG_IN" "$CONFIG"; then
      cp -p "$CONFIG" "$CONFIG.bak-$STAMP"
      say "previous config kept as ${CONFIG#"$ROOT"}.bak-$STAMP"
    fi
    install_file "$CONFIG_IN" "$CONFIG" 0640 || true
  elif [ ! -f "$CONFIG" ]; then
    install_file "$SRC/systemd/shelfd.example.yaml" "$CONFIG" 0640 || true
    say "no --config given: a template is at ${CONFIG#"$ROOT"}; edit it before the service can start"
  fi
  chown_as root:shelfd "$CONFIG"
  # Credentials: root-only files; systemd hands the service a private copy (LoadCredential=).
  mkdir -p "$CREDSTORE"
  chmod 0700 "$CREDSTORE"
  [ -z "$PASSWORD_IN" ] || install_file "$PASSWORD_IN" "$CREDSTORE/shelfd-mqtt-password" 0600 || true
  [ -z "$KEY_IN" ] || install_file "$KEY_IN" "$CREDSTORE/shelfd-mqtt-key" 0600 || true
  if ! grep -Eq '^state_dir: */var/lib/shelfd/? *(#.*)?$' "$CONFIG"; then
    say "warning: state_dir in ${CONFIG#"$ROOT"} is not /var/lib/shelfd; the service can write only there"
  fi
}

# Validate the config with the code that is about to run it. 0 ok, 1 template, 78 invalid.
check_config() {
  local shelfd=$1 out
  step check
  if head -n1 "$CONFIG" | grep -q '^# gondola-template'; then
    return 1
  fi
  if out="$(CREDENTIALS_DIRECTORY="$CREDSTORE" "$shelfd" check --config "$CONFIG" 2>&1)"; then
    say "$out"
    return 0
  fi
  printf '%s\n' "$out" >&2
  return "$EX_CONFIG"
}

apply_firmware() {
  [ "$FIRMWARE" = 1 ] || return 0
  step firmware
  FIRMWARE_CHANGED=0
  if install_file "$SRC/firmware/udev/60-gondola.rules" "$UDEV_RULES" 0644; then
    sys udevadm control --reload
    sys udevadm trigger --subsystem-match=gpio --subsystem-match=video4linux \
      --subsystem-match=media --subsystem-match=dma_heap --subsystem-match=iio
  fi
  if [ ! -d "$BOOT" ]; then
    say "warning: no boot partition at ${BOOT#"$ROOT"}; firmware files not applied (--boot DIR)"
    return 0
  fi
  mkdir -p "$BOOT/overlays"
  local dts name tmp
  if command -v dtc >/dev/null; then
    for dts in "$SRC"/firmware/overlays/*-overlay.dts; do
      name="$(basename "$dts" -overlay.dts)"
      tmp="$(mktemp)"
      dtc -q -@ -Wno-unit_address_vs_reg -I dts -O dtb -o "$tmp" "$dts" \
        || die "$EX_SOFTWARE" "$dts does not compile"
      if install_file "$tmp" "$BOOT/overlays/$name.dtbo" 0644; then FIRMWARE_CHANGED=1; fi
      rm -f "$tmp"
    done
  elif [ -z "$ROOT" ]; then
    die "$EX_UNAVAILABLE" "dtc is missing: sudo apt-get install device-tree-compiler"
  else
    say "dtc not found: overlays not compiled (apt-get install device-tree-compiler)"
  fi
  if install_file "$SRC/firmware/gondola.txt" "$BOOT/gondola.txt" 0644; then FIRMWARE_CHANGED=1; fi
  local cfg="$BOOT/config.txt"
  if [ ! -f "$cfg" ] || ! grep -qx 'include gondola.txt' "$cfg"; then
    if [ -f "$cfg" ]; then
      cp -p "$cfg" "$cfg.gondola-bak-$STAMP"
      say "${cfg#"$ROOT"} backed up as $(basename "$cfg").gondola-bak-$STAMP"
    fi
    { [ ! -f "$cfg" ] || cat "$cfg"; printf '\n[all]\n# Gondola shelf unit (systemd/install.sh)\ninclude gondola.txt\n'; } >"$cfg.gondola-tmp"
    mv -f "$cfg.gondola-tmp" "$cfg"
    FIRMWARE_CHANGED=1
  fi
}

activate() {
  local release=$1 previous=""
  step activate
  [ -L "$CURRENT" ] && previous="$(readlink "$CURRENT")"
  # Relative link: the same tree works under --root and on the Pi.
  swap_link "releases/$(basename "$release")" "$CURRENT"
  step unit
  if install_file "$SRC/systemd/shelfd.service" "$UNIT" 0644; then :; fi
  sys systemctl daemon-reload
  if [ -n "$ROOT" ] && command -v systemctl >/dev/null; then
    systemctl --root="$ROOT" enable shelfd.service >/dev/null 2>&1 || true
  else
    sys systemctl enable shelfd.service
  fi
  PREVIOUS_RELEASE="$previous"
}

restart_service() {
  step start
  if [ -n "$ROOT" ]; then
    sys systemctl restart shelfd.service
    return 0
  fi
  # Type=notify: restart returns once READY=1 arrived, or fails.
  if systemctl restart shelfd.service; then
    say "shelfd is running: $(systemctl show -p StatusText --value shelfd.service)"
    return 0
  fi
  return 1
}

prune_releases() {
  step prune
  local keep_cur keep_prev r
  keep_cur="$(readlink "$CURRENT" 2>/dev/null || true)"
  keep_prev="${PREVIOUS_RELEASE:-}"
  for r in "$RELEASES"/*; do
    [ -d "$r" ] || continue
    case "releases/$(basename "$r")" in
      "$keep_cur"|"$keep_prev") ;;
      *) rm -rf "$r" ;;
    esac
  done
}

do_install() {
  preflight
  mkdir -p "$INSTALL_STATE"
  repair_interrupted
  local upgrade=0
  [ -L "$CURRENT" ] && upgrade=1
  ensure_user
  build_release
  place_config
  local rc=0
  check_config "$NEW_RELEASE/venv/bin/shelfd" || rc=$?
  if [ "$rc" = "$EX_CONFIG" ]; then
    rm -rf "$NEW_RELEASE"
    rm -f "$MARKER"
    die "$EX_CONFIG" "${CONFIG#"$ROOT"} is not valid for this version (lines above); nothing was switched$([ "$upgrade" = 1 ] && echo ', the running version stays')"
  fi
  apply_firmware
  activate "$NEW_RELEASE"
  if [ "$rc" = 0 ] && [ "$START" = 1 ]; then
    if ! restart_service; then
      if [ -n "$PREVIOUS_RELEASE" ]; then
        say "the new version did not start; rolling back to $PREVIOUS_RELEASE"
        swap_link "$PREVIOUS_RELEASE" "$CURRENT"
        systemctl restart shelfd.service || true
      fi
      rm -f "$MARKER"
      die "$EX_SOFTWARE" "shelfd did not start: see 'journalctl -u shelfd -n 50'"
    fi
  elif [ "$rc" = 1 ]; then
    say "the service is enabled but not started: edit ${CONFIG#"$ROOT"} first"
  fi
  prune_releases
  rm -f "$MARKER"
  say "installed gondola $(project_version) ($(readlink "$CURRENT"))"
  if [ "${FIRMWARE_CHANGED:-0}" = 1 ]; then
    say "boot files changed: reboot to apply them (sudo reboot)"
  fi
}

do_uninstall() {
  if [ -z "$ROOT" ]; then
    [ "$(id -u)" = 0 ] || die "$EX_NOPERM" "run as root"
  fi
  mkdir -p "$INSTALL_STATE"
  step uninstall
  sys systemctl disable --now shelfd.service
  rm -f "$UNIT" "$ROOT/etc/systemd/system/multi-user.target.wants/shelfd.service"
  sys systemctl daemon-reload
  if [ -f "$UDEV_RULES" ]; then
    rm -f "$UDEV_RULES"
    sys udevadm control --reload
  fi
  rm -f "$BOOT/gondola.txt" "$BOOT"/overlays/gondola-*.dtbo
  if [ -f "$BOOT/config.txt" ] && grep -qx 'include gondola.txt' "$BOOT/config.txt"; then
    cp -p "$BOOT/config.txt" "$BOOT/config.txt.gondola-bak-$STAMP"
    grep -vx -e 'include gondola.txt' -e '# Gondola shelf unit (systemd/install.sh)' \
      "$BOOT/config.txt" >"$BOOT/config.txt.gondola-tmp" || true
    mv -f "$BOOT/config.txt.gondola-tmp" "$BOOT/config.txt"
  fi
  rm -rf "$PREFIX"
  if [ "$PURGE" = 1 ]; then
    rm -rf "$STATE" "$CONF_DIR" "$CREDSTORE/shelfd-mqtt-password" "$CREDSTORE/shelfd-mqtt-key" "$SYSUSERS"
    if [ -n "$ROOT" ]; then
      sys userdel shelfd
    elif id shelfd >/dev/null 2>&1; then
      userdel shelfd
    fi
    say "removed, with config, credentials, state and the shelfd user"
  else
    say "removed; kept ${CONF_DIR#"$ROOT"}, ${STATE#"$ROOT"} (outbox, calibration) and the shelfd user (--purge removes them)"
  fi
  rm -f "$MARKER"
}

# An unexpected stop (not one of the refusals above) leaves the marker: say how to repair.
trap 'rc=$?; case $rc in 0|64|66|69|77|78) ;; *) say "stopped (exit $rc); run it again to finish or repair" ;; esac' EXIT

case "$ACTION" in
  install) do_install ;;
  uninstall) do_uninstall ;;
esac
