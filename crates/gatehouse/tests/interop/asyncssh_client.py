"""asyncssh through the Gatehouse gateway, one subcommand per interop case.

Run by crates/gatehouse/tests/interop.rs with the interop venv's python.
Every connection checks the gateway's host key against --known-hosts, uses
no agent and no ~/.ssh files, and each subcommand prints one JSON object on
stdout that the Rust test asserts on.
"""

import argparse
import asyncio
import json
import sys

import asyncssh


class Client(asyncssh.SSHClient):
    """Answers keyboard-interactive prompts (the TOTP code) with --code."""

    def __init__(self, code):
        self.code = code
        self.prompts = []

    def kbdint_auth_requested(self):
        return "" if self.code is not None else None

    def kbdint_challenge_received(self, name, instructions, lang, prompts):
        self.prompts.extend(p for p, _echo in prompts)
        return [self.code for _ in prompts]


async def connect(a, keys=None):
    keys = a.key if keys is None else keys
    holder = {}

    def factory():
        holder["client"] = Client(getattr(a, "code", None))
        return holder["client"]

    conn = await asyncssh.connect(
        "127.0.0.1",
        a.port,
        username=a.user,
        known_hosts=a.known_hosts,
        client_keys=keys,
        password=a.password,
        agent_path=None,
        config=[],
        client_factory=factory,
        login_timeout=30,
    )
    return conn, holder["client"]


def result(r):
    out = r.stdout if isinstance(r.stdout, str) else r.stdout.decode()
    err = r.stderr if isinstance(r.stderr, str) else r.stderr.decode()
    return {"stdout": out, "stderr": err, "exit": r.exit_status}


async def cmd_exec(a):
    conn, _ = await connect(a)
    async with conn:
        if a.stdin:
            r = await conn.run(a.command, stdin=a.stdin, encoding=None)
        else:
            r = await conn.run(a.command)
    return result(r)


async def cmd_shell(a):
    conn, _ = await connect(a)
    async with conn:
        proc = await conn.create_process(term_type="xterm", term_size=(100, 30))
        seen = ""
        # Type only once the shell prompts, as a person would.
        while not ("$ " in seen or "# " in seen):
            block = await asyncio.wait_for(proc.stdout.read(4096), 30)
            if not block:
                break
            seen += block
        proc.stdin.write(a.line + "\n")
        while a.expect not in seen:
            block = await asyncio.wait_for(proc.stdout.read(4096), 30)
            if not block:
                break
            seen += block
        proc.stdin.write("exit\n")
        rest = await asyncio.wait_for(proc.stdout.read(), 30)
        r = await proc.wait()
    return {"output": seen + rest, "exit": r.exit_status}


async def cmd_sftp(a):
    conn, _ = await connect(a)
    r = a.remote_dir
    async with conn:
        async with conn.start_sftp_client() as sftp:
            await sftp.put(a.local, r + "/a.bin")
            await sftp.rename(r + "/a.bin", r + "/b.bin")
            await sftp.get(r + "/b.bin", a.back)
            listing = sorted(await sftp.listdir(r))
            await sftp.remove(r + "/b.bin")
            after = sorted(await sftp.listdir(r))
    return {
        "listing": [n for n in listing if n not in (".", "..")],
        "after": [n for n in after if n not in (".", "..")],
    }


async def cmd_forward(a):
    conn, _ = await connect(a)
    async with conn:
        reader, writer = await conn.open_connection("127.0.0.1", a.to_port)
        writer.write(a.payload.encode())
        got = b""
        while len(got) < len(a.payload):
            block = await asyncio.wait_for(reader.read(4096), 30)
            if not block:
                break
            got += block
        writer.close()
    return {"echo": got.decode()}


async def cmd_mfa(a):
    conn, client = await connect(a)
    async with conn:
        r = await conn.run(a.command)
    out = result(r)
    out["prompts"] = client.prompts
    return out


async def cmd_two_channels(a):
    """Several channels, one after the other, on one connection: two
    commands, an SFTP session, then a command reading what SFTP wrote."""
    conn, _ = await connect(a)
    async with conn:
        first = await conn.run(a.first)
        second = await conn.run(a.second)
        async with conn.start_sftp_client() as sftp:
            await sftp.put(a.local, a.remote)
        third = await conn.run("sha256sum < " + a.remote)
    return {"runs": [result(first), result(second), result(third)]}


async def cmd_concurrent(a):
    """--count connections open at the same time, each running a command
    that outlives the others' start."""

    async def one(i):
        conn, _ = await connect(a)
        async with conn:
            r = await conn.run("sleep 1; echo conn-%d" % i)
        return result(r)

    runs = await asyncio.gather(*(one(i) for i in range(a.count)))
    return {"runs": list(runs)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--known-hosts", required=True)
    p.add_argument("--key", action="append", default=[])
    p.add_argument("--password")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("exec")
    e.add_argument("--command", required=True)
    e.add_argument("--stdin")
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
    t = sub.add_parser("two-channels")
    t.add_argument("--first", required=True)
    t.add_argument("--second", required=True)
    t.add_argument("--local", required=True)
    t.add_argument("--remote", required=True)
    c = sub.add_parser("concurrent")
    c.add_argument("--count", type=int, required=True)
    a = p.parse_args()
    handler = {
        "exec": cmd_exec,
        "shell": cmd_shell,
        "sftp": cmd_sftp,
        "forward": cmd_forward,
        "mfa": cmd_mfa,
        "two-channels": cmd_two_channels,
        "concurrent": cmd_concurrent,
    }[a.cmd]
    json.dump(asyncio.run(handler(a)), sys.stdout)


if __name__ == "__main__":
    main()
