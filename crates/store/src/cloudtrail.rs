//! The `cloudtrail` view: every event as the CloudTrail record
//! `gatehouse_model::cloudtrail::record` makes of it, for `audit query`
//! and runbooks (`docs/cloudtrail.md`).
//!
//! The view's SQL is generated from the mapping's tables, so the view and
//! the Rust function cannot name an event differently; the tests compare
//! their output row by row on both backends. Column names are CloudTrail's
//! field names in lower case (`eventtime`, `useridentity`): PostgreSQL folds
//! unquoted names to lower case, so `SELECT eventTime FROM cloudtrail`
//! reads the same column on both backends, and both name it `eventtime`
//! in the result. JSON columns are JSON text on SQLite and `jsonb` on
//! PostgreSQL; `->>` reads a key on both (`useridentity->>'userName'`).
//!
//! `eventSource` is `server.service_name`, which `gatehouse serve` writes
//! to `store_settings` ([`Store::set_service_name`]); the view reads it
//! there.
//! The view is re-created when its generated SQL changes (a new version of
//! the mapping), and only then.

use gatehouse_model::cloudtrail::{
    API_CALL, CHANNEL_IDENTITIES, CLIENT_ADDRESS_CHANNELS, DEFAULT_SERVICE_NAME, ERROR_CODES,
    EVENT_NAMES, EVENT_VERSION, FEDERATED_IDENTITY, SERVICE_EVENT, SERVICE_IDENTITY, SERVICE_TYPES,
    SFTP_FALLBACK, UNKNOWN_IDENTITY, USER_IDENTITY,
};
use sha2::{Digest, Sha256};
use sqlx::AssertSqlSafe;

use crate::{Backend, Store, StoreError};

/// The `store_settings` row that holds `server.service_name`.
const SERVICE_NAME_KEY: &str = "service_name";
/// The `store_settings` row that holds the digest of the view's SQL.
const VIEW_KEY: &str = "cloudtrail_view";

/// A SQL string literal.
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn list(items: &[&str]) -> String {
    items.iter().map(|s| lit(s)).collect::<Vec<_>>().join(", ")
}

/// The SQL dialect differences the view needs.
struct Dialect(Backend);

impl Dialect {
    /// The string at `path` in `details`, or NULL when it is missing or
    /// not a string (as `record` reads it).
    fn text(&self, path: &[&str]) -> String {
        match self.0 {
            Backend::Sqlite => {
                let p = lit(&format!("$.{}", path.join(".")));
                format!("CASE WHEN json_type(details, {p}) = 'text' THEN json_extract(details, {p}) END")
            }
            Backend::Postgres => {
                let p = lit(&format!("{{{}}}", path.join(",")));
                format!(
                    "CASE WHEN jsonb_typeof(details #> {p}) = 'string' THEN details #>> {p} END"
                )
            }
        }
    }

    /// A JSON object of the pairs whose value is not NULL (values are
    /// text, or objects made by `nested`).
    fn object(&self, pairs: &[(&str, String)]) -> String {
        match self.0 {
            Backend::Sqlite => format!("json_patch('{{}}', {})", self.nested(pairs)),
            Backend::Postgres => format!("jsonb_strip_nulls({})", self.nested(pairs)),
        }
    }

    /// A JSON object of the pairs, NULLs kept (to nest in `object`).
    fn nested(&self, pairs: &[(&str, String)]) -> String {
        let args = pairs
            .iter()
            .map(|(k, v)| format!("{}, {v}", lit(k)))
            .collect::<Vec<_>>()
            .join(", ");
        match self.0 {
            Backend::Sqlite => format!("json_object({args})"),
            Backend::Postgres => format!("jsonb_build_object({args})"),
        }
    }

    /// `object` with `details` added as it is stored.
    fn with_details(&self, object: String) -> String {
        match self.0 {
            Backend::Sqlite => format!("json_set({object}, '$.details', json(details))"),
            Backend::Postgres => format!("({object} || jsonb_build_object('details', details))"),
        }
    }

    /// A text constant.
    fn constant(&self, s: &str) -> String {
        match self.0 {
            Backend::Sqlite => lit(s),
            Backend::Postgres => format!("{}::text", lit(s)),
        }
    }

    fn distinct(&self, a: &str, b: &str) -> String {
        match self.0 {
            Backend::Sqlite => format!("{a} IS NOT {b}"),
            Backend::Postgres => format!("{a} IS DISTINCT FROM {b}"),
        }
    }
}

/// `CREATE VIEW cloudtrail …` for `backend`: the record's fields over
/// [`actors`] over [`details_read`].
pub(crate) fn view_sql(backend: Backend) -> String {
    let d = Dialect(backend);
    let c = |s: &str| d.constant(s);
    let clients = list(CLIENT_ADDRESS_CHANNELS);
    format!(
        "CREATE VIEW cloudtrail AS SELECT \
         {version} AS eventversion, \
         substr(time, 1, 19) || 'Z' AS eventtime, \
         COALESCE((SELECT value FROM store_settings WHERE name = {key}), {default}) AS eventsource, \
         {event_name} AS eventname, \
         CASE WHEN ct_kind = {service} THEN {service_event} ELSE {api_call} END AS eventtype, \
         {identity} AS useridentity, \
         CASE WHEN ct_channel IS NULL OR ct_channel IN ({clients}) THEN source_ip \
              WHEN ct_channel = 'ssh' THEN ct_by_ip END AS sourceipaddress, \
         CASE {errors} END AS errorcode, \
         CASE WHEN result <> 'success' THEN reason END AS errormessage, \
         {request} AS requestparameters, \
         {additional} AS additionaleventdata, \
         id AS eventid \
         FROM ({actors}) b",
        version = c(EVENT_VERSION),
        key = lit(SERVICE_NAME_KEY),
        default = c(DEFAULT_SERVICE_NAME),
        event_name = event_name(&d),
        service = lit(SERVICE_IDENTITY),
        service_event = c(SERVICE_EVENT),
        api_call = c(API_CALL),
        identity = user_identity(&d),
        errors = error_codes(&d),
        request = request_parameters(&d),
        additional = additional_event_data(&d),
        actors = actors(&d, &details_read(&d)),
    )
}

/// The events with the details the mapping reads, as columns.
fn details_read(d: &Dialect) -> String {
    format!(
        "SELECT e.*, {} AS ct_channel, {} AS ct_by, {} AS ct_by_ip, {} AS ct_provider, {} AS ct_subject, \
         {} AS ct_command, {} AS ct_path, {} AS ct_new_path, {} AS ct_recording, {} AS ct_digest \
         FROM audit_events e",
        d.text(&["channel"]),
        d.text(&["by"]),
        d.text(&["by_source_ip"]),
        d.text(&["identity", "provider"]),
        d.text(&["identity", "subject"]),
        d.text(&["command"]),
        d.text(&["path"]),
        d.text(&["target_path"]),
        d.text(&["recording_id"]),
        d.text(&["recording_sha256"]),
    )
}

/// `inner` with who acted (`cloudtrail::record`'s actor): `ct_kind`, the
/// `userIdentity.type`, and `ct_actor`, the actor's name.
fn actors(d: &Dialect, inner: &str) -> String {
    let c = |s: &str| d.constant(s);
    let user_kind = format!(
        "CASE WHEN ct_provider IS NOT NULL THEN {} ELSE {} END",
        c(FEDERATED_IDENTITY),
        c(USER_IDENTITY)
    );
    let by_channel = CHANNEL_IDENTITIES
        .iter()
        .map(|(channel, kind)| {
            let kind = if *kind == USER_IDENTITY {
                user_kind.clone()
            } else {
                c(kind)
            };
            format!("WHEN {} THEN {kind}", lit(channel))
        })
        .collect::<Vec<_>>()
        .join(" ");
    let gateway_acts = format!("user_name IS NULL OR type IN ({})", list(SERVICE_TYPES));
    format!(
        "SELECT a.*, \
         CASE WHEN ct_channel IS NOT NULL THEN CASE ct_channel {by_channel} ELSE {unknown} END \
              WHEN {gateway_acts} THEN {service} \
              WHEN type = 'auth.failure' THEN {unknown} \
              ELSE {user_kind} END AS ct_kind, \
         CASE WHEN ct_channel IS NOT NULL THEN COALESCE(ct_by, user_name) \
              WHEN {gateway_acts} THEN NULL \
              ELSE user_name END AS ct_actor \
         FROM ({inner}) a",
        unknown = c(UNKNOWN_IDENTITY),
        service = c(SERVICE_IDENTITY),
    )
}

fn event_name(d: &Dialect) -> String {
    let names = EVENT_NAMES
        .iter()
        .map(|(kind, name)| format!("WHEN {} THEN {}", lit(kind), d.constant(name)))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "CASE type {names} ELSE CASE WHEN substr(type, 1, 5) = 'sftp.' THEN {} ELSE type END END",
        d.constant(SFTP_FALLBACK)
    )
}

/// The `WHEN … THEN …` arms of `errorCode`.
fn error_codes(d: &Dialect) -> String {
    ERROR_CODES
        .iter()
        .map(|r| {
            let kind = r.kind.map(|k| format!(" AND type = {}", lit(k)));
            format!(
                "WHEN result = {}{} THEN {}",
                lit(r.result.as_str()),
                kind.unwrap_or_default(),
                d.constant(r.code)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn user_identity(d: &Dialect) -> String {
    let service = lit(SERVICE_IDENTITY);
    let federated = lit(FEDERATED_IDENTITY);
    let mfa = format!(
        "CASE WHEN mfa THEN {} ELSE {} END",
        d.constant("true"),
        d.constant("false")
    );
    d.object(&[
        ("type", "ct_kind".into()),
        (
            "principalId",
            format!(
                "CASE ct_kind WHEN {service} THEN COALESCE(ct_actor, node) \
                 WHEN {federated} THEN COALESCE(ct_subject, ct_actor) ELSE ct_actor END"
            ),
        ),
        (
            "userName",
            format!("CASE WHEN ct_kind = {service} THEN NULL ELSE ct_actor END"),
        ),
        (
            "identityProvider",
            format!("CASE WHEN ct_kind = {federated} THEN ct_provider END"),
        ),
        (
            "sessionContext",
            d.nested(&[("attributes", d.nested(&[("mfaAuthenticated", mfa)]))]),
        ),
    ])
}

fn request_parameters(d: &Dialect) -> String {
    let clients = list(CLIENT_ADDRESS_CHANNELS);
    d.object(&[
        ("target", "target".into()),
        ("login", "login".into()),
        ("command", "ct_command".into()),
        ("path", "ct_path".into()),
        ("newPath", "ct_new_path".into()),
        (
            "userName",
            format!(
                "CASE WHEN {} THEN user_name END",
                d.distinct("user_name", "ct_actor")
            ),
        ),
        (
            "sourceAddress",
            format!(
                "CASE WHEN ct_channel IS NULL OR ct_channel IN ({clients}) THEN NULL ELSE source_ip END"
            ),
        ),
        (
            "reason",
            "CASE WHEN result = 'success' THEN reason END".into(),
        ),
    ])
}

fn additional_event_data(d: &Dialect) -> String {
    let mfa = format!(
        "CASE WHEN mfa THEN {} ELSE {} END",
        d.constant("True"),
        d.constant("False")
    );
    d.with_details(d.object(&[
        ("MFAAuthenticated", mfa),
        ("sessionId", "session_id".into()),
        ("recordingId", "ct_recording".into()),
        ("recordingDigest", "ct_digest".into()),
        ("chainHash", "hash".into()),
        ("node", "node".into()),
        ("severity", "severity".into()),
        ("gatehouseEventType", "type".into()),
    ]))
}

/// A short digest of the view's SQL: the version of the view in a store.
fn view_version(sql: &str) -> String {
    gatehouse_model::hex(&Sha256::digest(sql.as_bytes())[..8])
}

/// Creates the view, or re-creates it when the stored one was made from
/// other SQL. Runs inside `Store::open`, after the schema.
pub(crate) async fn install_sqlite(pool: &sqlx::SqlitePool) -> Result<(), sqlx::Error> {
    let sql = view_sql(Backend::Sqlite);
    let version = view_version(&sql);
    let current: Option<String> =
        sqlx::query_scalar("SELECT value FROM store_settings WHERE name = ?1")
            .bind(VIEW_KEY)
            .fetch_optional(pool)
            .await?;
    let exists: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM sqlite_master WHERE type = 'view' AND name = 'cloudtrail'",
    )
    .fetch_optional(pool)
    .await?;
    if current.as_deref() == Some(version.as_str()) && exists.is_some() {
        return Ok(());
    }
    // Two processes opening the store at once may both get here: each
    // statement is atomic, and whichever CREATE runs last finds the view
    // there (IF NOT EXISTS) with the same definition.
    sqlx::query("DROP VIEW IF EXISTS cloudtrail")
        .execute(pool)
        .await?;
    let create = sql.replacen("CREATE VIEW", "CREATE VIEW IF NOT EXISTS", 1);
    sqlx::query(AssertSqlSafe(create)).execute(pool).await?;
    sqlx::query(
        "INSERT INTO store_settings (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )
    .bind(VIEW_KEY)
    .bind(&version)
    .execute(pool)
    .await?;
    Ok(())
}

/// As [`install_sqlite`], in the transaction that holds `Store::open`'s
/// advisory lock.
pub(crate) async fn install_postgres(tx: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    let sql = view_sql(Backend::Postgres);
    let version = view_version(&sql);
    let current: Option<String> =
        sqlx::query_scalar("SELECT value FROM store_settings WHERE name = $1")
            .bind(VIEW_KEY)
            .fetch_optional(&mut *tx)
            .await?;
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass('cloudtrail')::text")
        .fetch_one(&mut *tx)
        .await?;
    if current.as_deref() == Some(version.as_str()) && exists.is_some() {
        return Ok(());
    }
    sqlx::query("DROP VIEW IF EXISTS cloudtrail")
        .execute(&mut *tx)
        .await?;
    sqlx::query(AssertSqlSafe(sql)).execute(&mut *tx).await?;
    sqlx::query(
        "INSERT INTO store_settings (name, value) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )
    .bind(VIEW_KEY)
    .bind(&version)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

impl Store {
    /// Records `server.service_name`, the `eventSource` of the
    /// `cloudtrail` view. Writes only when it changed.
    pub async fn set_service_name(&self, name: &str) -> Result<(), StoreError> {
        if self.service_name().await? == name {
            return Ok(());
        }
        exec!(
            self,
            "INSERT INTO store_settings (name, value) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            SERVICE_NAME_KEY,
            name
        );
        Ok(())
    }

    /// The `eventSource` of the `cloudtrail` view.
    pub async fn service_name(&self) -> Result<String, StoreError> {
        let name = fetch_opt!(
            self,
            (String,),
            "SELECT value FROM store_settings WHERE name = ?1",
            SERVICE_NAME_KEY
        );
        Ok(name.map_or_else(|| DEFAULT_SERVICE_NAME.to_string(), |(n,)| n))
    }
}
