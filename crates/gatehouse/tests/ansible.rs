//! Ansible, the tool the gateway's users run most, through the real
//! gateway to ten real sshd targets: `ansible -m ping` and a playbook
//! (copy, template, command) with `-f 10`, over OpenSSH with
//! ControlMaster/ControlPersist on and off, in both inventory forms
//! (`ansible_user=alice:webNN` at the gateway, and ProxyJump with the
//! target's name as `ansible_host`), and over paramiko. Every module run
//! and every file Ansible moves must be in the audit trail under alice,
//! for each target.
//!
//! Ansible is isolated from the machine: its own `ANSIBLE_CONFIG`, local
//! and remote temp dirs, `HOME`, control path dir, no agent, and an
//! ssh_config of its own (`-F`) so that neither ssh nor its ProxyJump hop
//! reads or writes `~/.ssh`.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{stdout, Env};
use gatehouse_testkit as kit;
use serde_json::Value;

const TARGETS: usize = 10;
/// One Ansible run over ten hosts; generous for a loaded 2-core machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(150);

fn names() -> Vec<String> {
    (1..=TARGETS).map(|i| format!("web{i:02}")).collect()
}

/// How Ansible reaches the targets.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Form {
    /// `ansible_user=alice:webNN`, `ansible_host` the gateway.
    User,
    /// `-o ProxyJump=alice@gw`, `ansible_host=webNN`, the login as user.
    ProxyJump,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Conn {
    /// OpenSSH with Ansible's default `ControlMaster=auto ControlPersist=60s`.
    SshControlMaster,
    /// OpenSSH with `ANSIBLE_SSH_ARGS=""`: a new connection per command.
    SshNoControlMaster,
    /// `-c paramiko`.
    Paramiko,
}

/// Ansible's working directory for one test: config, temp dirs, home,
/// inventories, playbook and the files it copies.
struct Ansible {
    root: PathBuf,
    key: PathBuf,
    login: String,
}

impl Ansible {
    fn new(env: &Env) -> Ansible {
        let root = env.dir.path().join("ansible");
        for d in ["home", "tmp", "remote_tmp", "cp", "files", "out"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for name in names() {
            std::fs::create_dir_all(root.join("out").join(name)).unwrap();
        }
        std::fs::write(
            root.join("ansible.cfg"),
            "[defaults]\nretry_files_enabled = False\nnocolor = True\ninterpreter_python = /usr/bin/python3\n",
        )
        .unwrap();
        std::fs::write(root.join("files/motd.txt"), "managed through gatehouse\n").unwrap();
        std::fs::write(
            root.join("files/greeting.j2"),
            "hello {{ inventory_hostname }} via {{ via }}\n",
        )
        .unwrap();
        std::fs::write(
            root.join("playbook.yml"),
            r#"- hosts: all
  gather_facts: false
  tasks:
    - name: copy a file
      copy:
        src: "{{ root }}/files/motd.txt"
        dest: "{{ root }}/out/{{ inventory_hostname }}/{{ tag }}-motd.txt"
    - name: template a file
      template:
        src: "{{ root }}/files/greeting.j2"
        dest: "{{ root }}/out/{{ inventory_hostname }}/{{ tag }}-greeting.txt"
    - name: run a command
      command: cat {{ root }}/out/{{ inventory_hostname }}/{{ tag }}-greeting.txt
      register: greeting
    - name: the command saw the template
      assert:
        that: greeting.stdout == "hello " + inventory_hostname + " via " + via
"#,
        )
        .unwrap();
        // The ProxyJump hop is a separate ssh that gets neither
        // --private-key nor the -o options; it does get -F, so its key
        // and known-hosts settings live here.
        std::fs::write(
            root.join("ssh_config"),
            format!(
                "Host *\n    IdentityFile {key}\n    IdentitiesOnly yes\n    BatchMode yes\n    StrictHostKeyChecking no\n    UserKnownHostsFile /dev/null\n    LogLevel ERROR\n",
                key = env.alice.private.display()
            ),
        )
        .unwrap();
        let a = Ansible {
            root,
            key: env.alice.private.clone(),
            login: env.login.clone(),
        };
        a.write_inventories(env.port);
        a
    }

    fn write_inventories(&self, port: u16) {
        let ssh_config = self.root.join("ssh_config");
        let mut user = String::from("[web]\n");
        for name in names() {
            user.push_str(&format!("{name} ansible_user=alice:{name}\n"));
        }
        user.push_str(&format!(
            "\n[web:vars]\nansible_host=127.0.0.1\nansible_port={port}\nansible_ssh_common_args='-F {}'\n",
            ssh_config.display()
        ));
        std::fs::write(self.root.join("user.ini"), user).unwrap();

        let mut jump = String::from("[web]\n");
        for name in names() {
            jump.push_str(&format!("{name} ansible_host={name}\n"));
        }
        jump.push_str(&format!(
            "\n[web:vars]\nansible_user={login}\nansible_ssh_common_args='-F {cfg} -o ProxyJump=alice@127.0.0.1:{port}'\n",
            login = self.login,
            cfg = ssh_config.display()
        ));
        std::fs::write(self.root.join("jump.ini"), jump).unwrap();
    }

    fn inventory(&self, form: Form) -> PathBuf {
        self.root.join(match form {
            Form::User => "user.ini",
            Form::ProxyJump => "jump.ini",
        })
    }

    /// `program args...` with the isolated environment for `conn`.
    fn command(&self, program: &str, form: Form, conn: Conn, args: &[&str]) -> Command {
        let mut c = Command::new(program);
        c.current_dir(&self.root)
            .env("ANSIBLE_CONFIG", self.root.join("ansible.cfg"))
            .env("ANSIBLE_LOCAL_TEMP", self.root.join("tmp"))
            .env("ANSIBLE_REMOTE_TEMP", self.root.join("remote_tmp"))
            .env("ANSIBLE_SSH_CONTROL_PATH_DIR", self.root.join("cp"))
            .env("ANSIBLE_HOST_KEY_CHECKING", "False")
            .env("ANSIBLE_PARAMIKO_RECORD_HOST_KEYS", "False")
            .env("ANSIBLE_PARAMIKO_LOOK_FOR_KEYS", "False")
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_FORCE_COLOR", "0")
            .env("HOME", self.root.join("home"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("ANSIBLE_SSH_ARGS")
            .arg("-i")
            .arg(self.inventory(form))
            .arg("--private-key")
            .arg(&self.key)
            .args(["-f", &TARGETS.to_string()]);
        match conn {
            Conn::SshControlMaster => {
                c.args(["-c", "ssh"]);
            }
            Conn::SshNoControlMaster => {
                c.env("ANSIBLE_SSH_ARGS", "").args(["-c", "ssh"]);
            }
            Conn::Paramiko => {
                c.args(["-c", "paramiko"]);
            }
        }
        c.args(args);
        c
    }

    fn run(&self, what: &str, mut cmd: Command) -> kit::Output {
        let started = Instant::now();
        let program = format!("{:?}", cmd.get_program());
        cmd.env("ANSIBLE_LOG_PATH", self.root.join(format!("{what}.log")));
        let out = kit::run(cmd, RUN_TIMEOUT)
            .unwrap_or_else(|e| panic!("{what}: {program} did not finish: {e}"));
        eprintln!("{what}: {:.1?}", started.elapsed());
        out
    }
}

/// The audit trail's highest seq: events of one run are those after it.
fn mark(env: &Env) -> i64 {
    env.query("select coalesce(max(seq), 0) as m from events")[0]["m"]
        .as_i64()
        .unwrap_or(0)
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// What one run is: which inventory form, which connection, which verb.
struct Case<'a> {
    env: &'a Env,
    ansible: &'a Ansible,
    form: Form,
    conn: Conn,
}

impl Case<'_> {
    fn name(&self, verb: &str) -> String {
        format!("{verb} {:?} {:?}", self.form, self.conn)
    }

    /// `ansible all -m ping`: every target answers pong, and the trail
    /// holds the ping module's transfer and run for each.
    fn ping(&self) {
        let what = self.name("ping");
        let since = mark(self.env);
        let out = self.ansible.run(
            &what,
            self.ansible
                .command("ansible", self.form, self.conn, &["all", "-m", "ping"]),
        );
        let printed = stdout(&out);
        self.assert_ok(&what, &out, &printed);
        for name in names() {
            assert!(
                printed.contains(&format!("{name} | SUCCESS")),
                "{what}: {name} did not answer:\n{printed}"
            );
        }
        self.check_audit(&what, since, 1, &["ping"], &[]);
    }

    /// The playbook: copy, template, command (and a local assert on
    /// what the command printed). The files are on the targets and the
    /// trail holds every module, every file moved and every command.
    fn playbook(&self) {
        let what = self.name("playbook");
        let tag = format!("{:?}-{:?}", self.form, self.conn).to_lowercase();
        let via = "gatehouse";
        let extra = format!("root={} tag={tag} via={via}", self.ansible.root.display());
        let since = mark(self.env);
        let out = self.ansible.run(
            &what,
            self.ansible.command(
                "ansible-playbook",
                self.form,
                self.conn,
                &["-e", &extra, "playbook.yml"],
            ),
        );
        let printed = stdout(&out);
        self.assert_ok(&what, &out, &printed);
        let motd = std::fs::read(self.ansible.root.join("files/motd.txt")).unwrap();
        for name in names() {
            assert!(
                printed.lines().any(|l| l.starts_with(&name)
                    && l.contains("ok=4")
                    && l.contains("changed=3")
                    && l.contains("unreachable=0")
                    && l.contains("failed=0")),
                "{what}: recap for {name}:\n{printed}"
            );
            let out_dir = self.ansible.root.join("out").join(&name);
            assert_eq!(
                std::fs::read(out_dir.join(format!("{tag}-motd.txt"))).unwrap(),
                motd
            );
            let greeting = format!("hello {name} via {via}\n");
            assert_eq!(
                std::fs::read_to_string(out_dir.join(format!("{tag}-greeting.txt"))).unwrap(),
                greeting
            );
        }
        // copy and template each: stat the destination, send the source,
        // run the copy module; then the command module.
        self.check_audit(
            &what,
            since,
            3,
            &["stat", "copy", "stat", "copy", "command"],
            &[motd.len(), "hello web01 via gatehouse\n".len()],
        );
    }

    fn assert_ok(&self, what: &str, out: &kit::Output, printed: &str) {
        assert_eq!(
            out.code,
            Some(0),
            "{what} failed:\n{printed}\n{}\n--- gateway log\n{}",
            out.stderr,
            self.env.gateway_log()
        );
    }

    /// For each target, in the events after `since`: every module in
    /// `modules` was sent over SFTP (`sftp.open`/`sftp.close`, write, its
    /// size) and then run (`command`, `/usr/bin/python3 <that file>`), and
    /// each of `sources` was sent as an Ansible `source` file of that size
    /// (the sizes differ by at most the target name's length), all under
    /// alice, the target and the login; nothing was refused; sessions are
    /// shared under ControlMaster, one per command without it and one per
    /// task (`tasks` of them reach the targets) with paramiko.
    fn check_audit(
        &self,
        what: &str,
        since: i64,
        tasks: usize,
        modules: &[&str],
        sources: &[usize],
    ) {
        let env = self.env;
        let login = self.ansible.login.as_str();
        // The run's events, once the last transfer of every target is in
        // (transfer events are written behind the data path).
        let want_closes = modules.len() + sources.len();
        let mut events = Vec::new();
        for _ in 0..100 {
            events = env.query(&format!(
                "select seq, type, user, target, login, result, reason, session_id, \
                 json_extract(details, '$.path') as path, json_extract(details, '$.mode') as mode, \
                 json_extract(details, '$.bytes_written') as written, \
                 json_extract(details, '$.via') as via \
                 from events where seq > {since} order by seq"
            ));
            let complete = names().iter().all(|name| {
                events
                    .iter()
                    .filter(|e| text(&e["type"]) == "sftp.close" && text(&e["target"]) == name)
                    .count()
                    >= want_closes
            });
            if complete {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let all_commands = env.query(&format!(
            "select c.user, c.target, c.login, c.command, c.source, c.result \
             from commands c join events e on e.id = c.id where e.seq > {since} order by e.seq"
        ));
        let mut types = std::collections::BTreeMap::<&str, usize>::new();
        for e in &events {
            *types.entry(text(&e["type"])).or_default() += 1;
        }
        eprintln!("{what}: event types {types:?}");

        // Nothing in the run was refused or failed.
        // (paramiko drops its connection right after closing a channel;
        // that must not read as a lost target either.)
        let bad: Vec<&Value> = events
            .iter()
            .filter(|e| {
                text(&e["result"]) != "success"
                    || [
                        "access.denied",
                        "command.denied",
                        "command.failed",
                        "auth.failure",
                    ]
                    .contains(&text(&e["type"]))
            })
            .collect();
        assert!(bad.is_empty(), "{what}: refusals in the trail: {bad:?}");
        // Every event of the run that names a target names alice.
        let others: Vec<&Value> = events
            .iter()
            .filter(|e| !e["target"].is_null() && text(&e["user"]) != "alice")
            .collect();
        assert!(
            others.is_empty(),
            "{what}: events not under alice: {others:?}"
        );

        for name in names() {
            let of = |kind: &str| -> Vec<&Value> {
                events
                    .iter()
                    .filter(|e| text(&e["type"]) == kind && text(&e["target"]) == name)
                    .collect()
            };
            let commands: Vec<&Value> = all_commands
                .iter()
                .filter(|c| text(&c["target"]) == name)
                .collect();
            assert!(!commands.is_empty(), "{what}: {name}: no commands");
            for c in &commands {
                assert_eq!(text(&c["user"]), "alice", "{what}: {c}");
                assert_eq!(text(&c["login"]), login, "{what}: {c}");
                assert_eq!(text(&c["source"]), "exec", "{what}: {c}");
            }
            let commands: Vec<&str> = commands.iter().map(|c| text(&c["command"])).collect();
            let closes = of("sftp.close");
            for c in &closes {
                assert_eq!(text(&c["login"]), login, "{what}: {c}");
                assert_eq!(text(&c["mode"]), "write", "{what}: {c}");
            }
            let opens: BTreeSet<&str> = of("sftp.open").iter().map(|e| text(&e["path"])).collect();

            // Each module: sent whole (open and close, its bytes) and run.
            let mut sent_modules = Vec::new();
            for c in &closes {
                let path = text(&c["path"]);
                let Some(file) = path.rsplit('/').next() else {
                    continue;
                };
                if let Some(module) = file
                    .strip_prefix("AnsiballZ_")
                    .and_then(|f| f.strip_suffix(".py"))
                {
                    assert!(
                        opens.contains(path),
                        "{what}: {name}: no sftp.open of {path}"
                    );
                    assert!(c["written"].as_u64().unwrap_or(0) > 10_000, "{what}: {c}");
                    let run = format!("/usr/bin/python3 {path} && sleep 0");
                    assert!(
                        commands.iter().any(|c| c.contains(&run)),
                        "{what}: {name}: {path} was sent but its run is not in the trail:\n{commands:#?}"
                    );
                    sent_modules.push(module.to_string());
                }
            }
            assert_eq!(
                sent_modules, modules,
                "{what}: {name}: modules sent over SFTP"
            );
            // Every module run in the trail is one whose file was sent.
            let runs = commands
                .iter()
                .filter(|c| c.contains("/usr/bin/python3 "))
                .count();
            assert_eq!(runs, modules.len(), "{what}: {name}: {commands:#?}");

            // The files the playbook moved.
            let sent_sources: Vec<u64> = closes
                .iter()
                .filter(|c| text(&c["path"]).ends_with("/source"))
                .map(|c| c["written"].as_u64().unwrap_or(0))
                .collect();
            assert_eq!(
                sent_sources.len(),
                sources.len(),
                "{what}: {name}: {closes:#?}"
            );
            for (got, want) in sent_sources.iter().zip(sources) {
                assert_eq!(*got as usize, *want, "{what}: {name}: source sizes");
            }

            // Connections: one shared by every command under
            // ControlMaster (none when an earlier run's master is reused),
            // without it one per command and per transfer; paramiko one per
            // task.
            let sessions = of("session.start").len();
            // Each of those connections was authenticated as alice for
            // this target: at the gateway in the user form, inside the
            // jump channel in the ProxyJump form.
            let via = match self.form {
                Form::User => "direct",
                Form::ProxyJump => "proxyjump",
            };
            let auths = of("auth.success")
                .iter()
                .filter(|e| text(&e["via"]) == via)
                .count();
            assert_eq!(auths, sessions, "{what}: {name}: auth.success via {via}");
            match self.conn {
                Conn::SshControlMaster => {
                    assert!(sessions <= 1, "{what}: {name}: {sessions} sessions")
                }
                Conn::Paramiko => assert_eq!(
                    sessions, tasks,
                    "{what}: {name}: one paramiko connection per task"
                ),
                Conn::SshNoControlMaster => assert_eq!(
                    sessions,
                    commands.len() + closes.len(),
                    "{what}: {name}: one session per command and transfer"
                ),
            }
        }
    }
}

/// `server_extra`: lines for the gateway's `[server]` section.
fn start(server_extra: &str) -> (Env, Vec<kit::Sshd>, Ansible) {
    let found = Command::new("ansible-playbook")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "ansible-playbook is not installed: apt-get install ansible-core python3-paramiko (scripts/deps.sh)"
    );
    let mut env = Env::start_server(server_extra, "");
    let sshds = env.add_web_targets(TARGETS);
    let ansible = Ansible::new(&env);
    (env, sshds, ansible)
}

#[test]
fn ansible_over_openssh_with_control_master() {
    let (env, _sshds, ansible) = start("");
    for form in [Form::User, Form::ProxyJump] {
        let case = Case {
            env: &env,
            ansible: &ansible,
            form,
            conn: Conn::SshControlMaster,
        };
        case.ping();
        case.playbook();
    }
}

#[test]
fn ansible_over_openssh_without_control_master() {
    // Every task opens a connection per host: ten forks at once from one
    // controller, against a share of three unauthenticated connections
    // per source. The others wait for a place instead of being refused.
    let (env, _sshds, ansible) = start("per_source_max_startups = 3\n");
    for form in [Form::User, Form::ProxyJump] {
        let case = Case {
            env: &env,
            ansible: &ansible,
            form,
            conn: Conn::SshNoControlMaster,
        };
        case.ping();
        // The playbook over ProxyJump runs with ControlMaster on; without
        // it, it adds a minute and a half of Ansible to the suite and
        // nothing the user form does not already check.
        if matches!(form, Form::User) {
            case.playbook();
        }
    }
    let floods = env.query("SELECT reason FROM events WHERE type = 'source.flood'");
    assert!(floods.is_empty(), "connections refused: {floods:?}");
}

#[test]
fn ansible_over_paramiko() {
    let (env, _sshds, ansible) = start("");
    let case = Case {
        env: &env,
        ansible: &ansible,
        form: Form::User,
        conn: Conn::Paramiko,
    };
    case.ping();
    case.playbook();
}
