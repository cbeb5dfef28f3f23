//! The `sql` capability backed by PostgreSQL: one [`PgSql`] for all
//! `[plugins.databases.*]`, handed to the plugin host as its
//! [`SqlBackend`].
//!
//! Per database: a pool of at most `connections` connections, opened when
//! first needed and replaced after loss; `execute` / `query` check one out
//! for one statement. `enqueue` only puts the statement on a bounded queue
//! (`queue_capacity`; full: `queue-full`); the database's batcher task
//! (`pg_batch.rs`) drains it into multi-row INSERTs. Every call is bounded
//! by `timeout_ms` (a statement still running then is cancelled).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use midge_plugin::{
    BoxFuture, DatabaseConfig, SqlBackend, SqlError, SqlRejection, SqlRows, SqlValue,
};
use tokio::sync::{mpsc, oneshot, Semaphore, SemaphorePermit};
use tokio::time::{timeout_at, Instant};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};
use tracing::Instrument;

use super::pg_batch::{self, Job, Queued};
use super::pg_types::{readable, Cell, Param};

/// Counters of one database, for `/metrics`.
#[derive(Debug, Default)]
pub struct DbStats {
    /// Enqueued statements written.
    pub rows: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
    /// Enqueued statements that failed (rejected, or the database unreachable).
    pub failures: AtomicU64,
    /// `enqueue` calls refused because the queue was full.
    pub queue_full: AtomicU64,
}

/// One configured database as the metrics see it.
#[derive(Debug)]
pub struct DbView<'a> {
    pub name: &'a str,
    pub stats: &'a DbStats,
    /// Statements waiting in the enqueue queue.
    pub queued: usize,
}

/// The state a database's callers and its batcher share.
pub(crate) struct Shared {
    pub name: String,
    pub config: DatabaseConfig,
    pg: tokio_postgres::Config,
    idle: parking_lot::Mutex<Vec<Client>>,
    permits: Semaphore,
    pub stats: DbStats,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("name", &self.name)
            .finish()
    }
}

#[derive(Debug)]
struct Database {
    shared: Arc<Shared>,
    queue: mpsc::Sender<Job>,
}

/// The SQL backend over every configured database.
#[derive(Debug, Default)]
pub struct PgSql {
    dbs: BTreeMap<String, Database>,
}

/// Why [`PgSql::new`] refused the configuration.
#[derive(Debug, thiserror::Error)]
#[error("plugins.databases.{database}.url: {message}")]
pub struct PgConfigError {
    pub database: String,
    pub message: String,
}

impl PgSql {
    /// Parses each database's `url` and starts its batcher (on the current
    /// tokio runtime). Connections open on first use.
    pub fn new(databases: &BTreeMap<String, DatabaseConfig>) -> Result<PgSql, PgConfigError> {
        let mut dbs = BTreeMap::new();
        for (name, config) in databases {
            let pg = tokio_postgres::Config::from_str(&config.url).map_err(|e| PgConfigError {
                database: name.clone(),
                message: e.to_string(),
            })?;
            let shared = Arc::new(Shared {
                name: name.clone(),
                config: config.clone(),
                pg,
                idle: parking_lot::Mutex::new(Vec::new()),
                permits: Semaphore::new(config.connections.max(1)),
                stats: DbStats::default(),
            });
            let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
            let span = tracing::info_span!("sql_batcher", database = %name);
            tokio::spawn(pg_batch::run(shared.clone(), rx).instrument(span));
            dbs.insert(name.clone(), Database { shared, queue: tx });
        }
        Ok(PgSql { dbs })
    }

    fn db(&self, database: &str) -> Result<&Database, SqlError> {
        self.dbs.get(database).ok_or_else(|| {
            SqlError::Unavailable(format!(
                "database `{database}` is not configured in [plugins.databases]"
            ))
        })
    }

    /// The databases and their counters.
    pub fn databases(&self) -> impl Iterator<Item = DbView<'_>> {
        self.dbs.values().map(|d| DbView {
            name: &d.shared.name,
            stats: &d.shared.stats,
            queued: d.queue.max_capacity() - d.queue.capacity(),
        })
    }

    /// Waits (at most `wait`) until every statement enqueued so far has
    /// been written or has failed. Returns whether all databases finished.
    pub async fn flush(&self, wait: Duration) -> bool {
        let all = self.dbs.values().map(|d| async move {
            let (tx, rx) = oneshot::channel();
            d.queue.send(Job::Flush(tx)).await.is_ok() && rx.await.is_ok()
        });
        match tokio::time::timeout(wait, futures_util::future::join_all(all)).await {
            Ok(done) => done.into_iter().all(|ok| ok),
            Err(_) => false,
        }
    }
}

/// A pooled connection, back to the pool on drop unless broken.
pub(crate) struct Conn<'a> {
    shared: &'a Shared,
    client: Option<Client>,
    _permit: SemaphorePermit<'a>,
}

impl Conn<'_> {
    /// The connection (always there until `discard`, which consumes self).
    pub fn client(&mut self) -> Result<&mut Client, SqlError> {
        let shared = self.shared;
        self.client
            .as_mut()
            .ok_or_else(|| shared.unavailable("connection discarded"))
    }

    /// Drops a connection that may be mid-statement, cancelling what runs.
    pub fn discard(mut self) {
        if let Some(c) = self.client.take() {
            let token = c.cancel_token();
            tokio::spawn(async move {
                let _ = token.cancel_query(NoTls).await;
            });
        }
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            if !c.is_closed() {
                self.shared.idle.lock().push(c);
            }
        }
    }
}

impl Shared {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout_ms)
    }

    pub fn unavailable(&self, why: impl std::fmt::Display) -> SqlError {
        SqlError::Unavailable(format!("database `{}`: {why}", self.name))
    }

    /// A connection: an idle one, or a new one.
    pub async fn checkout(&self) -> Result<Conn<'_>, SqlError> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| self.unavailable("closed"))?;
        let idle = {
            let mut idle = self.idle.lock();
            loop {
                match idle.pop() {
                    Some(c) if c.is_closed() => continue,
                    other => break other,
                }
            }
        };
        let client = match idle {
            Some(c) => c,
            None => {
                let (client, conn) = self
                    .pg
                    .connect(NoTls)
                    .await
                    .map_err(|e| self.unavailable(format_args!("cannot connect: {e}")))?;
                let name = self.name.clone();
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::warn!(database = %name, error = %e, "sql capability: connection ended");
                    }
                });
                client
            }
        };
        Ok(Conn {
            shared: self,
            client: Some(client),
            _permit: permit,
        })
    }

    /// The plugin's view of a driver error.
    pub fn error(&self, e: &tokio_postgres::Error) -> SqlError {
        if let Some(db) = e.as_db_error() {
            let mut message = db.message().to_string();
            if let Some(d) = db.detail() {
                message = format!("{message} ({d})");
            }
            return SqlError::Rejected(SqlRejection {
                code: Some(db.code().code().to_string()),
                message,
            });
        }
        if e.is_closed() || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()) {
            return self.unavailable(e);
        }
        // Client-side refusals: a parameter that does not fit its column,
        // a wrong parameter count.
        SqlError::Rejected(SqlRejection {
            code: None,
            message: match std::error::Error::source(e) {
                Some(s) => format!("{e}: {s}"),
                None => e.to_string(),
            },
        })
    }

    /// Runs `statement` once: rows affected.
    async fn execute(&self, statement: &str, params: &[SqlValue]) -> Result<u64, SqlError> {
        let deadline = Instant::now() + self.timeout();
        let mut conn = timeout_at(deadline, self.checkout())
            .await
            .map_err(|_| SqlError::Timeout)??;
        let bound: Vec<Param<'_>> = params.iter().map(Param).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|p| p as _).collect();
        match timeout_at(deadline, conn.client()?.execute(statement, &refs)).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(self.error(&e)),
            Err(_) => {
                conn.discard();
                Err(SqlError::Timeout)
            }
        }
    }

    /// Runs `statement` once: its rows.
    async fn query(&self, statement: &str, params: &[SqlValue]) -> Result<SqlRows, SqlError> {
        let deadline = Instant::now() + self.timeout();
        let mut conn = timeout_at(deadline, self.checkout())
            .await
            .map_err(|_| SqlError::Timeout)??;
        let bound: Vec<Param<'_>> = params.iter().map(Param).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|p| p as _).collect();
        let run = async {
            let client = conn.client()?;
            let prepared = client
                .prepare(statement)
                .await
                .map_err(|e| self.error(&e))?;
            let columns = prepared.columns();
            if let Some(c) = columns.iter().find(|c| !readable(c.type_())) {
                return Err(SqlError::Rejected(SqlRejection {
                    code: None,
                    message: format!(
                        "database `{}`: result column `{}` has type {}, which the sql capability cannot return (cast it, e.g. to text)",
                        self.name,
                        c.name(),
                        c.type_()
                    ),
                }));
            }
            let names = columns.iter().map(|c| c.name().to_string()).collect();
            let rows = client
                .query(&prepared, &refs)
                .await
                .map_err(|e| self.error(&e))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                let mut values = Vec::with_capacity(row.len());
                for i in 0..row.len() {
                    let Cell(v) = row.try_get(i).map_err(|e| self.error(&e))?;
                    values.push(v);
                }
                out.push(values);
            }
            Ok(SqlRows {
                columns: names,
                rows: out,
            })
        };
        match timeout_at(deadline, run).await {
            Ok(r) => r,
            Err(_) => {
                conn.discard();
                Err(SqlError::Timeout)
            }
        }
    }
}

impl SqlBackend for PgSql {
    fn execute<'a>(
        &'a self,
        _plugin: &'a str,
        database: &'a str,
        statement: String,
        params: Vec<SqlValue>,
    ) -> BoxFuture<'a, Result<u64, SqlError>> {
        Box::pin(async move { self.db(database)?.shared.execute(&statement, &params).await })
    }

    fn query<'a>(
        &'a self,
        _plugin: &'a str,
        database: &'a str,
        statement: String,
        params: Vec<SqlValue>,
    ) -> BoxFuture<'a, Result<SqlRows, SqlError>> {
        Box::pin(async move { self.db(database)?.shared.query(&statement, &params).await })
    }

    fn enqueue(
        &self,
        plugin: &str,
        database: &str,
        statement: String,
        params: Vec<SqlValue>,
    ) -> Result<(), SqlError> {
        let db = self.db(database)?;
        let job = Job::Run(Queued {
            plugin: plugin.into(),
            statement,
            params,
        });
        db.queue.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                db.shared.stats.queue_full.fetch_add(1, Ordering::Relaxed);
                SqlError::QueueFull
            }
            mpsc::error::TrySendError::Closed(_) => {
                db.shared.unavailable("the batcher has stopped")
            }
        })
    }
}
