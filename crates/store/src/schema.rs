//! Schema and views, per backend. Statements are idempotent so that every
//! start can run them; the column names are the same on both backends.

pub const SQLITE: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS audit_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        time TEXT NOT NULL,
        type TEXT NOT NULL,
        severity TEXT NOT NULL,
        user_name TEXT,
        source_ip TEXT,
        node TEXT NOT NULL,
        session_id TEXT,
        target TEXT,
        login TEXT,
        mfa INTEGER NOT NULL,
        result TEXT NOT NULL,
        reason TEXT,
        details TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS audit_events_time ON audit_events (time)",
    "CREATE INDEX IF NOT EXISTS audit_events_user_time ON audit_events (user_name, time)",
    "CREATE INDEX IF NOT EXISTS audit_events_session ON audit_events (session_id)",
    "CREATE INDEX IF NOT EXISTS audit_events_type_time ON audit_events (type, time)",
    "CREATE TABLE IF NOT EXISTS host_keys (
        target TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        first_seen TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS session_kills (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL,
        reason TEXT NOT NULL,
        requested_by TEXT NOT NULL,
        requested_at TEXT NOT NULL,
        done INTEGER NOT NULL DEFAULT 0
    )",
    "CREATE TABLE IF NOT EXISTS totp_secrets (
        user_name TEXT PRIMARY KEY,
        sealed TEXT NOT NULL,
        last_step INTEGER NOT NULL DEFAULT 0,
        enrolled_at TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS user_locks (
        user_name TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        locked_until TEXT,
        locked_by TEXT NOT NULL,
        locked_at TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS audit_checkpoints (
        seq INTEGER PRIMARY KEY,
        hash TEXT NOT NULL,
        time TEXT NOT NULL,
        signature TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS source_blocks (
        source_ip TEXT PRIMARY KEY,
        blocked_until TEXT NOT NULL,
        reason TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS approvals (
        id TEXT PRIMARY KEY,
        user_name TEXT NOT NULL,
        target TEXT NOT NULL,
        login TEXT NOT NULL,
        approvers TEXT NOT NULL,
        status TEXT NOT NULL,
        requested_at TEXT NOT NULL,
        decided_by TEXT,
        reason TEXT,
        grant_until TEXT
    )",
    "CREATE TABLE IF NOT EXISTS sink_cursors (name TEXT PRIMARY KEY, seq INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS nodes (
        name TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        version TEXT NOT NULL,
        started_at TEXT NOT NULL,
        last_heartbeat TEXT NOT NULL,
        stopped_at TEXT,
        lost_by TEXT,
        lost_at TEXT
    )",
    // The web console: sign-in sessions (only the SHA-256 of the cookie's
    // token is kept) and API tokens (only their SHA-256).
    "CREATE TABLE IF NOT EXISTS console_sessions (
        id_hash TEXT PRIMARY KEY,
        user_name TEXT NOT NULL,
        csrf TEXT NOT NULL,
        source_ip TEXT,
        mfa INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        last_seen TEXT NOT NULL,
        expires_at TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS console_sessions_user ON console_sessions (user_name)",
    // The roles an identity provider granted a console sign-in (JSON
    // array), judged with the user's own; none for a password sign-in.
    "CREATE TABLE IF NOT EXISTS console_session_roles (
        id_hash TEXT PRIMARY KEY,
        roles TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS console_sessions_expires ON console_sessions (expires_at)",
    "CREATE TABLE IF NOT EXISTS api_tokens (
        id TEXT PRIMARY KEY,
        user_name TEXT NOT NULL,
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        created_by TEXT NOT NULL,
        last_used_at TEXT,
        revoked_at TEXT
    )",
    "CREATE INDEX IF NOT EXISTS api_tokens_user ON api_tokens (user_name, created_at)",
    // Single sign-on: an SSH key bound to the identity that signed in
    // with it, until expires_at; the refresh token sealed (sso.rs).
    "CREATE TABLE IF NOT EXISTS sso_keys (
        key_fingerprint TEXT PRIMARY KEY,
        user_name TEXT NOT NULL,
        provider TEXT NOT NULL,
        subject TEXT NOT NULL,
        identity TEXT NOT NULL,
        refresh_sealed TEXT,
        bound_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        checked_at TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS sso_keys_user ON sso_keys (user_name, checked_at)",
    // The console's session list (console.rs): session.start rows in
    // time order, overall and per user, target and source.
    "CREATE INDEX IF NOT EXISTS audit_starts_time ON audit_events (time, session_id) WHERE type = 'session.start'",
    "CREATE INDEX IF NOT EXISTS audit_starts_user ON audit_events (user_name, time, session_id) WHERE type = 'session.start'",
    "CREATE INDEX IF NOT EXISTS audit_starts_target ON audit_events (target, time, session_id) WHERE type = 'session.start'",
    "CREATE INDEX IF NOT EXISTS audit_starts_source ON audit_events (source_ip, time, session_id) WHERE type = 'session.start'",
    // The events list in seq order per user.
    // A user's events are read through (user_name, time): a second
    // per-user index, written at one place per user by every batch,
    // halved batched ingest (BENCHMARKS.md).
    "DROP INDEX IF EXISTS audit_events_user_seq",
    "CREATE INDEX IF NOT EXISTS audit_events_notable ON audit_events (seq) WHERE severity <> 'info'",
    "CREATE INDEX IF NOT EXISTS audit_events_unsuccessful ON audit_events (seq) WHERE result <> 'success'",
    // Which backfills below have run (each once per store).
    "CREATE TABLE IF NOT EXISTS store_backfills (name TEXT PRIMARY KEY, done_at TEXT NOT NULL)",
    // Settings the views read (server.service_name for `cloudtrail`) and
    // the version of the generated `cloudtrail` view (cloudtrail.rs).
    "CREATE TABLE IF NOT EXISTS store_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    // Sessions with a session.start and neither a session.end nor a
    // session.killed, kept by triggers: an index for `active`, which no
    // index on audit_events can answer without reading every session.
    "CREATE TABLE IF NOT EXISTS active_sessions (session_id TEXT PRIMARY KEY)",
    "CREATE TRIGGER IF NOT EXISTS audit_session_opened AFTER INSERT ON audit_events
     WHEN NEW.type = 'session.start' AND NEW.session_id IS NOT NULL
     BEGIN INSERT OR IGNORE INTO active_sessions (session_id) VALUES (NEW.session_id); END",
    "CREATE TRIGGER IF NOT EXISTS audit_session_closed AFTER INSERT ON audit_events
     WHEN NEW.type IN ('session.end', 'session.killed')
     BEGIN DELETE FROM active_sessions WHERE session_id = NEW.session_id; END",
    // The guard's one row first (CROSS JOIN): once done, nothing is read.
    "INSERT OR IGNORE INTO active_sessions (session_id)
     SELECT s.session_id
     FROM (SELECT COUNT(*) AS n FROM store_backfills WHERE name = 'active_sessions') g
     CROSS JOIN audit_events s
     WHERE g.n = 0 AND s.type = 'session.start' AND s.session_id IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM audit_events e WHERE e.session_id = s.session_id
                       AND e.type IN ('session.end', 'session.killed'))",
    "INSERT OR IGNORE INTO store_backfills (name, done_at)
     VALUES ('active_sessions', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
    // Command lines as a trigram full-text index (case-insensitive
    // substrings of three characters or more), kept by a trigger; its
    // rowid is the event's seq. Built from the existing events once.
    "CREATE VIEW IF NOT EXISTS command_lines AS
     SELECT seq, json_extract(details, '$.command') AS command FROM audit_events WHERE type = 'command'",
    "CREATE VIRTUAL TABLE IF NOT EXISTS command_text USING fts5(
        command, content = 'command_lines', content_rowid = 'seq', tokenize = 'trigram'
    )",
    "CREATE TRIGGER IF NOT EXISTS audit_command_text AFTER INSERT ON audit_events
     WHEN NEW.type = 'command'
     BEGIN INSERT INTO command_text (rowid, command) VALUES (NEW.seq, json_extract(NEW.details, '$.command')); END",
    "INSERT INTO command_text (command_text) SELECT 'rebuild'
     WHERE NOT EXISTS (SELECT 1 FROM store_backfills WHERE name = 'command_text')",
    "INSERT OR IGNORE INTO store_backfills (name, done_at)
     VALUES ('command_text', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
    "CREATE VIEW IF NOT EXISTS events AS
     SELECT id, time, type, severity, user_name AS \"user\", source_ip, node, session_id, target,
            login, mfa, result, reason, details, prev_hash, hash, seq
     FROM audit_events",
    "CREATE VIEW IF NOT EXISTS sessions AS
     SELECT s.session_id, s.user_name AS \"user\", s.source_ip, s.node, s.target, s.login, s.mfa,
            s.time AS start_time, e.time AS end_time,
            json_extract(e.details, '$.duration_ms') AS duration_ms,
            json_extract(e.details, '$.bytes_in') AS bytes_in,
            json_extract(e.details, '$.bytes_out') AS bytes_out,
            json_extract(e.details, '$.exit_status') AS exit_status,
            json_extract(e.details, '$.recording_id') AS recording_id,
            json_extract(e.details, '$.recording_sha256') AS recording_sha256,
            CASE WHEN e.seq IS NULL AND NOT EXISTS (
                SELECT 1 FROM audit_events k WHERE k.session_id = s.session_id AND k.type = 'session.killed'
            ) THEN 1 ELSE 0 END AS active
     FROM audit_events s
     LEFT JOIN audit_events e ON e.session_id = s.session_id AND e.type = 'session.end'
     WHERE s.type = 'session.start'",
    "CREATE VIEW IF NOT EXISTS commands AS
     SELECT time, session_id, user_name AS \"user\", target, login,
            json_extract(details, '$.command') AS command,
            json_extract(details, '$.source') AS source,
            result, id
     FROM audit_events WHERE type = 'command'",
];

pub const POSTGRES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS audit_events (
        seq BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        time TEXT NOT NULL,
        type TEXT NOT NULL,
        severity TEXT NOT NULL,
        user_name TEXT,
        source_ip TEXT,
        node TEXT NOT NULL,
        session_id TEXT,
        target TEXT,
        login TEXT,
        mfa BOOLEAN NOT NULL,
        result TEXT NOT NULL,
        reason TEXT,
        details JSONB NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS audit_events_time ON audit_events (time)",
    "CREATE INDEX IF NOT EXISTS audit_events_user_time ON audit_events (user_name, time)",
    "CREATE INDEX IF NOT EXISTS audit_events_session ON audit_events (session_id)",
    "CREATE INDEX IF NOT EXISTS audit_events_type_time ON audit_events (type, time)",
    "CREATE TABLE IF NOT EXISTS host_keys (
        target TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        first_seen TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS session_kills (
        id BIGSERIAL PRIMARY KEY,
        session_id TEXT NOT NULL,
        reason TEXT NOT NULL,
        requested_by TEXT NOT NULL,
        requested_at TEXT NOT NULL,
        done BOOLEAN NOT NULL DEFAULT FALSE
    )",
    "CREATE TABLE IF NOT EXISTS totp_secrets (
        user_name TEXT PRIMARY KEY,
        sealed TEXT NOT NULL,
        last_step BIGINT NOT NULL DEFAULT 0,
        enrolled_at TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS user_locks (
        user_name TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        locked_until TEXT,
        locked_by TEXT NOT NULL,
        locked_at TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS audit_checkpoints (
        seq BIGINT PRIMARY KEY,
        hash TEXT NOT NULL,
        time TEXT NOT NULL,
        signature TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS source_blocks (
        source_ip TEXT PRIMARY KEY,
        blocked_until TEXT NOT NULL,
        reason TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS approvals (
        id TEXT PRIMARY KEY,
        user_name TEXT NOT NULL,
        target TEXT NOT NULL,
        login TEXT NOT NULL,
        approvers TEXT NOT NULL,
        status TEXT NOT NULL,
        requested_at TEXT NOT NULL,
        decided_by TEXT,
        reason TEXT,
        grant_until TEXT
    )",
    "CREATE TABLE IF NOT EXISTS sink_cursors (name TEXT PRIMARY KEY, seq BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS nodes (
        name TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        version TEXT NOT NULL,
        started_at TEXT NOT NULL,
        last_heartbeat TEXT NOT NULL,
        stopped_at TEXT,
        lost_by TEXT,
        lost_at TEXT
    )",
    "CREATE TABLE IF NOT EXISTS console_sessions (
        id_hash TEXT PRIMARY KEY,
        user_name TEXT NOT NULL,
        csrf TEXT NOT NULL,
        source_ip TEXT,
        mfa BOOLEAN NOT NULL,
        created_at TEXT NOT NULL,
        last_seen TEXT NOT NULL,
        expires_at TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS console_sessions_user ON console_sessions (user_name)",
    // The roles an identity provider granted a console sign-in (JSON
    // array), judged with the user's own; none for a password sign-in.
    "CREATE TABLE IF NOT EXISTS console_session_roles (
        id_hash TEXT PRIMARY KEY,
        roles TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS console_sessions_expires ON console_sessions (expires_at)",
    "CREATE TABLE IF NOT EXISTS api_tokens (
        id TEXT PRIMARY KEY,
        user_name TEXT NOT NULL,
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        created_by TEXT NOT NULL,
        last_used_at TEXT,
        revoked_at TEXT
    )",
    "CREATE INDEX IF NOT EXISTS api_tokens_user ON api_tokens (user_name, created_at)",
    "CREATE TABLE IF NOT EXISTS sso_keys (
        key_fingerprint TEXT PRIMARY KEY,
        user_name TEXT NOT NULL,
        provider TEXT NOT NULL,
        subject TEXT NOT NULL,
        identity TEXT NOT NULL,
        refresh_sealed TEXT,
        bound_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        checked_at TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS sso_keys_user ON sso_keys (user_name, checked_at)",
    "CREATE INDEX IF NOT EXISTS audit_starts_time ON audit_events (time, session_id) WHERE type = 'session.start'",
    "CREATE INDEX IF NOT EXISTS audit_starts_user ON audit_events (user_name, time, session_id) WHERE type = 'session.start'",
    "CREATE INDEX IF NOT EXISTS audit_starts_target ON audit_events (target, time, session_id) WHERE type = 'session.start'",
    "CREATE INDEX IF NOT EXISTS audit_starts_source ON audit_events (source_ip, time, session_id) WHERE type = 'session.start'",
    // A user's events are read through (user_name, time): a second
    // per-user index, written at one place per user by every batch,
    // halved batched ingest (BENCHMARKS.md).
    "DROP INDEX IF EXISTS audit_events_user_seq",
    "CREATE INDEX IF NOT EXISTS audit_events_notable ON audit_events (seq) WHERE severity <> 'info'",
    "CREATE INDEX IF NOT EXISTS audit_events_unsuccessful ON audit_events (seq) WHERE result <> 'success'",
    "CREATE INDEX IF NOT EXISTS audit_events_type_seq ON audit_events (type, seq)",
    "CREATE TABLE IF NOT EXISTS store_backfills (name TEXT PRIMARY KEY, done_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS store_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS active_sessions (session_id TEXT PRIMARY KEY)",
    "CREATE OR REPLACE FUNCTION gatehouse_active_sessions() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN
        IF NEW.type = 'session.start' AND NEW.session_id IS NOT NULL THEN
            INSERT INTO active_sessions (session_id) VALUES (NEW.session_id) ON CONFLICT DO NOTHING;
        ELSIF NEW.type IN ('session.end', 'session.killed') THEN
            DELETE FROM active_sessions WHERE session_id = NEW.session_id;
        END IF;
        RETURN NULL;
     END $$",
    "DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'audit_active_sessions'
                       AND tgrelid = 'audit_events'::regclass) THEN
            CREATE TRIGGER audit_active_sessions AFTER INSERT ON audit_events FOR EACH ROW
            WHEN (NEW.type IN ('session.start', 'session.end', 'session.killed'))
            EXECUTE FUNCTION gatehouse_active_sessions();
        END IF;
     END $$",
    // Once per store. The check comes first and the INSERT … SELECT is
    // planned only when it runs: planned on every open, a large store's
    // estimate made PostgreSQL JIT-compile it (a quarter to half a
    // second at a million sessions) even though its one-time filter kept
    // it from reading anything.
    "DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM store_backfills WHERE name = 'active_sessions') THEN
            INSERT INTO active_sessions (session_id)
            SELECT s.session_id FROM audit_events s
            WHERE s.type = 'session.start' AND s.session_id IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM audit_events e WHERE e.session_id = s.session_id
                              AND e.type IN ('session.end', 'session.killed'))
            ON CONFLICT DO NOTHING;
            INSERT INTO store_backfills (name, done_at)
            VALUES ('active_sessions', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))
            ON CONFLICT DO NOTHING;
        END IF;
     END $$",
    // Command lines by trigram (case-insensitive substrings), when the
    // pg_trgm extension can be had (a trusted extension: the database's
    // owner may create it); without it the command filter reads every
    // command event.
    "DO $$ BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
     EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'pg_trgm is not available; searching command lines reads every command event';
     END $$",
    "DO $$ BEGIN
        IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
            CREATE INDEX IF NOT EXISTS audit_commands_trgm ON audit_events
            USING gin (lower(details->>'command') gin_trgm_ops) WHERE type = 'command';
        END IF;
     END $$",
    "CREATE OR REPLACE VIEW events AS
     SELECT id, time, type, severity, user_name AS \"user\", source_ip, node, session_id, target,
            login, mfa, result, reason, details, prev_hash, hash, seq
     FROM audit_events",
    "CREATE OR REPLACE VIEW sessions AS
     SELECT s.session_id, s.user_name AS \"user\", s.source_ip, s.node, s.target, s.login, s.mfa,
            s.time AS start_time, e.time AS end_time,
            (e.details->>'duration_ms')::bigint AS duration_ms,
            (e.details->>'bytes_in')::bigint AS bytes_in,
            (e.details->>'bytes_out')::bigint AS bytes_out,
            (e.details->>'exit_status')::bigint AS exit_status,
            e.details->>'recording_id' AS recording_id,
            e.details->>'recording_sha256' AS recording_sha256,
            (e.seq IS NULL AND NOT EXISTS (
                SELECT 1 FROM audit_events k WHERE k.session_id = s.session_id AND k.type = 'session.killed'
            )) AS active
     FROM audit_events s
     LEFT JOIN audit_events e ON e.session_id = s.session_id AND e.type = 'session.end'
     WHERE s.type = 'session.start'",
    "CREATE OR REPLACE VIEW commands AS
     SELECT time, session_id, user_name AS \"user\", target, login,
            details->>'command' AS command,
            details->>'source' AS source,
            result, id
     FROM audit_events WHERE type = 'command'",
];

/// The INSERT of `rows` events in one statement (PostgreSQL).
pub fn postgres_multi_insert(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO audit_events (id, time, type, severity, user_name, source_ip, node, session_id, target, login, mfa, result, reason, details, prev_hash, hash) VALUES ",
    );
    for r in 0..rows {
        let p = r * 16;
        if r > 0 {
            sql.push(',');
        }
        sql.push_str(&format!(
            "(${},${},${},${},${},${},${},${},${},${},${},${},${},${}::jsonb,${},${})",
            p + 1,
            p + 2,
            p + 3,
            p + 4,
            p + 5,
            p + 6,
            p + 7,
            p + 8,
            p + 9,
            p + 10,
            p + 11,
            p + 12,
            p + 13,
            p + 14,
            p + 15,
            p + 16
        ));
    }
    sql
}

/// One simple query that commits `rows` (chained onto `prev`) only if the
/// chain's head is still `prev` once the chain's lock `lock` is held,
/// returning one `seq` per inserted row. None when a value cannot be a
/// literal (a NUL character, which PostgreSQL text refuses anyway).
///
/// The rows travel as one array literal per column, spread by `unnest`:
/// the server parses sixteen literals instead of an expression per value
/// (about a third more events per second in batches of a thousand than a
/// `VALUES` list; BENCHMARKS.md).
pub fn postgres_one_trip_insert(
    rows: &[(gatehouse_model::event::Event, String)],
    prev: &str,
    lock: i64,
) -> Option<String> {
    type Column = fn(&(gatehouse_model::event::Event, String)) -> Option<&str>;
    const COLUMNS: [(Column, &str); 16] = [
        (|(e, _)| Some(&e.event.id), "text"),
        (|(e, _)| Some(&e.event.time), "text"),
        (|(e, _)| Some(&e.event.kind), "text"),
        (|(e, _)| Some(e.event.severity.as_str()), "text"),
        (|(e, _)| e.event.user.as_deref(), "text"),
        (|(e, _)| e.event.source_ip.as_deref(), "text"),
        (|(e, _)| Some(&e.event.node), "text"),
        (|(e, _)| e.event.session_id.as_deref(), "text"),
        (|(e, _)| e.event.target.as_deref(), "text"),
        (|(e, _)| e.event.login.as_deref(), "text"),
        (
            |(e, _)| Some(if e.event.mfa { "t" } else { "f" }),
            "boolean",
        ),
        (|(e, _)| Some(e.event.result.as_str()), "text"),
        (|(e, _)| e.event.reason.as_deref(), "text"),
        (|(_, details)| Some(details), "text"),
        (|(e, _)| Some(&e.prev_hash), "text"),
        (|(e, _)| Some(&e.hash), "text"),
    ];
    let mut sql = format!(
        "BEGIN; SELECT pg_advisory_xact_lock({lock}); \
         INSERT INTO audit_events (id, time, type, severity, user_name, source_ip, node, session_id, target, login, mfa, result, reason, details, prev_hash, hash) \
         SELECT id, time, type, severity, user_name, source_ip, node, session_id, target, login, mfa, result, reason, details::jsonb, prev_hash, hash FROM unnest("
    );
    for (n, (column, ty)) in COLUMNS.iter().enumerate() {
        if n > 0 {
            sql.push(',');
        }
        pg_array(&mut sql, rows.iter().map(column))?;
        sql.push_str("::");
        sql.push_str(ty);
        sql.push_str("[]");
    }
    sql.push_str(
        ") WITH ORDINALITY AS v (id, time, type, severity, user_name, source_ip, node, session_id, target, login, mfa, result, reason, details, prev_hash, hash, ord) \
         WHERE COALESCE((SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1), ",
    );
    pg_literal(&mut sql, crate::GENESIS)?;
    sql.push_str(") = ");
    pg_literal(&mut sql, prev)?;
    sql.push_str(" ORDER BY ord RETURNING seq; COMMIT");
    Some(sql)
}

/// Appends an array literal of `values` (None: NULL) as an escape-string
/// literal: each element quoted for the array (`\\` and `\"`), then the
/// whole for the string (`\\` and `''`). None for a NUL character.
fn pg_array<'a>(sql: &mut String, values: impl Iterator<Item = Option<&'a str>>) -> Option<()> {
    sql.push_str("E'{");
    for (n, value) in values.enumerate() {
        if n > 0 {
            sql.push(',');
        }
        let Some(value) = value else {
            sql.push_str("NULL");
            continue;
        };
        sql.push('"');
        let mut run = 0;
        for (i, b) in value.bytes().enumerate() {
            let escaped = match b {
                0 => return None,
                b'\\' => "\\\\\\\\",
                b'"' => "\\\\\"",
                b'\'' => "''",
                _ => continue,
            };
            sql.push_str(&value[run..i]);
            sql.push_str(escaped);
            run = i + 1;
        }
        sql.push_str(&value[run..]);
        sql.push('"');
    }
    sql.push_str("}'");
    Some(())
}

/// Appends `s` as an escape-string literal (E'...'), whatever the server's
/// `standard_conforming_strings`. None for a NUL character.
fn pg_literal(sql: &mut String, s: &str) -> Option<()> {
    sql.push_str("E'");
    for c in s.chars() {
        match c {
            '\0' => return None,
            '\'' => sql.push_str("''"),
            '\\' => sql.push_str("\\\\"),
            c => sql.push(c),
        }
    }
    sql.push('\'');
    Some(())
}

pub const SQLITE_SELECT: &str = "seq, id, time, type, severity, user_name, source_ip, node, session_id, target, login, mfa, result, reason, details, prev_hash, hash";

pub const POSTGRES_SELECT: &str = "seq, id, time, type, severity, user_name, source_ip, node, session_id, target, login, mfa, result, reason, details::text AS details, prev_hash, hash";
