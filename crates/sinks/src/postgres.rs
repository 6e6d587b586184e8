//! The `postgres` sink: a `gatehouse_events` table in another database,
//! keyed by event id.

use std::time::Duration;

use gatehouse_model::event::Event;

use crate::SinkError;

/// Inserts the batch into `gatehouse_events`, connecting (and creating the
/// table) first when there is no pool.
pub async fn deliver(
    url: &str,
    pool: &mut Option<sqlx::PgPool>,
    events: &[&Event],
) -> Result<(), SinkError> {
    let db = |e: sqlx::Error| SinkError::Delivery(e.to_string());
    if pool.is_none() {
        let p = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(db)?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS gatehouse_events (id TEXT PRIMARY KEY, time TEXT NOT NULL, type TEXT NOT NULL, event JSONB NOT NULL)",
        )
        .execute(&p)
        .await
        .map_err(db)?;
        *pool = Some(p);
    }
    let Some(p) = pool.as_ref() else {
        return Err(SinkError::Delivery("no connection".into()));
    };
    let mut tx = p.begin().await.map_err(db)?;
    for e in events {
        // The event id as key: re-delivery changes nothing.
        sqlx::query(
            "INSERT INTO gatehouse_events (id, time, type, event) VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&e.event.id)
        .bind(&e.event.time)
        .bind(&e.event.kind)
        .bind(serde_json::to_string(e).unwrap_or_default())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    Ok(())
}
