//! Who runs a CLI action, for the audit trail.
//!
//! The administrator is the operating-system account that runs the
//! command (the real user id, looked up in the password database), not
//! `$USER`: anyone can run `USER=alice gatehouse sessions kill …`. When the
//! environment names someone else (`USER`/`LOGNAME`, or `SUDO_USER` under
//! sudo), that name is recorded too, as `claimed_user` / `sudo_user` in
//! the event's details, so the trail keeps both the fact and the claim.

/// The account behind a CLI action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// The OS account of the real user id (`uid:N` when it has no
    /// password-database entry).
    pub name: String,
    /// `$USER` (else `$LOGNAME`) when it differs from `name`.
    pub claimed_user: Option<String>,
    /// `$SUDO_USER` when set and different from `name`.
    pub sudo_user: Option<String>,
}

impl Operator {
    /// The control layer's actor for this OS account, with the claimed
    /// and sudo users recorded only where they differ from it.
    pub fn actor(self) -> gatehouse_control::Actor {
        let mut actor =
            gatehouse_control::Actor::operator(self.name, gatehouse_control::Channel::Cli);
        if let Some(c) = self.claimed_user {
            actor = actor.with("claimed_user", c);
        }
        if let Some(s) = self.sudo_user {
            actor = actor.with("sudo_user", s);
        }
        actor
    }
}

/// The operator of this process. Every CLI action that records who did
/// it calls this.
/// The control layer's actor for a command run by this OS account.
pub fn actor() -> gatehouse_control::Actor {
    current().actor()
}

pub fn current() -> Operator {
    let name = os_account();
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let claimed_user = env("USER")
        .or_else(|| env("LOGNAME"))
        .filter(|c| *c != name);
    let sudo_user = env("SUDO_USER").filter(|s| *s != name);
    Operator {
        name,
        claimed_user,
        sudo_user,
    }
}

/// The name of the real user id in the password database.
#[cfg(unix)]
fn os_account() -> String {
    // SAFETY: getuid cannot fail. getpwuid_r writes only into `pwd` and
    // `buf`, which outlive the call; `result` is either null or points
    // at `pwd`, whose `pw_name` points into `buf`.
    let uid = unsafe { libc::getuid() };
    let mut size = 1024usize;
    while size <= 1 << 20 {
        let mut buf = vec![0 as libc::c_char; size];
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc =
            unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
        if rc == libc::ERANGE {
            size *= 4;
            continue;
        }
        if rc == 0 && !result.is_null() && !pwd.pw_name.is_null() {
            let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
            let name = name.to_string_lossy().into_owned();
            if !name.is_empty() {
                return name;
            }
        }
        break;
    }
    format!("uid:{uid}")
}

#[cfg(not(unix))]
fn os_account() -> String {
    "unknown".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_os_account_is_the_password_database_name_of_the_uid() {
        let name = os_account();
        assert!(!name.is_empty());
        // `id -un` asks the same database.
        if let Ok(out) = std::process::Command::new("id").arg("-un").output() {
            if out.status.success() {
                assert_eq!(name, String::from_utf8_lossy(&out.stdout).trim());
            }
        }
    }

    #[test]
    fn annotate_adds_only_what_differs() {
        let op = Operator {
            name: "root".into(),
            claimed_user: Some("alice".into()),
            sudo_user: None,
        };
        let actor = op.actor();
        assert_eq!(actor.name, "root");
        assert_eq!(actor.extra["claimed_user"], "alice");
        assert!(!actor.extra.contains_key("sudo_user"));
    }
}
