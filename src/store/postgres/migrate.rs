//! Schema migrations: the SQL files in `migrations/`, compiled into the
//! binary, applied in order at start inside one transaction under an
//! advisory lock (several nodes starting at once apply each file once).
//! A database whose schema is newer than the binary, or whose applied
//! migrations differ from the binary's files, is refused: running old code
//! on a newer schema could write what the newer code no longer expects.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::PgError;

/// One migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order; `version` is the number in the file name.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "init", sql: include_str!("../../../migrations/0001_init.sql") },
    Migration {
        version: 2,
        name: "payouts_and_suspension",
        sql: include_str!("../../../migrations/0002_payouts_and_suspension.sql"),
    },
    Migration { version: 3, name: "remittances", sql: include_str!("../../../migrations/0003_remittances.sql") },
    Migration { version: 4, name: "resolve_mode", sql: include_str!("../../../migrations/0004_resolve_mode.sql") },
];

/// The schema version this binary writes.
pub fn schema_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Key of the transaction-level advisory lock that serialises migrations
/// ("syncpay" and 1, as bytes).
const MIGRATION_LOCK: i64 = 0x7379_6e63_7061_7901;

/// What [`migrate`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// The schema version before (0 for an empty database).
    pub found: i32,
    /// Versions applied now.
    pub applied: Vec<i32>,
}

fn checksum(sql: &str) -> String {
    Sha256::digest(sql.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Brings the database to [`schema_version`], or refuses it.
pub async fn migrate(client: &mut Client) -> Result<MigrationReport, PgError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS syncpay_schema_migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             checksum text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let rows = tx.query("SELECT version, name, checksum FROM syncpay_schema_migrations ORDER BY version", &[]).await?;
    let mut found = 0;
    for row in &rows {
        let version: i32 = row.try_get(0)?;
        let name: String = row.try_get(1)?;
        let sum: String = row.try_get(2)?;
        found = found.max(version);
        let Some(ours) = MIGRATIONS.iter().find(|m| m.version == version) else {
            return Err(PgError::SchemaTooNew { database: version, binary: schema_version() });
        };
        if ours.name != name || checksum(ours.sql) != sum {
            return Err(PgError::SchemaMismatch(format!(
                "migration {version} ({name}) applied to the database differs from this binary's {:04}_{}.sql",
                ours.version, ours.name
            )));
        }
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS {
        if rows.iter().any(|r| r.get::<_, i32>(0) == m.version) {
            continue;
        }
        tx.batch_execute(m.sql).await?;
        tx.execute(
            "INSERT INTO syncpay_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &checksum(m.sql)],
        )
        .await?;
        applied.push(m.version);
    }
    tx.commit().await?;
    Ok(MigrationReport { found, applied })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file in `migrations/` is listed, numbered 1, 2, 3… without a
    /// gap, and the list embeds exactly those files.
    #[test]
    fn the_list_matches_the_folder() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .expect("migrations folder")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        assert_eq!(files.len(), MIGRATIONS.len(), "files {files:?}");
        for (i, (file, m)) in files.iter().zip(MIGRATIONS).enumerate() {
            assert_eq!(m.version, i32::try_from(i + 1).expect("small"));
            assert_eq!(file, &format!("{:04}_{}.sql", m.version, m.name));
            assert_eq!(std::fs::read_to_string(dir.join(file)).expect("read"), m.sql);
        }
    }
}
