//! What a Gatehouse user (not the operator) may do: their roles' console
//! permissions (`policy::console`), deny by default. The web console and
//! its API act as the signed-in user, so these checks are the whole of
//! their authorisation; the operator and alert rules pass them all.

use gatehouse_model::ConsolePermission;
use gatehouse_policy::console::{console_access, ConsoleAccess};
use gatehouse_store::SessionRef;

use crate::{Authority, Control, ControlError, Result};

impl Control<'_> {
    /// The actor's console rights (everything for the operator).
    pub fn access(&self) -> Option<ConsoleAccess> {
        match self.actor.authority {
            Authority::Operator => None,
            Authority::User => Some(console_access(self.config, &self.actor.name)),
        }
    }

    /// Refuses a user without permission `p` (`what` names the operation).
    pub(crate) fn permit(&self, p: ConsolePermission, what: &str) -> Result<()> {
        match self.access() {
            None => Ok(()),
            Some(a) if a.can(p) => Ok(()),
            Some(_) => Err(ControlError::Refused(format!(
                "{} may not {what}: no role of theirs grants the console permission {:?}",
                self.actor.name,
                p.as_str()
            ))),
        }
    }

    /// May the actor see session `s` (their own, a target in their
    /// `console_targets`, or every session)?
    pub fn may_view(&self, s: &SessionRef) -> bool {
        match self.access() {
            None => true,
            Some(a) => a.may_view(&s.user, s.target.as_deref()),
        }
    }
}
