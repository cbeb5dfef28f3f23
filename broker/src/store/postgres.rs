//! The PostgreSQL backend. Midge creates and migrates its own schema (table
//! `midge_schema` holds the version). Each batch is one transaction: the
//! cleared clients' rows are deleted, then each table gets one multi-row
//! upsert (`unnest` of arrays) and one multi-row delete, so a batch costs a
//! handful of statements and one commit however many messages it carries.
//!
//! tokio-postgres runs on a private current-thread runtime owned by the
//! store's commit thread, away from the broker's workers.

use std::sync::Arc;

use tokio_postgres::{Client, NoTls};

use super::{Backend, Batch, Key, StoreError};

/// Schema migrations, applied in order; `midge_schema.version` records how far.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE midge_sessions (client_id text PRIMARY KEY, data bytea NOT NULL);
     CREATE TABLE midge_subscriptions (client_id text NOT NULL, filter text NOT NULL,
         data bytea NOT NULL, PRIMARY KEY (client_id, filter));
     CREATE TABLE midge_queue (client_id text NOT NULL, seq bigint NOT NULL,
         data bytea NOT NULL, PRIMARY KEY (client_id, seq));
     CREATE TABLE midge_inflight (client_id text NOT NULL, seq bigint NOT NULL,
         data bytea NOT NULL, PRIMARY KEY (client_id, seq));
     CREATE TABLE midge_incoming_qos2 (client_id text NOT NULL, packet_id integer NOT NULL,
         PRIMARY KEY (client_id, packet_id));
     CREATE TABLE midge_retained (topic text PRIMARY KEY, data bytea NOT NULL);",
    // 2: the bridges' outbound buffers and incoming QoS 2 ids (the bridge/ module),
    // keyed by bridge name: the same shapes as the sessions' tables.
    "CREATE TABLE midge_bridge_queue (bridge text NOT NULL, seq bigint NOT NULL,
         data bytea NOT NULL, PRIMARY KEY (bridge, seq));
     CREATE TABLE midge_bridge_inflight (bridge text NOT NULL, seq bigint NOT NULL,
         data bytea NOT NULL, PRIMARY KEY (bridge, seq));
     CREATE TABLE midge_bridge_qos2 (bridge text NOT NULL, packet_id integer NOT NULL,
         PRIMARY KEY (bridge, packet_id));",
];

/// The tables of a bridge, deleted together by `DropBridge`.
const BRIDGE_TABLES: [&str; 3] = [
    "midge_bridge_queue",
    "midge_bridge_inflight",
    "midge_bridge_qos2",
];

pub struct PgBackend {
    url_shown: String,
    url_full: String,
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackend")
            .field("url", &self.url_shown)
            .finish()
    }
}

/// The connection string without its password, for messages.
fn redact(url: &str) -> String {
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl PgBackend {
    /// Connects and creates or migrates the schema (the broker).
    pub fn open(url: &str) -> Result<PgBackend, StoreError> {
        PgBackend::connect(url, false)
    }

    /// Connects to a store that must exist already (`midge store`).
    pub fn open_existing(url: &str) -> Result<PgBackend, StoreError> {
        PgBackend::connect(url, true)
    }

    fn connect(url: &str, existing: bool) -> Result<PgBackend, StoreError> {
        let url_shown = redact(url);
        let store = format!("postgres store ({url_shown})");
        let open_err = |message: String| StoreError::Open {
            store: store.clone(),
            message,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| open_err(format!("runtime: {e}")))?;
        let client = rt
            .block_on(connect(url))
            .map_err(|e| open_err(e.to_string()))?;
        let mut b = PgBackend {
            url_shown,
            url_full: url.to_string(),
            rt,
            client,
        };
        if existing {
            b.check_schema().map_err(open_err)?;
        } else {
            b.migrate().map_err(|e| open_err(format!("schema: {e}")))?;
        }
        Ok(b)
    }

    /// For `midge store`: the schema must be there, at this version (a
    /// tool never creates or migrates tables).
    fn check_schema(&mut self) -> Result<(), String> {
        let client = &self.client;
        let version: Option<i32> = self
            .rt
            .block_on(async {
                let exists = client
                    .query_one("SELECT to_regclass('midge_schema') IS NOT NULL", &[])
                    .await?
                    .get::<_, bool>(0);
                if !exists {
                    return Ok(None);
                }
                let row = client
                    .query_opt("SELECT version FROM midge_schema", &[])
                    .await?;
                Ok::<_, tokio_postgres::Error>(Some(row.map(|r| r.get(0)).unwrap_or(0)))
            })
            .map_err(|e| e.to_string())?;
        match version {
            None => Err("no midge store in this database (no table midge_schema)".into()),
            Some(v) if v as usize == MIGRATIONS.len() => Ok(()),
            Some(v) => Err(format!(
                "schema version {v}, this midge reads {} (start the broker once to migrate it)",
                MIGRATIONS.len()
            )),
        }
    }

    fn migrate(&mut self) -> Result<(), tokio_postgres::Error> {
        let client = &mut self.client;
        self.rt.block_on(async {
            client
                .batch_execute("CREATE TABLE IF NOT EXISTS midge_schema (version integer NOT NULL)")
                .await?;
            let tx = client.transaction().await?;
            tx.batch_execute("LOCK TABLE midge_schema IN EXCLUSIVE MODE")
                .await?;
            let row = tx
                .query_opt("SELECT version FROM midge_schema", &[])
                .await?;
            let have = match row {
                Some(r) => r.get::<_, i32>(0) as usize,
                None => {
                    tx.execute("INSERT INTO midge_schema VALUES (0)", &[])
                        .await?;
                    0
                }
            };
            for (i, m) in MIGRATIONS.iter().enumerate().skip(have) {
                tx.batch_execute(m).await?;
                tx.execute("UPDATE midge_schema SET version = $1", &[&((i + 1) as i32)])
                    .await?;
            }
            tx.commit().await
        })
    }

    fn io(&self, e: tokio_postgres::Error) -> StoreError {
        StoreError::Io {
            store: self.describe(),
            message: e.to_string(),
        }
    }

    /// Reconnects after the server closed the connection.
    fn reconnect(&mut self, url: &str) -> Result<(), StoreError> {
        let client = self.rt.block_on(connect(url)).map_err(|e| self.io(e))?;
        self.client = client;
        Ok(())
    }
}

async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "postgres store connection ended");
        }
    });
    Ok(client)
}

/// Per-table rows of one batch.
#[derive(Default)]
struct Rows {
    put_sessions: (Vec<String>, Vec<Vec<u8>>),
    del_sessions: Vec<String>,
    put_subs: (Vec<String>, Vec<String>, Vec<Vec<u8>>),
    del_subs: (Vec<String>, Vec<String>),
    put_queue: (Vec<String>, Vec<i64>, Vec<Vec<u8>>),
    del_queue: (Vec<String>, Vec<i64>),
    put_inflight: (Vec<String>, Vec<i64>, Vec<Vec<u8>>),
    del_inflight: (Vec<String>, Vec<i64>),
    put_qos2: (Vec<String>, Vec<i32>),
    del_qos2: (Vec<String>, Vec<i32>),
    put_retained: (Vec<String>, Vec<Vec<u8>>),
    del_retained: Vec<String>,
    put_bqueue: (Vec<String>, Vec<i64>, Vec<Vec<u8>>),
    del_bqueue: (Vec<String>, Vec<i64>),
    put_binflight: (Vec<String>, Vec<i64>, Vec<Vec<u8>>),
    del_binflight: (Vec<String>, Vec<i64>),
    put_bqos2: (Vec<String>, Vec<i32>),
    del_bqos2: (Vec<String>, Vec<i32>),
}

fn put3(t: &mut (Vec<String>, Vec<i64>, Vec<Vec<u8>>), o: &str, s: u64, v: &[u8]) {
    t.0.push(o.to_string());
    t.1.push(s as i64);
    t.2.push(v.to_vec());
}

fn push2<N>(t: &mut (Vec<String>, Vec<N>), o: &str, n: N) {
    t.0.push(o.to_string());
    t.1.push(n);
}

impl Rows {
    fn from(batch: &Batch) -> Rows {
        let mut r = Rows::default();
        for (k, v) in &batch.writes {
            match (k, v) {
                (Key::Session(c), Some(v)) => {
                    r.put_sessions.0.push(c.to_string());
                    r.put_sessions.1.push(v.clone());
                }
                (Key::Session(c), None) => r.del_sessions.push(c.to_string()),
                (Key::Sub(c, f), Some(v)) => {
                    r.put_subs.0.push(c.to_string());
                    r.put_subs.1.push(f.clone());
                    r.put_subs.2.push(v.clone());
                }
                (Key::Sub(c, f), None) => {
                    r.del_subs.0.push(c.to_string());
                    r.del_subs.1.push(f.clone());
                }
                (Key::Queue(c, s), Some(v)) => {
                    r.put_queue.0.push(c.to_string());
                    r.put_queue.1.push(*s as i64);
                    r.put_queue.2.push(v.clone());
                }
                (Key::Queue(c, s), None) => {
                    r.del_queue.0.push(c.to_string());
                    r.del_queue.1.push(*s as i64);
                }
                (Key::Inflight(c, s), Some(v)) => {
                    r.put_inflight.0.push(c.to_string());
                    r.put_inflight.1.push(*s as i64);
                    r.put_inflight.2.push(v.clone());
                }
                (Key::Inflight(c, s), None) => {
                    r.del_inflight.0.push(c.to_string());
                    r.del_inflight.1.push(*s as i64);
                }
                (Key::Qos2(c, id), Some(_)) => {
                    r.put_qos2.0.push(c.to_string());
                    r.put_qos2.1.push(i32::from(*id));
                }
                (Key::Qos2(c, id), None) => {
                    r.del_qos2.0.push(c.to_string());
                    r.del_qos2.1.push(i32::from(*id));
                }
                (Key::Retained(t), Some(v)) => {
                    r.put_retained.0.push(t.clone());
                    r.put_retained.1.push(v.clone());
                }
                (Key::Retained(t), None) => r.del_retained.push(t.clone()),
                (Key::BridgeQueue(b, s), Some(v)) => put3(&mut r.put_bqueue, b, *s, v),
                (Key::BridgeQueue(b, s), None) => push2(&mut r.del_bqueue, b, *s as i64),
                (Key::BridgeInflight(b, s), Some(v)) => put3(&mut r.put_binflight, b, *s, v),
                (Key::BridgeInflight(b, s), None) => push2(&mut r.del_binflight, b, *s as i64),
                (Key::BridgeQos2(b, id), Some(_)) => push2(&mut r.put_bqos2, b, i32::from(*id)),
                (Key::BridgeQos2(b, id), None) => push2(&mut r.del_bqos2, b, i32::from(*id)),
            }
        }
        r
    }
}

async fn write(client: &mut Client, batch: &Batch) -> Result<(), tokio_postgres::Error> {
    let r = Rows::from(batch);
    let tx = client.transaction().await?;
    if !batch.cleared.is_empty() {
        let ids: Vec<String> = batch.cleared.iter().map(|c| c.to_string()).collect();
        for table in [
            "midge_sessions",
            "midge_subscriptions",
            "midge_queue",
            "midge_inflight",
            "midge_incoming_qos2",
        ] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE client_id = ANY($1)"),
                &[&ids],
            )
            .await?;
        }
    }
    if !batch.cleared_bridges.is_empty() {
        let names: Vec<String> = batch
            .cleared_bridges
            .iter()
            .map(|c| c.to_string())
            .collect();
        for table in BRIDGE_TABLES {
            tx.execute(
                &format!("DELETE FROM {table} WHERE bridge = ANY($1)"),
                &[&names],
            )
            .await?;
        }
    }
    // Deletes before upserts: a key is in at most one of the two lists.
    if !r.del_sessions.is_empty() {
        tx.execute(
            "DELETE FROM midge_sessions WHERE client_id = ANY($1)",
            &[&r.del_sessions],
        )
        .await?;
    }
    if !r.del_subs.0.is_empty() {
        tx.execute(
            "DELETE FROM midge_subscriptions t USING unnest($1::text[], $2::text[]) AS d(c, f)
             WHERE t.client_id = d.c AND t.filter = d.f",
            &[&r.del_subs.0, &r.del_subs.1],
        )
        .await?;
    }
    for (table, owner, del) in [
        ("midge_queue", "client_id", &r.del_queue),
        ("midge_inflight", "client_id", &r.del_inflight),
        ("midge_bridge_queue", "bridge", &r.del_bqueue),
        ("midge_bridge_inflight", "bridge", &r.del_binflight),
    ] {
        if !del.0.is_empty() {
            tx.execute(
                &format!(
                    "DELETE FROM {table} t USING unnest($1::text[], $2::bigint[]) AS d(c, s)
                     WHERE t.{owner} = d.c AND t.seq = d.s"
                ),
                &[&del.0, &del.1],
            )
            .await?;
        }
    }
    for (table, owner, del) in [
        ("midge_incoming_qos2", "client_id", &r.del_qos2),
        ("midge_bridge_qos2", "bridge", &r.del_bqos2),
    ] {
        if !del.0.is_empty() {
            tx.execute(
                &format!(
                    "DELETE FROM {table} t USING unnest($1::text[], $2::int[]) AS d(c, p)
                     WHERE t.{owner} = d.c AND t.packet_id = d.p"
                ),
                &[&del.0, &del.1],
            )
            .await?;
        }
    }
    if !r.del_retained.is_empty() {
        tx.execute(
            "DELETE FROM midge_retained WHERE topic = ANY($1)",
            &[&r.del_retained],
        )
        .await?;
    }
    if !r.put_sessions.0.is_empty() {
        tx.execute(
            "INSERT INTO midge_sessions SELECT * FROM unnest($1::text[], $2::bytea[])
             ON CONFLICT (client_id) DO UPDATE SET data = excluded.data",
            &[&r.put_sessions.0, &r.put_sessions.1],
        )
        .await?;
    }
    if !r.put_subs.0.is_empty() {
        tx.execute(
            "INSERT INTO midge_subscriptions
             SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])
             ON CONFLICT (client_id, filter) DO UPDATE SET data = excluded.data",
            &[&r.put_subs.0, &r.put_subs.1, &r.put_subs.2],
        )
        .await?;
    }
    for (table, owner, put) in [
        ("midge_queue", "client_id", &r.put_queue),
        ("midge_inflight", "client_id", &r.put_inflight),
        ("midge_bridge_queue", "bridge", &r.put_bqueue),
        ("midge_bridge_inflight", "bridge", &r.put_binflight),
    ] {
        if !put.0.is_empty() {
            tx.execute(
                &format!(
                    "INSERT INTO {table} SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[])
                     ON CONFLICT ({owner}, seq) DO UPDATE SET data = excluded.data"
                ),
                &[&put.0, &put.1, &put.2],
            )
            .await?;
        }
    }
    for (table, put) in [
        ("midge_incoming_qos2", &r.put_qos2),
        ("midge_bridge_qos2", &r.put_bqos2),
    ] {
        if !put.0.is_empty() {
            tx.execute(
                &format!(
                    "INSERT INTO {table} SELECT * FROM unnest($1::text[], $2::int[])
                     ON CONFLICT DO NOTHING"
                ),
                &[&put.0, &put.1],
            )
            .await?;
        }
    }
    if !r.put_retained.0.is_empty() {
        tx.execute(
            "INSERT INTO midge_retained SELECT * FROM unnest($1::text[], $2::bytea[])
             ON CONFLICT (topic) DO UPDATE SET data = excluded.data",
            &[&r.put_retained.0, &r.put_retained.1],
        )
        .await?;
    }
    tx.commit().await
}

async fn load(client: &Client) -> Result<Vec<(Key, Vec<u8>)>, tokio_postgres::Error> {
    let mut out = Vec::new();
    for row in client
        .query("SELECT client_id, data FROM midge_sessions", &[])
        .await?
    {
        out.push((Key::Session(Arc::from(row.get::<_, &str>(0))), row.get(1)));
    }
    for row in client
        .query(
            "SELECT client_id, filter, data FROM midge_subscriptions",
            &[],
        )
        .await?
    {
        out.push((
            Key::Sub(Arc::from(row.get::<_, &str>(0)), row.get(1)),
            row.get(2),
        ));
    }
    for row in client
        .query("SELECT client_id, seq, data FROM midge_queue", &[])
        .await?
    {
        out.push((
            Key::Queue(
                Arc::from(row.get::<_, &str>(0)),
                row.get::<_, i64>(1) as u64,
            ),
            row.get(2),
        ));
    }
    for row in client
        .query("SELECT client_id, seq, data FROM midge_inflight", &[])
        .await?
    {
        out.push((
            Key::Inflight(
                Arc::from(row.get::<_, &str>(0)),
                row.get::<_, i64>(1) as u64,
            ),
            row.get(2),
        ));
    }
    for row in client
        .query("SELECT client_id, packet_id FROM midge_incoming_qos2", &[])
        .await?
    {
        let id = row.get::<_, i32>(1);
        out.push((
            Key::Qos2(
                Arc::from(row.get::<_, &str>(0)),
                u16::try_from(id).unwrap_or(0),
            ),
            Vec::new(),
        ));
    }
    for row in client
        .query("SELECT topic, data FROM midge_retained", &[])
        .await?
    {
        out.push((Key::Retained(row.get(0)), row.get(1)));
    }
    for (table, inflight) in [
        ("midge_bridge_queue", false),
        ("midge_bridge_inflight", true),
    ] {
        let q = format!("SELECT bridge, seq, data FROM {table}");
        for row in client.query(&q, &[]).await? {
            let b: Arc<str> = Arc::from(row.get::<_, &str>(0));
            let s = row.get::<_, i64>(1) as u64;
            let key = if inflight {
                Key::BridgeInflight(b, s)
            } else {
                Key::BridgeQueue(b, s)
            };
            out.push((key, row.get(2)));
        }
    }
    for row in client
        .query("SELECT bridge, packet_id FROM midge_bridge_qos2", &[])
        .await?
    {
        let id = row.get::<_, i32>(1);
        out.push((
            Key::BridgeQos2(
                Arc::from(row.get::<_, &str>(0)),
                u16::try_from(id).unwrap_or(0),
            ),
            Vec::new(),
        ));
    }
    Ok(out)
}

impl Backend for PgBackend {
    fn describe(&self) -> String {
        format!("postgres store ({})", self.url_shown)
    }

    fn load(&mut self) -> Result<Vec<(Key, Vec<u8>)>, StoreError> {
        let client = &self.client;
        self.rt.block_on(load(client)).map_err(|e| self.io(e))
    }

    fn commit(&mut self, batch: &Batch) -> Result<(), StoreError> {
        let client = &mut self.client;
        let res = self.rt.block_on(write(client, batch));
        match res {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = self.io(e);
                if self.client.is_closed() {
                    // The retry (by the commit loop) runs on a fresh connection.
                    let url = self.url_full.clone();
                    let _ = self.reconnect(&url);
                }
                Err(err)
            }
        }
    }
}
