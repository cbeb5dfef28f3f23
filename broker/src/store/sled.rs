//! The embedded backend: one sled tree under the data directory.
//!
//! Keys are a kind byte, the client id, a 0 byte (client ids never contain
//! U+0000) and the rest of the key, so one client's records of a kind are
//! one key range:
//! `s<client>` session, `u<client>\0<filter>` subscription,
//! `q<client>\0<seq:u64be>` queued delivery, `i<client>\0<seq:u64be>`
//! inflight state, `r<client>\0<id:u16be>` incoming QoS 2 id,
//! `t<topic>` retained message.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Backend, Batch, Key, StoreError};

#[derive(Debug)]
pub struct SledBackend {
    path: PathBuf,
    db: sled::Db,
}

const KINDS: [u8; 4] = [b'u', b'q', b'i', b'r'];

impl SledBackend {
    pub fn open(dir: &Path) -> Result<SledBackend, StoreError> {
        let store = format!("sled store at {}", dir.display());
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            store: store.clone(),
            message: format!("cannot create the directory: {e}"),
        })?;
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| StoreError::Open {
                store,
                message: e.to_string(),
            })?;
        Ok(SledBackend {
            path: dir.to_path_buf(),
            db,
        })
    }

    fn io(&self, e: sled::Error) -> StoreError {
        StoreError::Io {
            store: self.describe(),
            message: e.to_string(),
        }
    }
}

fn client_key(kind: u8, client: &str, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + client.len() + rest.len());
    k.push(kind);
    k.extend_from_slice(client.as_bytes());
    k.push(0);
    k.extend_from_slice(rest);
    k
}

pub(crate) fn encode_key(k: &Key) -> Vec<u8> {
    match k {
        Key::Session(c) => {
            let mut v = vec![b's'];
            v.extend_from_slice(c.as_bytes());
            v
        }
        Key::Sub(c, f) => client_key(b'u', c, f.as_bytes()),
        Key::Queue(c, s) => client_key(b'q', c, &s.to_be_bytes()),
        Key::Inflight(c, s) => client_key(b'i', c, &s.to_be_bytes()),
        Key::Qos2(c, id) => client_key(b'r', c, &id.to_be_bytes()),
        Key::Retained(t) => {
            let mut v = vec![b't'];
            v.extend_from_slice(t.as_bytes());
            v
        }
    }
}

pub(crate) fn decode_key(k: &[u8]) -> Result<Key, String> {
    let text = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| format!("key {k:?} is not UTF-8"))
    };
    let (&kind, rest) = k.split_first().ok_or("empty key")?;
    match kind {
        b's' => Ok(Key::Session(Arc::from(text(rest)?))),
        b't' => Ok(Key::Retained(text(rest)?)),
        b'u' | b'q' | b'i' | b'r' => {
            let nul = rest
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| format!("key {k:?} has no separator"))?;
            let client: Arc<str> = Arc::from(text(&rest[..nul])?);
            let tail = &rest[nul + 1..];
            let seq = || -> Result<u64, String> {
                let a: [u8; 8] = tail
                    .try_into()
                    .map_err(|_| format!("key {k:?}: bad sequence number"))?;
                Ok(u64::from_be_bytes(a))
            };
            match kind {
                b'u' => Ok(Key::Sub(client, text(tail)?)),
                b'q' => Ok(Key::Queue(client, seq()?)),
                b'i' => Ok(Key::Inflight(client, seq()?)),
                _ => {
                    let a: [u8; 2] = tail
                        .try_into()
                        .map_err(|_| format!("key {k:?}: bad packet id"))?;
                    Ok(Key::Qos2(client, u16::from_be_bytes(a)))
                }
            }
        }
        _ => Err(format!("key {k:?} has an unknown kind")),
    }
}

impl Backend for SledBackend {
    fn describe(&self) -> String {
        format!("sled store at {}", self.path.display())
    }

    fn load(&mut self) -> Result<Vec<(Key, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iter() {
            let (k, v) = item.map_err(|e| self.io(e))?;
            let key = decode_key(&k).map_err(|message| StoreError::Corrupt {
                store: self.describe(),
                key: format!("{:?}", String::from_utf8_lossy(&k)),
                message,
            })?;
            out.push((key, v.to_vec()));
        }
        Ok(out)
    }

    fn commit(&mut self, batch: &Batch) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for c in &batch.cleared {
            b.remove(encode_key(&Key::Session(c.clone())));
            for kind in KINDS {
                let prefix = client_key(kind, c, &[]);
                for k in self.db.scan_prefix(&prefix).keys() {
                    b.remove(k.map_err(|e| self.io(e))?);
                }
            }
        }
        for (k, v) in &batch.writes {
            let key = encode_key(k);
            match v {
                Some(v) => b.insert(key, v.as_slice()),
                None => b.remove(key),
            }
        }
        self.db.apply_batch(b).map_err(|e| self.io(e))?;
        self.db.flush().map_err(|e| self.io(e))?;
        Ok(())
    }
}
