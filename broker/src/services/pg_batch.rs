//! The batcher behind `sql.enqueue`: one task per database drains its
//! queue in batches of up to `batch_max_rows` statements (waiting at most
//! `batch_linger_ms` for a batch to fill; while a batch is written the next
//! one piles up, so batches grow with the load).
//!
//! In a batch, consecutive statements with the same text that
//! [`Template::parse`] reads become one multi-row INSERT (at most
//! `batch_max_rows` rows and 65535 parameters); the others run as they are,
//! in order. A batch of one statement runs alone; a longer one in one
//! transaction. When the database rejects a batch, its statements are
//! retried one by one so only the bad ones are lost; when it is
//! unreachable, the batch is retried once on a new connection. Failed
//! statements are counted and logged (at most once a second per database).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use midge_plugin::{SqlError, SqlValue};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout_at, Instant};
use tokio_postgres::types::ToSql;

use super::pg_types::Param;
use super::postgres::Shared;
use super::sql_rewrite::Template;

/// Most parameters one statement may carry (the protocol's limit).
const MAX_PARAMS: usize = 65535;
/// Statement texts whose parse result is remembered.
const TEMPLATE_CACHE: usize = 256;

/// What the queue carries.
#[derive(Debug)]
pub enum Job {
    Run(Queued),
    /// Answered once everything queued before it is done.
    Flush(oneshot::Sender<()>),
}

/// One enqueued statement.
#[derive(Debug)]
pub struct Queued {
    pub plugin: Arc<str>,
    pub statement: String,
    pub params: Vec<SqlValue>,
}

/// A run of a batch: one multi-row INSERT or one statement as it is.
#[derive(Debug)]
enum Step<'a> {
    Rows(Arc<Template>, Vec<&'a Queued>),
    One(&'a Queued),
}

/// The batcher of one database; ends when the queue's senders are gone.
pub async fn run(db: Arc<Shared>, mut rx: mpsc::Receiver<Job>) {
    let max_rows = db.config.batch_max_rows.max(1);
    let linger = Duration::from_millis(db.config.batch_linger_ms);
    let mut templates: HashMap<String, Option<Arc<Template>>> = HashMap::new();
    let mut log = Throttle::default();
    let mut batch = Vec::with_capacity(max_rows);
    let mut flushes = Vec::new();
    while let Some(first) = rx.recv().await {
        match first {
            Job::Run(q) => batch.push(q),
            Job::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        }
        let deadline = Instant::now() + linger;
        while batch.len() < max_rows {
            // What is already queued first, then wait out the linger.
            let job = match rx.try_recv() {
                Ok(job) => job,
                Err(_) => match timeout_at(deadline, rx.recv()).await {
                    Ok(Some(job)) => job,
                    Ok(None) | Err(_) => break,
                },
            };
            match job {
                Job::Run(q) => batch.push(q),
                Job::Flush(done) => {
                    flushes.push(done);
                    break;
                }
            }
        }
        write(&db, &mut templates, &batch, &mut log).await;
        batch.clear();
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Writes one batch; counts and logs the outcome.
async fn write(
    db: &Shared,
    templates: &mut HashMap<String, Option<Arc<Template>>>,
    batch: &[Queued],
    log: &mut Throttle,
) {
    if templates.len() > TEMPLATE_CACHE {
        templates.clear();
    }
    let steps = plan(db.config.batch_max_rows.max(1), templates, batch);
    let mut result = attempt(db, &steps).await;
    if matches!(result, Err(SqlError::Unavailable(_))) {
        // A connection lost while idle: once more, on a new one.
        result = attempt(db, &steps).await;
    }
    let stats = &db.stats;
    match result {
        Ok(()) => {
            stats.rows.fetch_add(batch.len() as u64, Ordering::Relaxed);
            stats.batches.fetch_add(1, Ordering::Relaxed);
        }
        Err(SqlError::Rejected(_)) if batch.len() > 1 => {
            // One bad statement must not cost the others: one by one.
            for q in batch {
                match attempt(db, &[Step::One(q)]).await {
                    Ok(()) => {
                        stats.rows.fetch_add(1, Ordering::Relaxed);
                        stats.batches.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        stats.failures.fetch_add(1, Ordering::Relaxed);
                        log.warn(db, &[q], &e);
                    }
                }
            }
        }
        Err(e) => {
            stats
                .failures
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            log.warn(db, &batch.iter().collect::<Vec<_>>(), &e);
        }
    }
}

/// Groups a batch into steps.
fn plan<'a>(
    max_rows: usize,
    templates: &mut HashMap<String, Option<Arc<Template>>>,
    batch: &'a [Queued],
) -> Vec<Step<'a>> {
    let mut steps: Vec<Step<'a>> = Vec::new();
    for q in batch {
        let template = templates
            .entry(q.statement.clone())
            .or_insert_with(|| Template::parse(&q.statement).map(Arc::new))
            .clone()
            .filter(|t| t.params() == q.params.len());
        let Some(t) = template else {
            steps.push(Step::One(q));
            continue;
        };
        let limit = max_rows.min(MAX_PARAMS / t.params().max(1)).max(1);
        match steps.last_mut() {
            Some(Step::Rows(last, rows)) if Arc::ptr_eq(last, &t) && rows.len() < limit => {
                rows.push(q)
            }
            _ => steps.push(Step::Rows(t, vec![q])),
        }
    }
    steps
}

/// Runs the steps: alone, or in one transaction.
async fn attempt(db: &Shared, steps: &[Step<'_>]) -> Result<(), SqlError> {
    let deadline = Instant::now() + db.timeout();
    let mut conn = timeout_at(deadline, db.checkout())
        .await
        .map_err(|_| SqlError::Timeout)??;
    let run = async {
        let client = conn.client()?;
        if let [step] = steps {
            return exec(db, &*client, step).await;
        }
        let tx = client.transaction().await.map_err(|e| db.error(&e))?;
        for step in steps {
            exec(db, &tx, step).await?;
        }
        tx.commit().await.map_err(|e| db.error(&e))
    };
    match timeout_at(deadline, run).await {
        Ok(r) => r,
        Err(_) => {
            conn.discard();
            Err(SqlError::Timeout)
        }
    }
}

async fn exec<C: tokio_postgres::GenericClient>(
    db: &Shared,
    client: &C,
    step: &Step<'_>,
) -> Result<(), SqlError> {
    let (text, queued): (std::borrow::Cow<'_, str>, &[&Queued]) = match step {
        Step::One(q) => (q.statement.as_str().into(), std::slice::from_ref(q)),
        Step::Rows(_, rows) if rows.len() == 1 => (rows[0].statement.as_str().into(), &rows[..]),
        Step::Rows(t, rows) => (t.render(rows.len()).into(), &rows[..]),
    };
    let bound: Vec<Param<'_>> = queued
        .iter()
        .flat_map(|q| q.params.iter().map(Param))
        .collect();
    let refs: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|p| p as _).collect();
    client
        .execute(text.as_ref(), &refs)
        .await
        .map(|_| ())
        .map_err(|e| db.error(&e))
}

/// At most one failure log line a second per database, with the count of
/// those it held back.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    held: u64,
}

impl Throttle {
    fn warn(&mut self, db: &Shared, failed: &[&Queued], error: &SqlError) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.held += failed.len() as u64;
            return;
        }
        let mut plugins: Vec<&str> = failed.iter().map(|q| &*q.plugin).collect();
        plugins.sort_unstable();
        plugins.dedup();
        tracing::warn!(
            database = %db.name,
            plugins = %crate::logging::list(&plugins),
            statements = failed.len(),
            earlier_failures_not_logged = self.held,
            error = ?error,
            "sql capability: enqueued statements failed and were dropped"
        );
        self.last = Some(now);
        self.held = 0;
    }
}
