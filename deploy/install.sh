#!/usr/bin/env bash
# Install (or upgrade) the aibots.kz webhook service and bot on a Debian/Ubuntu host.
# Idempotent: run it again after every update of the checkout; it keeps an existing
# environment file and certificates, and replaces the code, the units and the nginx site.
#
#   deploy/install.sh                  (make install, as root) install into this host
#   deploy/install.sh --root DIR       write the files under DIR only (a staging tree for a
#                                      look or a test): no packages, user, venv, chown,
#                                      systemctl or nginx; prints what it skipped
#   deploy/install.sh --dry-run        print what would be done, change nothing
#
# Layout:
#   /opt/aibots/app           the code (root-owned, read-only for the service)
#   /opt/aibots/venv          the virtual environment the units run
#   /etc/aibots/webhook.env   settings and secrets (mode 0600), made from .env.example once
#   /var/lib/aibots           state: the SQLite database (systemd StateDirectory=)
#   /etc/ssl/aibots/          aibots_kz.chain.crt and aibots.kz.key (from certs/, see certs/README.md)
#   /etc/systemd/system/      webhook.service, bot.service, aibots-certs.{service,timer},
#                             aibots-maintenance.{service,timer}
#   /etc/nginx/conf.d/aibots.kz.conf          http-level definitions both sites use
#   /etc/nginx/snippets/aibots.kz-error*.conf  nginx's own errors as JSON
#   /etc/nginx/sites-available/aibots.kz.conf (+ link in sites-enabled), /etc/nginx/aibots.kz.d/
#   (allow-list examples for FAL there, for Telegram in aibots.kz.d/telegram/)
#   Debian's default site (sites-enabled/default) is disabled: it would answer every other
#   name on port 80 with nginx's HTML page and version (KEEP_DEFAULT_SITE=1 keeps it).
#   /usr/local/sbin/aibots    runs `python -m service ...` as the service user with its settings
#
# Environment: CERTS_DIR (default: certs in the checkout) is where the built certificate
# chain and key are taken from; PYTHON (default python3, 3.11 or newer) makes the virtual
# environment; SKIP_APT=1 skips the apt-get step; KEEP_DEFAULT_SITE=1 leaves Debian's default
# nginx site enabled.
set -euo pipefail

PROG=${0##*/}
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CERTS_DIR=${CERTS_DIR:-$SRC/certs}
PYTHON=${PYTHON:-python3}
ROOT=""
DRY_RUN=0
SERVICE_USER=aibots
PACKAGES=(python3 python3-venv python3-pip nginx openssl ca-certificates)

APP=/opt/aibots/app
VENV=/opt/aibots/venv
ETC=/etc/aibots
ENV_FILE=/etc/aibots/webhook.env
STATE=/var/lib/aibots
SSL=/etc/ssl/aibots
UNITS=/etc/systemd/system
NGINX=/etc/nginx
CLI=/usr/local/sbin/aibots

die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}
say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
trap 'printf "%s: error: command failed (line %s): %s\n" "$PROG" "$LINENO" "$BASH_COMMAND" >&2' ERR

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit "${1:-0}"
}

while [[ $# -gt 0 ]]; do
    case $1 in
    --root)
        [[ $# -ge 2 ]] || die "--root needs a directory"
        ROOT=$(mkdir -p "$2" && cd "$2" && pwd)
        shift 2
        ;;
    --root=*)
        ROOT=$(mkdir -p "${1#--root=}" && cd "${1#--root=}" && pwd)
        shift
        ;;
    --dry-run | -n)
        DRY_RUN=1
        shift
        ;;
    -h | --help) usage 0 ;;
    *)
        printf '%s: unknown argument %s\n' "$PROG" "$1" >&2
        usage 2 >&2
        ;;
    esac
done

# "system" steps touch the host outside the file tree: skipped under --root.
STAGING=0
[[ -n $ROOT ]] && STAGING=1

# Run a command, or print it under --dry-run.
run() {
    if [[ $DRY_RUN -eq 1 ]]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# Run a command that changes the host itself; skipped (and said) when staging.
system() {
    if [[ $STAGING -eq 1 ]]; then
        printf '%s: skipped (--root):' "$PROG"
        printf ' %q' "$@"
        printf '\n'
    else
        run "$@"
    fi
}

# Owner options for install(1): none when staging (files stay owned by the caller).
owner() {
    if [[ $STAGING -eq 0 ]]; then
        printf -- '-o\n%s\n-g\n%s\n' "$1" "$2"
    fi
}

install_dir() { # MODE OWNER GROUP PATH
    local opts=()
    mapfile -t opts < <(owner "$2" "$3")
    run install -d -m "$1" "${opts[@]}" "$ROOT$4"
}

install_file() { # MODE OWNER GROUP SOURCE DEST
    local opts=()
    mapfile -t opts < <(owner "$2" "$3")
    run install -m "$1" "${opts[@]}" "$4" "$ROOT$5"
}

[[ -f $SRC/pyproject.toml && -d $SRC/service ]] || die "$SRC does not look like the aibots checkout"
if [[ $STAGING -eq 0 && $DRY_RUN -eq 0 && $EUID -ne 0 ]]; then
    die "run as root, or use --root DIR / --dry-run"
fi

# 1. Packages.
if [[ ${SKIP_APT:-0} != 1 ]]; then
    missing=()
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$pkg")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        say "installing packages: ${missing[*]}"
        system apt-get update
        system env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    else
        say "packages present: ${PACKAGES[*]}"
    fi
fi

if [[ $STAGING -eq 0 && $DRY_RUN -eq 0 ]]; then
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
        die "$PYTHON is missing or older than 3.11 (Ubuntu 22.04: install python3.11 and python3.11-venv, then PYTHON=python3.11 $0)"
fi

# 2. The service user: no login, no home of its own beyond the state directory.
if getent passwd "$SERVICE_USER" >/dev/null 2>&1; then
    say "user $SERVICE_USER exists"
else
    say "creating system user $SERVICE_USER"
    system useradd --system --user-group --home-dir "$STATE" --no-create-home \
        --shell /usr/sbin/nologin --comment "aibots.kz webhook service" "$SERVICE_USER"
fi

# 3. Directories.
install_dir 0755 root root /opt/aibots
install_dir 0750 root root "$ETC"
install_dir 0750 "$SERVICE_USER" "$SERVICE_USER" "$STATE"
install_dir 0750 root root "$SSL"
install_dir 0755 root root "$UNITS"
install_dir 0755 root root "$NGINX/conf.d"
install_dir 0755 root root "$NGINX/snippets"
install_dir 0755 root root "$NGINX/sites-available"
install_dir 0755 root root "$NGINX/sites-enabled"
install_dir 0755 root root "$NGINX/aibots.kz.d"
install_dir 0755 root root "$NGINX/aibots.kz.d/telegram"
install_dir 0755 root root /usr/local/sbin

# 4. The code: a fresh copy of the checkout (without local state, secrets and caches),
# swapped in whole so no file of an older version stays behind.
say "copying the code to $APP"
if [[ $DRY_RUN -eq 1 ]]; then
    run tar -C "$SRC" -cf - . '|' tar -C "$ROOT$APP.new" -xf -
else
    rm -rf "$ROOT$APP.new"
    mkdir -p "$ROOT$APP.new"
    tar -C "$SRC" \
        --exclude=./.git --exclude=./.venv --exclude=./var --exclude=./.env \
        --exclude=./certs --exclude=./build --exclude='*.egg-info' --exclude=__pycache__ \
        --exclude=.pytest_cache --exclude=.mypy_cache --exclude=.ruff_cache \
        --exclude=.hypothesis --exclude=./bench/results \
        -cf - . | tar -C "$ROOT$APP.new" --no-same-owner -xf -
    chmod -R u=rwX,go=rX "$ROOT$APP.new"
    rm -rf "$ROOT$APP.old"
    if [[ -e $ROOT$APP ]]; then mv "$ROOT$APP" "$ROOT$APP.old"; fi
    mv "$ROOT$APP.new" "$ROOT$APP"
    rm -rf "$ROOT$APP.old"
fi

# 5. The virtual environment, in a fixed place, and the app installed into it.
if [[ -x $ROOT$VENV/bin/python ]]; then
    say "virtual environment $VENV exists"
else
    say "creating the virtual environment $VENV"
    system "$PYTHON" -m venv "$VENV"
fi
system "$VENV/bin/python" -m pip install --quiet --upgrade pip
system "$VENV/bin/python" -m pip install --quiet --upgrade "$APP"

# 6. Settings: made once from .env.example, never overwritten (it holds the secrets).
if [[ -e $ROOT$ENV_FILE ]]; then
    say "keeping $ENV_FILE"
else
    say "creating $ENV_FILE (mode 0600): edit it, then start the services"
    # Made in a temporary file in both modes, so that --dry-run shows what would be written.
    tmp=$(mktemp)
    if [[ -f $SRC/.env.example ]]; then
        # A relative SQLite path would land under the working directory; the units'
        # own default (an absolute path in the state directory) is kept instead.
        sed -E 's|^(DATABASE_URL=sqlite:///)([^/].*)$|# \1\2  (relative: replaced by the line below)\nDATABASE_URL=sqlite:////var/lib/aibots/aisha.db|' \
            "$SRC/.env.example" >"$tmp"
    else
        printf '%s\n' \
            '# aibots.kz settings (systemd EnvironmentFile= syntax: NAME=value, # comments).' \
            'DATABASE_URL=sqlite:////var/lib/aibots/aisha.db' \
            'TELEGRAM_TOKEN=' \
            'FAL_KEY=' \
            'FAL_WEBHOOK_URL=https://aibots.kz:8443/api/v1/avatar/status_update' >"$tmp"
    fi
    if [[ $DRY_RUN -eq 1 ]]; then
        say "$ENV_FILE would hold: $(grep -E '^DATABASE_URL=' "$tmp" | tail -n 1) (and the rest of .env.example)"
    fi
    install_file 0600 root root "$tmp" "$ENV_FILE"
    rm -f "$tmp"
fi

# 7. The command-line wrapper and the systemd units.
install_file 0750 root root "$SRC/deploy/aibots" "$CLI"
install_file 0644 root root "$SRC/deploy/systemd/webhook.service" "$UNITS/webhook.service"
install_file 0644 root root "$SRC/deploy/systemd/bot.service" "$UNITS/bot.service"
install_file 0644 root root "$SRC/deploy/systemd/aibots-certs.service" "$UNITS/aibots-certs.service"
install_file 0644 root root "$SRC/deploy/systemd/aibots-certs.timer" "$UNITS/aibots-certs.timer"
install_file 0644 root root "$SRC/deploy/systemd/aibots-maintenance.service" "$UNITS/aibots-maintenance.service"
install_file 0644 root root "$SRC/deploy/systemd/aibots-maintenance.timer" "$UNITS/aibots-maintenance.timer"

# 8. Certificates: the chain and key that `deploy/certs.sh build` checked and wrote.
if [[ -s $CERTS_DIR/aibots_kz.chain.crt && -s $CERTS_DIR/aibots.kz.key ]]; then
    say "installing the certificate chain and key from $CERTS_DIR into $SSL"
    install_file 0644 root root "$CERTS_DIR/aibots_kz.chain.crt" "$SSL/aibots_kz.chain.crt"
    install_file 0600 root root "$CERTS_DIR/aibots.kz.key" "$SSL/aibots.kz.key"
    if [[ -s $CERTS_DIR/aibots_kz.ca-bundle ]]; then
        install_file 0644 root root "$CERTS_DIR/aibots_kz.ca-bundle" "$SSL/aibots_kz.ca-bundle"
    fi
elif [[ -s $ROOT$SSL/aibots_kz.chain.crt && -s $ROOT$SSL/aibots.kz.key ]]; then
    say "keeping the certificates in $SSL"
else
    warn "no certificate yet: put the three aibots.kz files in $CERTS_DIR, run 'make certs', run this again"
fi

# 9. nginx: the shared definitions and error pages (harmless without the site: every name
# starts with aibots_kz_), the sites, and the main site enabled only once its certificate is
# in place (nginx -t would fail without it).
install_file 0644 root root "$SRC/deploy/nginx/conf.d/aibots.kz.conf" "$NGINX/conf.d/aibots.kz.conf"
for snippet in "$SRC"/deploy/nginx/snippets/*.conf; do
    install_file 0644 root root "$snippet" "$NGINX/snippets/${snippet##*/}"
done
install_file 0644 root root "$SRC/deploy/nginx/aibots.kz.conf" "$NGINX/sites-available/aibots.kz.conf"
install_file 0644 root root "$SRC/deploy/nginx/aibots.kz-legacy-http.conf" "$NGINX/sites-available/aibots.kz-legacy-http.conf"
install_file 0644 root root "$SRC/deploy/nginx/fal-networks.conf" "$NGINX/aibots.kz.d/fal-networks.conf.example"
install_file 0644 root root "$SRC/deploy/nginx/telegram-networks.conf" "$NGINX/aibots.kz.d/telegram/telegram-networks.conf.example"
default_site=$ROOT$NGINX/sites-enabled/default
if [[ ${KEEP_DEFAULT_SITE:-0} != 1 && -L $default_site ]] &&
    [[ $(readlink "$default_site") == */sites-available/default ]]; then
    say "disabling Debian's default nginx site (KEEP_DEFAULT_SITE=1 keeps it)"
    run rm -f "$default_site"
fi
site_enabled=0
certs_ready=0
if [[ (-s $CERTS_DIR/aibots_kz.chain.crt && -s $CERTS_DIR/aibots.kz.key) ||
    (-s $ROOT$SSL/aibots_kz.chain.crt && -s $ROOT$SSL/aibots.kz.key) ]]; then
    certs_ready=1
fi
if [[ $certs_ready -eq 1 ]]; then
    link=$ROOT$NGINX/sites-enabled/aibots.kz.conf
    created_link=0
    if [[ ! -L $link ]]; then
        run ln -s ../sites-available/aibots.kz.conf "$link"
        created_link=1
    fi
    if [[ $STAGING -eq 1 ]]; then
        system nginx -t
        site_enabled=1
    elif run nginx -t; then
        site_enabled=1
        if systemctl is-active --quiet nginx 2>/dev/null; then
            run systemctl reload nginx
        else
            run systemctl enable --now nginx
        fi
    else
        [[ $created_link -eq 1 ]] && rm -f "$link"
        die "nginx -t failed (output above): the aibots.kz site was not enabled"
    fi
else
    warn "the nginx site is installed but not enabled (no certificate in $SSL)"
fi

# 10. systemd: the units, and the daily check of the served certificate once nginx serves
# one (the services are started by the operator once the settings are in place).
system systemctl daemon-reload
if [[ $site_enabled -eq 1 ]]; then
    system systemctl enable --now aibots-certs.timer
else
    say "aibots-certs.timer is installed, not enabled: nginx serves no certificate yet"
fi

if [[ $DRY_RUN -eq 1 ]]; then
    done_line="dry run, nothing was changed. After a real run, the next steps"
else
    done_line="installed. Next steps"
fi
cat <<EOF

$PROG: $done_line:
  1. Edit $ENV_FILE (TELEGRAM_TOKEN, FAL_KEY, DATABASE_URL for PostgreSQL, ...).
EOF
if [[ $site_enabled -eq 0 ]]; then
    cat <<EOF
  *  Certificates: copy aibots_kz.crt, aibots.kz.key, aibots_kz.ca-bundle into
     $CERTS_DIR, run 'make certs', then run this script again.
EOF
fi
cat <<EOF
  2. systemctl enable --now webhook      (after the old receiver is stopped)
     systemctl enable --now bot         (after the old bot is stopped: one poller per token)
     systemctl enable --now aibots-maintenance.timer   (daily retention, once settings are in)
     (after an upgrade or a change of $ENV_FILE: systemctl restart webhook bot)
  3. Check from this host (the unsigned test POST is accepted from loopback only):
     curl --resolve aibots.kz:8443:127.0.0.1 https://aibots.kz:8443/health
  4. journalctl -u webhook -f ; tail -f /var/log/nginx/aibots.kz.access.log
  5. Firewall: port 8443/tcp must be open (README, install step 1: ufw or nftables);
     FAL_WEBHOOK_URL must be https://aibots.kz:8443/api/v1/avatar/status_update
EOF
