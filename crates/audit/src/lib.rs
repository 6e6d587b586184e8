//! What acts on the audit trail. For now: runbooks — a name, a
//! description, typed parameters with defaults and validation, one
//! read-only SQL query over the `events`, `sessions`, `commands` and
//! `cloudtrail` views,
//! and actions to take on the rows.
//!
//! Pure: parsing, validation and rendering the query with parameters as
//! SQL literals. Running the query and taking the actions is the binary's
//! job (through the store).

pub mod alert;
pub mod runbook;

pub use runbook::{Action, ActionKind, Param, ParamType, Runbook, RunbookError};
