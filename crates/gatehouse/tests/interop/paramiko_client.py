"""paramiko through the Gatehouse gateway, one subcommand per interop case.

Run by crates/gatehouse/tests/interop.rs with the interop venv's python.
Every subcommand verifies the gateway's host key against --known-hosts
(RejectPolicy: an unknown key is an error) and prints one JSON object on
stdout that the Rust test asserts on.
"""

import argparse
import codecs
import json
import socket
import sys

import paramiko


def connect(a, **extra):
    c = paramiko.SSHClient()
    c.load_host_keys(a.known_hosts)
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    kw = dict(
        hostname="127.0.0.1",
        port=a.port,
        username=a.user,
        timeout=30,
        banner_timeout=30,
        auth_timeout=30,
        allow_agent=False,
        look_for_keys=False,
    )
    if a.key:
        kw["key_filename"] = a.key
    if a.password is not None:
        kw["password"] = a.password
    kw.update(extra)
    c.connect(**kw)
    return c


def run(t, command, stdin_path=None, env=()):
    """exec `command` on transport t, streaming the file at stdin_path to
    its stdin; `env`: NAME=VALUE requests sent first."""
    chan = t.open_session()
    for pair in env:
        name, _, value = pair.partition("=")
        chan.set_environment_variable(name, value)
    chan.exec_command(command)
    if stdin_path:
        with open(stdin_path, "rb") as f:
            while True:
                block = f.read(64 * 1024)
                if not block:
                    break
                chan.sendall(block)
    return finish(chan)


def finish(chan):
    """Closes chan's input and reports what comes back."""
    chan.shutdown_write()
    out = bytearray()
    err = bytearray()
    while True:
        block = chan.recv(65536)
        if not block:
            break
        out += block
    while chan.recv_stderr_ready():
        err += chan.recv_stderr(65536)
    status = chan.recv_exit_status()
    chan.close()
    return {"stdout": out.decode(), "stderr": err.decode(), "exit": status}


def cmd_exec(a):
    c = connect(a)
    r = run(c.get_transport(), a.command, a.stdin, a.env)
    c.close()
    return r


def cmd_subsystem(a):
    """Asks for subsystem --name and reports what comes back."""
    c = connect(a)
    chan = c.get_transport().open_session()
    chan.invoke_subsystem(a.name)
    r = finish(chan)
    c.close()
    return r


def cmd_shell(a):
    c = connect(a)
    chan = c.invoke_shell(term="xterm", width=100, height=30)
    chan.settimeout(30)
    seen = bytearray()
    # Type only once the shell prompts, as a person would.
    while not (b"$ " in seen or b"# " in seen):
        block = chan.recv(4096)
        if not block:
            break
        seen += block
    chan.sendall(a.line.encode() + b"\n")
    while a.expect.encode() not in seen:
        block = chan.recv(4096)
        if not block:
            break
        seen += block
    chan.sendall(b"exit\n")
    while True:
        block = chan.recv(4096)
        if not block:
            break
        seen += block
    status = chan.recv_exit_status()
    c.close()
    return {"output": seen.decode(errors="replace"), "exit": status}


def cmd_sftp(a):
    c = connect(a)
    s = c.open_sftp()
    r = a.remote_dir
    s.put(a.local, r + "/a.bin")
    s.rename(r + "/a.bin", r + "/b.bin")
    s.get(r + "/b.bin", a.back)
    listing = sorted(s.listdir(r))
    s.remove(r + "/b.bin")
    after = sorted(s.listdir(r))
    s.close()
    c.close()
    return {"listing": listing, "after": after}


def cmd_forward(a):
    c = connect(a)
    chan = c.get_transport().open_channel(
        "direct-tcpip", ("127.0.0.1", a.to_port), ("127.0.0.1", 0)
    )
    chan.settimeout(30)
    chan.sendall(a.payload.encode())
    got = bytearray()
    while len(got) < len(a.payload):
        block = chan.recv(4096)
        if not block:
            break
        got += block
    chan.close()
    c.close()
    return {"echo": got.decode()}


def cmd_mfa(a):
    """Key, then the TOTP code over keyboard-interactive. SSHClient.connect
    answers a partial success with auth_interactive_dumb (a prompt on the
    terminal), so this drives the Transport the way paramiko's docs do."""
    sock = socket.create_connection(("127.0.0.1", a.port), timeout=30)
    t = paramiko.Transport(sock)
    t.start_client(timeout=30)
    hk = paramiko.HostKeys(a.known_hosts)
    key = t.get_remote_server_key()
    if not hk.check("[127.0.0.1]:%d" % a.port, key):
        raise SystemExit("gateway host key not in known_hosts")
    pkey = paramiko.PKey.from_path(a.key[0])
    allowed = t.auth_publickey(a.user, pkey)
    prompts_seen = []

    def handler(title, instructions, prompts):
        prompts_seen.extend(p for p, _echo in prompts)
        return [a.code for _ in prompts]

    rest = t.auth_interactive(a.user, handler)
    r = run(t, a.command)
    t.close()
    r.update({"after_key": allowed, "after_code": rest, "prompts": prompts_seen})
    return r


def cmd_login(a):
    """Only the login: whether the gateway let the user in."""
    try:
        c = connect(a)
    except paramiko.AuthenticationException as e:
        return {"authenticated": False, "error": str(e)}
    c.close()
    return {"authenticated": True}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument(
        "--escapes",
        action="store_true",
        help="--user and --command hold Python escapes (\\x00: a NUL character)",
    )
    p.add_argument("--known-hosts", required=True)
    p.add_argument("--key", action="append", default=[])
    p.add_argument("--password")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("exec")
    e.add_argument("--command", required=True)
    e.add_argument("--stdin")
    e.add_argument("--env", action="append", default=[], help="NAME=VALUE")
    b = sub.add_parser("subsystem")
    b.add_argument("--name", required=True)
    s = sub.add_parser("shell")
    s.add_argument("--line", required=True)
    s.add_argument("--expect", required=True)
    f = sub.add_parser("sftp")
    f.add_argument("--local", required=True)
    f.add_argument("--remote-dir", required=True)
    f.add_argument("--back", required=True)
    w = sub.add_parser("forward")
    w.add_argument("--to-port", type=int, required=True)
    w.add_argument("--payload", required=True)
    m = sub.add_parser("mfa")
    m.add_argument("--code", required=True)
    m.add_argument("--command", required=True)
    sub.add_parser("login")
    a = p.parse_args()
    if a.escapes:
        a.user = codecs.decode(a.user, "unicode_escape")
        for field in ("command", "name"):
            if getattr(a, field, None) is not None:
                setattr(a, field, codecs.decode(getattr(a, field), "unicode_escape"))
        if getattr(a, "env", None):
            a.env = [codecs.decode(e, "unicode_escape") for e in a.env]
    result = {
        "login": cmd_login,
        "exec": cmd_exec,
        "shell": cmd_shell,
        "sftp": cmd_sftp,
        "forward": cmd_forward,
        "mfa": cmd_mfa,
        "subsystem": cmd_subsystem,
    }[a.cmd](a)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
