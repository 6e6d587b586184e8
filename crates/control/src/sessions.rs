//! Ending a session and reading its recording.

use gatehouse_model::{ConsolePermission, EventType, Outcome, Severity};
use gatehouse_store::recordings::valid_recording_id;

use crate::{Authority, Control, ControlError, Result};

impl Control<'_> {
    /// Asks whichever node runs session `id` to end it (nodes carry out
    /// kill requests from the store and write `session.killed`).
    pub async fn kill_session(&self, id: &str, reason: &str) -> Result<()> {
        if self.actor.authority == Authority::User {
            let visible = self
                .store
                .session_owner(id)
                .await?
                .is_some_and(|s| self.may_view(&s));
            if !visible {
                return Err(ControlError::NotFound(format!(
                    "no session {id} you may see"
                )));
            }
            self.permit(ConsolePermission::Kill, "end sessions")?;
        }
        if !self.store.session_running(id).await? {
            return Err(ControlError::NotFound(format!(
                "no running session {id}; {}",
                self.hint("sessions list --active", "sessions")
            )));
        }
        let ev = self
            .event(
                EventType::SESSION_KILL_REQUESTED,
                Severity::Warn,
                Outcome::Success,
                serde_json::json!({}),
            )
            .session(id)
            .reason(reason);
        self.audit(ev).await?;
        self.store
            .request_kill(id, reason, &self.actor.name)
            .await?;
        Ok(())
    }

    /// The recording id of session `id`, for `access` (`play`, `export`,
    /// `watch`), after checking that the actor may read it and writing the
    /// `recording.access` event. While a session runs its recording is
    /// named after the session. An operator may read every recording; a
    /// Gatehouse user only their own sessions'. A refusal is audited too.
    pub async fn open_recording(&self, id: &str, access: &str) -> Result<String> {
        let s = self.store.session_owner(id).await?.ok_or_else(|| {
            ControlError::NotFound(format!(
                "no session {id}; {}",
                self.hint("sessions list", "sessions")
            ))
        })?;
        let rec = match (s.recording_id.clone(), s.ended) {
            (Some(rec), _) => rec,
            (None, false) => id.to_string(),
            (None, true) => {
                return Err(ControlError::NotFound(format!(
                    "session {id} has no recording (it ran no shell or command)"
                )))
            }
        };
        if !valid_recording_id(&rec) {
            return Err(ControlError::Invalid(format!(
                "session {id} names an invalid recording id {rec:?}"
            )));
        }
        let allowed = self.may_view(&s)
            && (access != "watch" || self.permit(ConsolePermission::Watch, "watch").is_ok());
        let (result, reason) = if allowed {
            (Outcome::Success, None)
        } else {
            (
                Outcome::Denied,
                Some(format!("{} may not read session {id}", self.actor.name)),
            )
        };
        let mut ev = self
            .event(
                EventType::RECORDING_ACCESS,
                Severity::Info,
                result,
                serde_json::json!({"recording_id": rec, "action": access}),
            )
            .user(self.actor.name.clone())
            .session(id);
        ev.reason = reason.clone();
        self.audit(ev).await?;
        match reason {
            None => Ok(rec),
            Some(r) => Err(ControlError::Refused(r)),
        }
    }
}
