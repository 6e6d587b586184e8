#!/usr/bin/env bash
set -euo pipefail
# Installs what cargo does not (OpenSSH server and client, rsync, tmux,
# sqlite3, asciinema, vim, less; Dropbear's and PuTTY's clients and lftp for
# the interop test; HAProxy for the load-balancer test) with apt-get when missing and running as root, and
# starts the local PostgreSQL server when it is installed but down.
# Run by scripts/test.sh and bench/run.sh.
need=()
for pair in sshd:openssh-server ssh:openssh-client scp:openssh-client sftp:openssh-client \
            rsync:rsync tmux:tmux sqlite3:sqlite3 asciinema:asciinema vi:vim-tiny less:less \
            dbclient:dropbear-bin plink:putty-tools psftp:putty-tools pscp:putty-tools lftp:lftp \
            haproxy:haproxy; do
    bin=${pair%%:*}; pkg=${pair#*:}
    if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ]; then
        need+=("$pkg")
    fi
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing: ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "missing programs; install: ${need[*]}" >&2
        exit 1
    fi
fi

# Ansible for crates/gatehouse/tests/ansible.rs: Debian's ansible-core, and
# paramiko for the same /usr/bin/python3 (its paramiko connection plugin).
if ! command -v ansible-playbook >/dev/null 2>&1 || ! /usr/bin/python3 -c 'import paramiko' 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing: ansible-core python3-paramiko"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ansible-core python3-paramiko >/dev/null
    else
        echo "missing programs; install: ansible-core python3-paramiko" >&2
        exit 1
    fi
fi

# paramiko and asyncssh from PyPI for crates/gatehouse/tests/interop.rs, in
# a venv of their own (target/interop-venv) at the versions pinned in
# crates/gatehouse/tests/interop/requirements.txt; redone when that changes.
venv="$(dirname "$0")/../target/interop-venv"
req="$(dirname "$0")/../crates/gatehouse/tests/interop/requirements.txt"
if ! cmp -s "$req" "$venv/requirements.txt"; then
    echo "installing: $(tr '\n' ' ' < "$req")into target/interop-venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        fi
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
    cp "$req" "$venv/requirements.txt"
fi

# The PostgreSQL store tests need a server on 127.0.0.1:5432 (user postgres).
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
    if [ "$(id -u)" = 0 ] && command -v pg_ctlcluster >/dev/null; then
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    fi
fi

bash "$(dirname "$0")/browser-deps.sh"

# s3s-fs, an S3-protocol server over a directory that checks SigV4, for
# crates/gatehouse/tests/s3.rs (recordings in object storage), into
# target/s3s. 0.14.1 is the last release for rustc 1.95; about 3 minutes
# to build on 2 cores.
s3s="$(dirname "$0")/../target/s3s"
if [ ! -x "$s3s/bin/s3s-fs" ]; then
    echo "installing: s3s-fs 0.14.1 into target/s3s"
    cargo install -q --locked s3s-fs@0.14.1 --features binary --root "$s3s"
fi

# oidc-provider (OpenID Certified), the identity provider the single
# sign-on tests start (tests/oidc/provider.mjs), at the version pinned in
# tests/oidc/package.json: `npm ci` into target/oidc when missing or when
# tests/oidc/package-lock.json changed (its copy there is the stamp).
oidc_src="$(dirname "$0")/../tests/oidc"
oidc="$(dirname "$0")/../target/oidc"
if [ ! -d "$oidc/node_modules/oidc-provider" ] || ! cmp -s "$oidc_src/package-lock.json" "$oidc/package-lock.json"; then
    echo "installing: oidc-provider ($(sed -n 's/.*"oidc-provider": *"\([^"]*\)".*/\1/p' "$oidc_src/package.json" | head -1)) into target/oidc"
    mkdir -p "$oidc"
    cp "$oidc_src/package.json" "$oidc_src/package-lock.json" "$oidc/"
    (cd "$oidc" && npm ci --silent --no-audit --no-fund)
fi

# The sink tests (crates/gatehouse/tests/sinks.rs): rsyslog as the syslog
# receiver, and botocore from PyPI (pinned in tests/sinks/requirements.txt,
# in target/sinks-venv) for the CloudTrail Lake receiver that checks SigV4.
if ! command -v rsyslogd >/dev/null 2>&1 && [ ! -x /usr/sbin/rsyslogd ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing: rsyslog"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rsyslog >/dev/null
    else
        echo "missing programs; install: rsyslog" >&2
        exit 1
    fi
fi
sinks_venv="$(dirname "$0")/../target/sinks-venv"
sinks_req="$(dirname "$0")/../tests/sinks/requirements.txt"
if ! cmp -s "$sinks_req" "$sinks_venv/requirements.txt"; then
    echo "installing: $(tr '\n' ' ' < "$sinks_req")into target/sinks-venv"
    python3 -m venv "$sinks_venv"
    "$sinks_venv/bin/pip" install -q --disable-pip-version-check -r "$sinks_req"
    cp "$sinks_req" "$sinks_venv/requirements.txt"
fi
