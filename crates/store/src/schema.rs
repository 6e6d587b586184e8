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

pub const POSTGRES_INSERT: &str = "INSERT INTO audit_events
    (id, time, type, severity, user_name, source_ip, node, session_id, target, login, mfa, result, reason, details, prev_hash, hash)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14::jsonb, $15, $16)";

pub const SQLITE_SELECT: &str = "seq, id, time, type, severity, user_name, source_ip, node, session_id, target, login, mfa, result, reason, details, prev_hash, hash";

pub const POSTGRES_SELECT: &str = "seq, id, time, type, severity, user_name, source_ip, node, session_id, target, login, mfa, result, reason, details::text AS details, prev_hash, hash";
