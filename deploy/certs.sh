#!/usr/bin/env bash
# Certificates for the aibots.kz webhook endpoint (nginx on port 8443).
#
#   deploy/certs.sh build [DIR]   (make certs)      DIR defaults to certs
#       Reads the three files the CA delivers:
#           DIR/aibots_kz.crt        the server certificate
#           DIR/aibots.kz.key        its private key (unencrypted; mode 0600)
#           DIR/aibots_kz.ca-bundle  the intermediate certificate(s)
#       writes DIR/aibots_kz.chain.crt (the certificate followed by the bundle: what nginx
#       serves) and checks: the key matches the certificate, the chain verifies, the
#       certificate has not expired. Warns when it expires within 30 days, does not cover
#       aibots.kz, or the chain only verifies to a private root (DIR/ca.crt or $CA_FILE).
#       Exit status: 0 (warnings allowed), 1 on an error, 2 on bad usage.
#
#   deploy/certs.sh dev [DIR]     (make dev-certs)  DIR defaults to certs/dev
#       Makes a throw-away root CA, an intermediate CA and a server certificate for
#       aibots.kz, localhost, 127.0.0.1 and ::1, under the production file names (so the
#       nginx site works unchanged), plus DIR/ca.crt, the root to trust in clients
#       (curl --cacert DIR/ca.crt). The CA keys are deleted once the certificate is signed.
#       Then runs `build` on DIR.
#
#   deploy/certs.sh served [HOST:PORT] [--metrics FILE]   (aibots certs check, daily timer)
#       Reads the certificate nginx SERVES at HOST:PORT (default 127.0.0.1:8443, asking for
#       $DOMAIN by SNI), prints its expiry, warns when it expires within $WARN_DAYS days and
#       fails (exit 1) when it has expired or nothing answers. With --metrics, writes FILE
#       (atomically) in the Prometheus text format for the service's /metrics:
#           tls_certificate_expiry_timestamp_seconds   notAfter, Unix seconds
#           tls_certificate_checked_timestamp_seconds  when this check ran
#
# Environment: DOMAIN (default aibots.kz) is the name the certificate must cover;
# WARN_DAYS (default 30) is the expiry warning threshold; CA_FILE is a private root to
# verify the chain against when the public trust store does not.
set -euo pipefail

DOMAIN=${DOMAIN:-aibots.kz}
WARN_DAYS=${WARN_DAYS:-30}
CRT=aibots_kz.crt
KEY=aibots.kz.key
BUNDLE=aibots_kz.ca-bundle
CHAIN=aibots_kz.chain.crt

PROG=${0##*/}
WARNINGS=0
# Anything that fails without its own message still ends with one line saying what.
trap 'printf "%s: error: command failed (line %s): %s\n" "$PROG" "$LINENO" "$BASH_COMMAND" >&2' ERR

die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}

warn() {
    printf '%s: warning: %s\n' "$PROG" "$*" >&2
    WARNINGS=$((WARNINGS + 1))
}

info() {
    printf '%s: %s\n' "$PROG" "$*"
}

usage() {
    printf 'usage: %s build [DIR] | dev [DIR] | served [HOST:PORT] [--metrics FILE]\n' "$PROG" >&2
    exit 2
}

command -v openssl >/dev/null 2>&1 || die "openssl is not installed (apt-get install openssl)"

# The last non-empty line of a command's error output: openssl's own reason, on one line.
last_line() {
    grep -v '^[[:space:]]*$' | tail -n 1 | tr -d '\r'
}

# Print every certificate of a PEM file into separate files PREFIX.0, PREFIX.1, ...
# and echo how many there were.
split_pem() {
    local file=$1 prefix=$2
    awk -v prefix="$prefix" '
        /-----BEGIN CERTIFICATE-----/ { out = prefix "." (n + 0); n++; inside = 1 }
        inside { print > out }
        /-----END CERTIFICATE-----/ { inside = 0; close(out) }
        END { print n + 0 }
    ' "$file"
}

build() {
    local dir=${1:-certs}
    [[ -d $dir ]] || die "$dir is not a directory (put $CRT, $KEY and $BUNDLE there)"
    local f
    for f in "$CRT" "$KEY" "$BUNDLE"; do
        [[ -s $dir/$f ]] || die "$dir/$f is missing or empty (expected $CRT, $KEY and $BUNDLE in $dir)"
    done
    local crt=$dir/$CRT key=$dir/$KEY bundle=$dir/$BUNDLE chain=$dir/$CHAIN

    local work
    work=$(mktemp -d)
    # shellcheck disable=SC2064  # expand $work now: it is local to this function
    trap "rm -rf '$work'" EXIT

    # The certificate and the key must parse; an encrypted key would make nginx ask for a
    # passphrase at every start.
    openssl x509 -in "$crt" -noout 2>"$work/err" ||
        die "$crt is not a PEM certificate: $(last_line <"$work/err")"
    if grep -q 'ENCRYPTED' "$key"; then
        die "$key is encrypted; nginx needs it without a passphrase (openssl pkey -in $key -out $key.plain)"
    fi
    openssl pkey -in "$key" -noout -passin pass: 2>"$work/err" ||
        die "$key is not a PEM private key: $(last_line <"$work/err")"

    # The key matches the certificate when their public keys are the same (RSA or EC alike).
    openssl x509 -in "$crt" -noout -pubkey >"$work/crt.pub" 2>/dev/null
    openssl pkey -in "$key" -pubout -passin pass: >"$work/key.pub" 2>/dev/null
    cmp -s "$work/crt.pub" "$work/key.pub" ||
        die "$key does not match $crt (their public keys differ)"

    # Expired is an error; expiring soon is a warning.
    local end
    end=$(openssl x509 -in "$crt" -noout -enddate | cut -d= -f2)
    openssl x509 -in "$crt" -noout -checkend 0 >/dev/null || die "$crt expired on $end"
    if ! openssl x509 -in "$crt" -noout -checkend $((WARN_DAYS * 86400)) >/dev/null; then
        warn "$crt expires within $WARN_DAYS days (on $end): renew it"
    fi

    # The certificate must name the domain (subjectAltName, or a matching wildcard).
    if ! openssl x509 -in "$crt" -noout -checkhost "$DOMAIN" 2>/dev/null | grep -q 'does match'; then
        warn "$crt does not cover $DOMAIN (clients connecting to https://$DOMAIN:8443 will refuse it)"
    fi

    local count
    count=$(split_pem "$bundle" "$work/bundle")
    [[ $count -gt 0 ]] || die "$bundle holds no PEM certificate"

    # Chain: the certificate, then the bundle. awk 1 ends every file with a newline, so a
    # file without a final newline cannot glue two PEM markers onto one line.
    {
        awk 1 "$crt"
        awk 1 "$bundle"
    } >"$work/chain"

    # Each certificate of the chain should be issued by the next one.
    local total i subject issuer
    total=$(split_pem "$work/chain" "$work/link")
    for ((i = 0; i + 1 < total; i++)); do
        issuer=$(openssl x509 -in "$work/link.$i" -noout -issuer -nameopt RFC2253 | sed 's/^issuer=//')
        subject=$(openssl x509 -in "$work/link.$((i + 1))" -noout -subject -nameopt RFC2253 | sed 's/^subject=//')
        if [[ $issuer != "$subject" ]]; then
            warn "certificate $((i + 1)) of the chain is not followed by its issuer (expected '$issuer', found '$subject'): check the order in $bundle"
            break
        fi
    done

    # Verify: first against this host's public trust store; then against a private root.
    local private_root=${CA_FILE:-}
    if [[ -z $private_root && -s $dir/ca.crt ]]; then
        private_root=$dir/ca.crt
    fi
    if openssl verify -purpose sslserver -untrusted "$bundle" "$crt" >/dev/null 2>"$work/err"; then
        info "chain verifies to a publicly trusted root"
    elif [[ -n $private_root ]] &&
        openssl verify -purpose sslserver -CAfile "$private_root" -untrusted "$bundle" "$crt" \
            >/dev/null 2>"$work/err2"; then
        warn "chain verifies only to the private root $private_root (fine for tests; FAL will refuse it)"
    else
        die "chain does not verify: $(last_line <"$work/err")"
    fi

    install -m 0644 "$work/chain" "$chain"
    local mode
    mode=$(stat -c '%a' "$key")
    if [[ $mode != 600 && $mode != 400 ]]; then
        warn "$key has mode $mode; make it 0600 (chmod 600 $key)"
    fi

    info "wrote $chain ($total certificates; $CRT valid until $end)"
    info "nginx: ssl_certificate $CHAIN; ssl_certificate_key $KEY"
    if [[ $WARNINGS -gt 0 ]]; then
        info "done with $WARNINGS warning(s)"
    else
        info "done"
    fi
}

dev() {
    local dir=${1:-certs/dev}
    mkdir -p "$dir"
    local work
    work=$(mktemp -d)
    # shellcheck disable=SC2064  # expand $work now: it is local to this function
    trap "rm -rf '$work'" EXIT
    local old_umask
    old_umask=$(umask)
    umask 077

    # Extensions, one file per certificate kind.
    cat >"$work/root.ext" <<'EOF'
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
    cat >"$work/intermediate.ext" <<'EOF'
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
    cat >"$work/server.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:$DOMAIN, DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF

    local name
    for name in root intermediate server; do
        openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/$name.key" 2>/dev/null
    done

    openssl req -new -key "$work/root.key" -subj "/O=aibots dev/CN=aibots dev root CA (throw-away)" \
        -out "$work/root.csr"
    openssl x509 -req -in "$work/root.csr" -signkey "$work/root.key" -days 3650 -sha256 \
        -extfile "$work/root.ext" -out "$work/root.crt" 2>/dev/null

    openssl req -new -key "$work/intermediate.key" \
        -subj "/O=aibots dev/CN=aibots dev intermediate CA (throw-away)" -out "$work/intermediate.csr"
    openssl x509 -req -in "$work/intermediate.csr" -CA "$work/root.crt" -CAkey "$work/root.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days 1825 -sha256 \
        -extfile "$work/intermediate.ext" -out "$work/intermediate.crt" 2>/dev/null

    openssl req -new -key "$work/server.key" -subj "/O=aibots dev/CN=$DOMAIN" -out "$work/server.csr"
    openssl x509 -req -in "$work/server.csr" -CA "$work/intermediate.crt" \
        -CAkey "$work/intermediate.key" -set_serial "0x$(openssl rand -hex 16)" -days 365 -sha256 \
        -extfile "$work/server.ext" -out "$work/server.crt" 2>/dev/null

    umask "$old_umask"
    install -m 0644 "$work/server.crt" "$dir/$CRT"
    install -m 0600 "$work/server.key" "$dir/$KEY"
    install -m 0644 "$work/intermediate.crt" "$dir/$BUNDLE"
    install -m 0644 "$work/root.crt" "$dir/ca.crt"
    rm -rf "$work"
    trap - EXIT
    info "made a throw-away CA and a certificate for $DOMAIN, localhost, 127.0.0.1, ::1 in $dir"
    info "trust it in clients with: curl --cacert $dir/ca.crt --resolve $DOMAIN:8443:127.0.0.1 https://$DOMAIN:8443/health"
    build "$dir"
}

served() {
    local target=127.0.0.1:8443 metrics=""
    while [[ $# -gt 0 ]]; do
        case $1 in
        --metrics)
            [[ $# -ge 2 ]] || usage
            metrics=$2
            shift 2
            ;;
        *)
            target=$1
            shift
            ;;
        esac
    done
    local work
    work=$(mktemp -d)
    # shellcheck disable=SC2064  # expand $work now: it is local to this function
    trap "rm -rf '$work'" EXIT
    # The first certificate s_client prints is the server's own (the leaf), whatever follows.
    if ! openssl s_client -connect "$target" -servername "$DOMAIN" </dev/null \
        >"$work/session" 2>"$work/err" ||
        ! openssl x509 -in "$work/session" -noout >/dev/null 2>&1; then
        die "no certificate from $target: $(last_line <"$work/err")"
    fi
    openssl x509 -in "$work/session" -out "$work/served.crt"
    local end expiry now
    end=$(openssl x509 -in "$work/served.crt" -noout -enddate | cut -d= -f2)
    expiry=$(date -d "$end" +%s)
    now=$(date +%s)
    if [[ -n $metrics ]]; then
        {
            printf '# HELP tls_certificate_expiry_timestamp_seconds notAfter of the certificate served at %s, Unix seconds\n' "$target"
            printf '# TYPE tls_certificate_expiry_timestamp_seconds gauge\n'
            printf 'tls_certificate_expiry_timestamp_seconds %s\n' "$expiry"
            printf '# HELP tls_certificate_checked_timestamp_seconds When deploy/certs.sh served last read it, Unix seconds\n'
            printf '# TYPE tls_certificate_checked_timestamp_seconds gauge\n'
            printf 'tls_certificate_checked_timestamp_seconds %s\n' "$now"
        } >"$work/metrics"
        chmod 0644 "$work/metrics"
        # Same directory, then rename: a scrape never reads half a file.
        cp "$work/metrics" "$metrics.tmp"
        mv -f "$metrics.tmp" "$metrics"
    fi
    if [[ $expiry -le $now ]]; then
        die "the certificate served at $target expired on $end"
    fi
    local days=$(((expiry - now) / 86400))
    if [[ $days -lt $WARN_DAYS ]]; then
        warn "the certificate served at $target expires in $days days (on $end): renew it"
    fi
    info "the certificate served at $target is valid until $end ($days days)"
}

[[ $# -ge 1 ]] || usage
if [[ $1 == served ]]; then
    shift
    served "$@"
    exit 0
fi
[[ $# -le 2 ]] || usage
case $1 in
build) build "${2:-certs}" ;;
dev) dev "${2:-certs/dev}" ;;
-h | --help | help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    ;;
*) usage ;;
esac
