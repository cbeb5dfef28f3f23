//! Native I/O the broker does on plugins' behalf, behind the capability
//! traits of `midge-plugin` (`SqlBackend`, ...): the plugin host checks the
//! grant, these modules do the work.
//!
//! - `postgres`: the `sql` capability over `[plugins.databases.*]` (pool,
//!   type mapping in `pg_types`, the `enqueue` batcher in `pg_batch`, its
//!   INSERT rewriting in `sql_rewrite`).
//! - `kafka`: the `kafka` capability, one librdkafka producer from
//!   `[plugins.kafka]`.

pub mod kafka;
mod pg_batch;
mod pg_types;
pub mod postgres;
mod sql_rewrite;
