//! `[persistence]`: the settings of the durable store, and the factory that
//! opens the backend they name (the broker at start, `midge store` offline).

use serde::Deserialize;

use super::{Backend, StoreError};

/// `[persistence]` in the configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PersistenceConfig {
    /// Keep persistent sessions, their queues and retained messages across restarts.
    pub enabled: bool,
    /// "sled" (embedded, under `data_dir`) or "postgres" (`postgres_url`).
    pub backend: BackendKind,
    /// Directory of the sled store (`--data-dir` overrides).
    pub data_dir: std::path::PathBuf,
    /// libpq-style connection string, e.g. "host=127.0.0.1 port=5432 user=midge dbname=midge".
    pub postgres_url: Option<String>,
    /// "ack": a QoS 1/2 publish is acknowledged only once durable (default).
    /// "interval": write every `sync_interval_ms`, acknowledge at once (faster; a
    /// crash loses at most that interval of acknowledged messages).
    pub sync: SyncPolicy,
    pub sync_interval_ms: u64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    Sled,
    Postgres,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SyncPolicy {
    Ack,
    Interval,
}

impl Default for PersistenceConfig {
    fn default() -> Self {
        PersistenceConfig {
            enabled: false,
            backend: BackendKind::Sled,
            data_dir: "./data".into(),
            postgres_url: None,
            sync: SyncPolicy::Ack,
            sync_interval_ms: 100,
        }
    }
}

impl PersistenceConfig {
    /// Opens the configured backend without starting a commit thread,
    /// creating the store if there is none (the broker's start;
    /// [`super::Store::open`] starts the commit thread over it).
    pub fn open_backend(&self) -> Result<Box<dyn Backend>, StoreError> {
        Ok(match self.backend {
            BackendKind::Sled => Box::new(super::sled::SledBackend::open(&self.data_dir)?),
            BackendKind::Postgres => Box::new(super::postgres::PgBackend::open(self.pg_url()?)?),
        })
    }

    /// Opens the configured store for a tool (`midge store`): it must exist
    /// (a tool never creates a store, or a wrong path would read as an
    /// empty, healthy one), and a locked one means the broker is running.
    pub fn open_existing(&self) -> Result<Box<dyn Backend>, StoreError> {
        Ok(match self.backend {
            BackendKind::Sled => match super::sled::SledBackend::open_existing(&self.data_dir) {
                Ok(b) => Box::new(b),
                Err(StoreError::Locked { store }) => {
                    return Err(StoreError::Open {
                        store,
                        message: "the broker is running (the store is locked); stop it first"
                            .into(),
                    })
                }
                Err(e) => return Err(e),
            },
            BackendKind::Postgres => {
                Box::new(super::postgres::PgBackend::open_existing(self.pg_url()?)?)
            }
        })
    }

    fn pg_url(&self) -> Result<&str, StoreError> {
        self.postgres_url
            .as_deref()
            .ok_or_else(|| StoreError::Open {
                store: "postgres store".into(),
                message: "persistence.postgres_url is not set".into(),
            })
    }
}
