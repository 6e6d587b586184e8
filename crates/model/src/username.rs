//! How a user names a target in the SSH username (see README.md):
//! `alice` (menu), `alice:web01`, `alice:root@web01`.

/// The longest SSH username accepted. OpenSSH itself caps user names far
/// lower in practice; anything longer is hostile or a mistake.
pub const MAX_USERNAME_LEN: usize = 256;
/// Gatehouse user, target and login names: 1–64 of `[A-Za-z0-9._-]`.
pub const MAX_NAME_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The Gatehouse user (a person).
    pub user: String,
    /// The target named, or `None` for the menu / gateway commands.
    pub target: Option<String>,
    /// The login on the target, when given explicitly.
    pub login: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsernameError {
    #[error("username is {len} bytes long; the limit is {MAX_USERNAME_LEN}")]
    TooLong { len: usize },
    #[error("username is empty; connect as USER, USER:TARGET or USER:LOGIN@TARGET")]
    Empty,
    #[error("malformed username {0:?}: connect as USER, USER:TARGET or USER:LOGIN@TARGET")]
    Malformed(String),
    #[error("invalid {what} {value:?} in username: use 1-64 letters, digits, '.', '_' or '-'")]
    BadName { what: &'static str, value: String },
}

impl ConnectRequest {
    /// Parses the username the SSH client sent.
    pub fn parse(raw: &str) -> Result<ConnectRequest, UsernameError> {
        if raw.len() > MAX_USERNAME_LEN {
            return Err(UsernameError::TooLong { len: raw.len() });
        }
        if raw.is_empty() {
            return Err(UsernameError::Empty);
        }
        let malformed = || UsernameError::Malformed(raw.to_string());
        let (user, rest) = match raw.split_once(':') {
            None => (raw, None),
            Some((u, r)) => (u, Some(r)),
        };
        check_name("user", user)?;
        let Some(rest) = rest else {
            return Ok(ConnectRequest {
                user: user.to_string(),
                target: None,
                login: None,
            });
        };
        if rest.contains(':') {
            return Err(malformed());
        }
        let (login, target) = match rest.split_once('@') {
            None => (None, rest),
            Some((l, t)) => {
                if t.contains('@') {
                    return Err(malformed());
                }
                check_name("login", l)?;
                (Some(l.to_string()), t)
            }
        };
        check_name("target", target)?;
        Ok(ConnectRequest {
            user: user.to_string(),
            target: Some(target.to_string()),
            login,
        })
    }
}

/// True for names Gatehouse accepts for users, targets, logins and roles.
pub fn is_valid_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_NAME_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_name(what: &'static str, value: &str) -> Result<(), UsernameError> {
    if is_valid_name(value) {
        Ok(())
    } else {
        Err(UsernameError::BadName {
            what,
            value: value.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(user: &str, target: Option<&str>, login: Option<&str>) -> ConnectRequest {
        ConnectRequest {
            user: user.into(),
            target: target.map(Into::into),
            login: login.map(Into::into),
        }
    }

    #[test]
    fn plain_user_means_menu() {
        assert_eq!(
            ConnectRequest::parse("alice").unwrap(),
            req("alice", None, None)
        );
    }

    #[test]
    fn user_and_target() {
        assert_eq!(
            ConnectRequest::parse("alice:web01").unwrap(),
            req("alice", Some("web01"), None)
        );
    }

    #[test]
    fn user_login_and_target() {
        assert_eq!(
            ConnectRequest::parse("alice:root@web-01.prod").unwrap(),
            req("alice", Some("web-01.prod"), Some("root"))
        );
    }

    #[test]
    fn malformed_usernames_are_rejected_with_the_reason() {
        assert_eq!(ConnectRequest::parse(""), Err(UsernameError::Empty));
        assert!(matches!(
            ConnectRequest::parse("alice:"),
            Err(UsernameError::BadName { what: "target", .. })
        ));
        assert!(matches!(
            ConnectRequest::parse(":web01"),
            Err(UsernameError::BadName { what: "user", .. })
        ));
        assert!(matches!(
            ConnectRequest::parse("alice:@web01"),
            Err(UsernameError::BadName { what: "login", .. })
        ));
        assert!(matches!(
            ConnectRequest::parse("alice:a:b"),
            Err(UsernameError::Malformed(_))
        ));
        assert!(matches!(
            ConnectRequest::parse("alice:r@t@x"),
            Err(UsernameError::Malformed(_))
        ));
        assert!(matches!(
            ConnectRequest::parse("al ice:web01"),
            Err(UsernameError::BadName { what: "user", .. })
        ));
        assert!(matches!(
            ConnectRequest::parse("alice:web01\u{0}"),
            Err(UsernameError::BadName { .. })
        ));
    }

    #[test]
    fn huge_usernames_are_rejected_before_parsing() {
        let huge = "a".repeat(10_000);
        assert_eq!(
            ConnectRequest::parse(&huge),
            Err(UsernameError::TooLong { len: 10_000 })
        );
    }
}
