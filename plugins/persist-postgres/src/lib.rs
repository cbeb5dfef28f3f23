//! # persist-postgres: archive messages to PostgreSQL
//!
//! Every message whose topic matches one of `filters` (on-publish), and
//! every row a rule hands to this plugin (`actions = [{ type = "plugin",
//! plugin = "NAME" }]`), becomes one row of `table`. Rows go through
//! `sql::enqueue`: the broker batches them into multi-row INSERTs, so no
//! message waits for the database. Messages always pass on unchanged.
//!
//! ```toml
//! [plugins.databases.archive]
//! url = "host=127.0.0.1 user=midge dbname=archive"
//!
//! [[plugins.plugin]]
//! name = "pg"
//! path = "plugins/target/wasm32-wasip2/release/persist_postgres.wasm"
//! grants = { sql = "archive" }        # required: the database to write to
//! [plugins.plugin.config]
//! table = "mqtt_messages"             # default; `name` or `schema.name`
//! filters = ["sensors/#"]             # archived from on-publish; [] (default): rule rows only
//! create_table = true                 # default: CREATE TABLE IF NOT EXISTS at start
//! ```
//!
//! The table (created as below when `create_table` is on):
//!
//! | column        | type          | published message              | rule row                        |
//! |---------------|---------------|--------------------------------|---------------------------------|
//! | `id`          | `bigserial`   |                                |                                 |
//! | `topic`       | `text`        | topic                          | field `topic`                   |
//! | `payload`     | `bytea`       | payload                        | field `payload` (a string as its UTF-8, a binary `{"$binary": ...}` as its bytes, anything else as JSON text) |
//! | `qos`         | `smallint`    | QoS                            | field `qos`                     |
//! | `retain`      | `boolean`     | retain flag                    | field `retain`                  |
//! | `client_id`   | `text`        | publisher's client id          | field `clientid` (or `client_id`) |
//! | `username`    | `text`        | publisher's user name          | field `username`                |
//! | `properties`  | `jsonb`       | MQTT 5 properties: `{"user_properties": [[k, v], ...], "content_type", "response_topic", "correlation_data" (hex), "message_expiry_interval", "payload_is_utf8"}` (absent ones left out) | `NULL` |
//! | `rule`        | `text`        | `NULL`                         | the rule's id                   |
//! | `row`         | `jsonb`       | `NULL`                         | the whole row                   |
//! | `received_at` | `timestamptz` | broker time of the hook call   | same                            |
//!
//! When the database is unreachable at start, the table is not created (a
//! warning is logged) and the broker starts anyway; rows that cannot be
//! written are counted by the broker (`midge_plugin_sql_failures_total`).

use midge_sdk::serde_json::{self, Map, Value};
use midge_sdk::sql::{SqlError, SqlValue};
use midge_sdk::*;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_table")]
    table: String,
    #[serde(default)]
    filters: Vec<String>,
    #[serde(default = "yes")]
    create_table: bool,
}

fn default_table() -> String {
    "mqtt_messages".into()
}

fn yes() -> bool {
    true
}

struct PersistPostgres {
    insert: String,
}

/// `name` or `schema.name`: unquoted SQL identifiers of at most 63 bytes.
fn valid_table(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() <= 2
        && parts.iter().all(|p| {
            let mut chars = p.chars();
            matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
                && p.len() <= 63
        })
}

fn create_statement(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (
            id bigserial PRIMARY KEY,
            topic text,
            payload bytea,
            qos smallint,
            retain boolean,
            client_id text,
            username text,
            properties jsonb,
            rule text,
            row jsonb,
            received_at timestamptz NOT NULL DEFAULT now()
        )"
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn properties(p: &MessageProperties) -> Value {
    let mut o = Map::new();
    if p.payload_is_utf8 {
        o.insert("payload_is_utf8".into(), Value::Bool(true));
    }
    if let Some(e) = p.message_expiry_interval {
        o.insert("message_expiry_interval".into(), e.into());
    }
    if let Some(c) = &p.content_type {
        o.insert("content_type".into(), c.clone().into());
    }
    if let Some(r) = &p.response_topic {
        o.insert("response_topic".into(), r.clone().into());
    }
    if let Some(c) = &p.correlation_data {
        o.insert("correlation_data".into(), hex(c).into());
    }
    if !p.user_properties.is_empty() {
        let pairs = p
            .user_properties
            .iter()
            .map(|(k, v)| Value::Array(vec![k.clone().into(), v.clone().into()]))
            .collect();
        o.insert("user_properties".into(), Value::Array(pairs));
    }
    Value::Object(o)
}

fn qos_number(q: Qos) -> i64 {
    match q {
        Qos::AtMostOnce => 0,
        Qos::AtLeastOnce => 1,
        Qos::ExactlyOnce => 2,
    }
}

fn text_or_null(v: Option<String>) -> SqlValue {
    v.map_or(SqlValue::Null, SqlValue::Text)
}

fn now() -> SqlValue {
    SqlValue::TimestampMillis(i64::try_from(clock::now_millis()).unwrap_or(i64::MAX))
}

/// A rule row's field as a column value.
fn field_text(row: &Map<String, Value>, names: &[&str]) -> SqlValue {
    names
        .iter()
        .find_map(|n| row.get(*n))
        .map_or(SqlValue::Null, |v| match v {
            Value::Null => SqlValue::Null,
            Value::String(s) => SqlValue::Text(s.clone()),
            other => SqlValue::Text(other.to_string()),
        })
}

impl Plugin for PersistPostgres {
    fn init(config: &str) -> Result<(Self, Manifest), InitError> {
        let config: Config = parse_config(config)?;
        if !valid_table(&config.table) {
            return Err(InitError::BadConfig(format!(
                "table: {:?} is not a plain SQL identifier (letters, digits, `_`, optionally `schema.name`, at most 63 characters each)",
                config.table
            )));
        }
        for f in &config.filters {
            if f.is_empty() {
                return Err(InitError::BadConfig(
                    "filters: an empty topic filter".into(),
                ));
            }
        }
        if config.create_table {
            match sql::execute(&create_statement(&config.table), &[]) {
                Ok(_) => {}
                Err(SqlError::Unavailable(why)) => log::warn(&format!(
                    "table {} not created (database unavailable: {why}); rows will fail until it exists",
                    config.table
                )),
                Err(e) => {
                    return Err(InitError::Failed(format!(
                        "creating table {}: {}",
                        config.table,
                        describe(&e)
                    )))
                }
            }
        }
        let insert = format!(
            "INSERT INTO {} (topic, payload, qos, retain, client_id, username, properties, rule, row, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            config.table
        );
        let mut manifest =
            Manifest::new("persist-postgres", env!("CARGO_PKG_VERSION")).on_rule_output();
        if !config.filters.is_empty() {
            manifest = manifest.on_publish(config.filters);
        }
        Ok((PersistPostgres { insert }, manifest))
    }

    fn on_publish(&mut self, message: Message, publisher: Option<Client>) -> PublishDecision {
        let (client_id, username) = match publisher {
            Some(c) => (Some(c.client_id), c.username),
            None => (None, None),
        };
        let props = properties(&message.properties).to_string();
        let params = [
            SqlValue::Text(message.topic),
            SqlValue::Bytes(message.payload),
            SqlValue::Int(qos_number(message.qos)),
            SqlValue::Boolean(message.retain),
            text_or_null(client_id),
            text_or_null(username),
            SqlValue::Json(props),
            SqlValue::Null,
            SqlValue::Null,
            now(),
        ];
        // Failures (queue full, database down) are the broker's to count;
        // the message goes on regardless.
        let _ = sql::enqueue(&self.insert, &params);
        PublishDecision::Pass
    }

    fn on_rule_output(&mut self, rule: String, rows_json: String) -> Result<(), HookError> {
        let rows: Vec<Value> =
            serde_json::from_str(&rows_json).map_err(|e| HookError::BadInput(e.to_string()))?;
        for row in rows {
            let Value::Object(fields) = &row else {
                return Err(HookError::BadInput(format!(
                    "rule {rule}: a row is not a JSON object"
                )));
            };
            // A binary payload (not UTF-8) arrives as {"$binary": ...}:
            // stored as its bytes.
            let payload = fields
                .get("payload")
                .and_then(midge_sdk::binary::bytes)
                .map_or(SqlValue::Null, SqlValue::Bytes);
            let qos = fields
                .get("qos")
                .and_then(Value::as_i64)
                .map_or(SqlValue::Null, SqlValue::Int);
            let retain = fields
                .get("retain")
                .and_then(Value::as_bool)
                .map_or(SqlValue::Null, SqlValue::Boolean);
            let params = [
                field_text(fields, &["topic"]),
                payload,
                qos,
                retain,
                field_text(fields, &["clientid", "client_id"]),
                field_text(fields, &["username"]),
                SqlValue::Null,
                SqlValue::Text(rule.clone()),
                SqlValue::Json(row.to_string()),
                now(),
            ];
            sql::enqueue(&self.insert, &params)
                .map_err(|e| HookError::Failed(format!("rule {rule}: {}", describe(&e))))?;
        }
        Ok(())
    }
}

fn describe(e: &SqlError) -> String {
    match e {
        SqlError::NotGranted => "no database granted (grants.sql)".into(),
        SqlError::Unavailable(why) => format!("database unavailable: {why}"),
        SqlError::QueueFull => "the broker's sql queue is full".into(),
        SqlError::Rejected(r) => match &r.code {
            Some(code) => format!("rejected ({code}): {}", r.message),
            None => format!("rejected: {}", r.message),
        },
        SqlError::Timeout => "timed out".into(),
    }
}

export_plugin!(PersistPostgres);
