//! The embedded backend: one sled tree under the data directory.
//!
//! Keys are a kind byte, the client id, a 0 byte (client ids never contain
//! U+0000) and the rest of the key, so one client's records of a kind are
//! one key range:
//! `s<client>` session, `u<client>\0<filter>` subscription,
//! `Q<client>\0<first seq:u64be>` a chunk of queued deliveries,
//! `x<client>\0<first seq:u64be>` which of that chunk's deliveries are done,
//! `q<client>\0<seq:u64be>` one queued delivery (stores written before
//! chunks, and deliveries that could not join a chunk),
//! `i<client>\0<seq:u64be>` inflight state, `r<client>\0<id:u16be>`
//! incoming QoS 2 id, `t<topic>` retained message.
//!
//! A bridge's buffer has the same kinds under other letters, so no client
//! id can reach it: `B` / `y` / `b` (chunk, done bits, single delivery),
//! `j` inflight, `k` incoming QoS 2 id, each followed by the bridge's name.
//!
//! Why chunks: a sled insert costs about 10 µs of CPU however small the value
//! (it rewrites the B-tree node it lands in), so one key per queued message
//! made sled most of the broker's CPU under a QoS 1 load to an offline
//! session. Every commit now writes each client's newly queued deliveries as
//! one `Q` record; acknowledgements set bits in the chunk's one `x` record,
//! and a chunk whose deliveries are all done is deleted with its `x` record.
//! The backend keeps an index of the live chunks (built at load) so that a
//! `Dequeue` finds its chunk without reading the store.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Backend, Batch, Key, StoreError};

#[derive(Debug)]
pub struct SledBackend {
    path: PathBuf,
    db: sled::Db,
    /// The live chunks of each client (and bridge), by first sequence
    /// number. Chunks of one owner never overlap: each holds sequence
    /// numbers above every earlier one's (a batch that would overlap is
    /// written as `q` keys).
    chunks: HashMap<Owner, BTreeMap<u64, Chunk>>,
    /// Deliveries stored under their own `q` (`b`) key, per owner.
    loose: HashMap<Owner, BTreeSet<u64>>,
}

/// Whose queue: a session's or a bridge's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Ns {
    Session,
    Bridge,
}

impl Ns {
    /// Key kind of a chunk.
    fn chunk(self) -> u8 {
        match self {
            Ns::Session => b'Q',
            Ns::Bridge => b'B',
        }
    }
    /// Key kind of a chunk's done bits.
    fn done(self) -> u8 {
        match self {
            Ns::Session => b'x',
            Ns::Bridge => b'y',
        }
    }
    /// Key kind of a delivery stored alone.
    fn loose(self) -> u8 {
        match self {
            Ns::Session => b'q',
            Ns::Bridge => b'b',
        }
    }
    /// The namespace of a chunk or done-bits key kind.
    fn of_kind(kind: u8) -> Option<Ns> {
        match kind {
            b'Q' | b'x' => Some(Ns::Session),
            b'B' | b'y' => Some(Ns::Bridge),
            _ => None,
        }
    }
    /// The queue row a loaded delivery becomes.
    fn key(self, owner: Arc<str>, seq: u64) -> Key {
        match self {
            Ns::Session => Key::Queue(owner, seq),
            Ns::Bridge => Key::BridgeQueue(owner, seq),
        }
    }
}

/// A queue's owner: namespace and client id (or bridge name).
type Owner = (Ns, Arc<str>);

/// The owner and sequence number of a queue row.
fn queue_row(k: &Key) -> Option<(Owner, u64)> {
    match k {
        Key::Queue(c, s) => Some(((Ns::Session, c.clone()), *s)),
        Key::BridgeQueue(b, s) => Some(((Ns::Bridge, b.clone()), *s)),
        _ => None,
    }
}

/// The index entry of one `Q` record.
#[derive(Debug)]
struct Chunk {
    /// Its deliveries' sequence numbers, ascending.
    seqs: Vec<u64>,
    /// Bit `i` set: delivery `i` is done (its `x` record).
    done: Vec<u8>,
    /// Deliveries not done yet.
    live: usize,
}

/// A chunk's owner and first sequence number.
type ChunkId = (Owner, u64);
/// A delivery to write: its sequence number and encoded record.
type Item<'a> = (u64, &'a [u8]);
/// A loaded chunk's deliveries.
type Items = Vec<(u64, Vec<u8>)>;

/// Per-client key kinds deleted with the client.
const KINDS: [u8; 6] = [b'u', b'q', b'i', b'r', b'Q', b'x'];
/// Per-bridge key kinds deleted with the bridge.
const BRIDGE_KINDS: [u8; 5] = [b'b', b'j', b'k', b'B', b'y'];
const CHUNK_V1: u8 = 1;
/// A `Q` value whose body (what follows the version byte in version 1) is
/// LZ4-compressed: version, then the LZ4 block with its uncompressed size
/// prepended (little-endian u32).
const CHUNK_V2_LZ4: u8 = 2;

/// sled's log segment size for a new store. sled writes a tree node larger
/// than a quarter of a segment to a file of its own (a "blob"): with its
/// default of 512 KiB, nodes holding queue chunks crossed that line and every
/// such write created, fsynced and later deleted a file (ext4's inode
/// allocation showed in perf). At 8 MiB the line is at 2 MiB.
const SEGMENT_SIZE: usize = 8 << 20;

/// sled's page cache (its default is 1 GiB). The broker never reads the
/// store back while running (the queues are in memory; acknowledgements go
/// through the chunk index), so a large cache only held written pages: at
/// 64 MiB the broker used 0.6 GiB less with 6 million messages queued, at the
/// same throughput.
const CACHE_BYTES: u64 = 128 << 20;

/// The segment size to open `dir` with: sled refuses to open a store with a
/// size other than the one it was created with (recorded in its `conf`
/// file), so an existing store keeps its own.
fn segment_size(dir: &Path) -> usize {
    // The file ends in a binary checksum: read it as bytes.
    std::fs::read(dir.join("conf"))
        .ok()
        .and_then(|conf| {
            String::from_utf8_lossy(&conf)
                .lines()
                .find_map(|l| l.strip_prefix("segment_size: "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(SEGMENT_SIZE)
}

/// sled's own file in a store directory: present once a store was created.
const CONF_FILE: &str = "conf";

impl SledBackend {
    /// Opens the store in `dir`, creating it (and the directory) when
    /// there is none: what the broker does.
    pub fn open(dir: &Path) -> Result<SledBackend, StoreError> {
        let store = format!("sled store at {}", dir.display());
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            store: store.clone(),
            message: format!("cannot create the directory: {e}"),
        })?;
        SledBackend::open_dir(dir, store)
    }

    /// Opens the store in `dir` only if one is there: what `midge store`
    /// does, so that a wrong path is an error and not a new, empty store.
    pub fn open_existing(dir: &Path) -> Result<SledBackend, StoreError> {
        let store = format!("sled store at {}", dir.display());
        let open_err = |message: String| StoreError::Open {
            store: store.clone(),
            message,
        };
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(open_err("not a directory".into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(open_err(
                    "no such directory (give the broker's --data-dir or its --config)".into(),
                ))
            }
            Err(e) => return Err(open_err(e.to_string())),
        }
        if !dir.join(CONF_FILE).is_file() {
            return Err(open_err(format!(
                "no store in this directory (no `{CONF_FILE}` file)"
            )));
        }
        SledBackend::open_dir(dir, store)
    }

    fn open_dir(dir: &Path, store: String) -> Result<SledBackend, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .segment_size(segment_size(dir))
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|e| match e {
                // sled words it "could not acquire lock on ...: Os { .. }".
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    StoreError::Locked { store }
                }
                e => StoreError::Open {
                    store,
                    message: e.to_string(),
                },
            })?;
        Ok(SledBackend {
            path: dir.to_path_buf(),
            db,
            chunks: HashMap::new(),
            loose: HashMap::new(),
        })
    }

    fn corrupt(&self, k: &[u8], message: String) -> StoreError {
        StoreError::Corrupt {
            store: self.describe(),
            key: format!("{:?}", String::from_utf8_lossy(k)),
            message,
        }
    }

    /// The chunk holding `seq` of `owner`: (its first seq, it, the index).
    fn find(&self, owner: &Owner, seq: u64) -> Option<(u64, &Chunk, usize)> {
        let (first, ch) = self.chunks.get(owner)?.range(..=seq).next_back()?;
        let i = ch.seqs.binary_search(&seq).ok()?;
        Some((*first, ch, i))
    }

    /// The highest sequence number `owner` has stored (chunks and `q` keys).
    fn max_seq(&self, owner: &Owner) -> Option<u64> {
        let a = self
            .chunks
            .get(owner)
            .and_then(|m| m.values().next_back())
            .and_then(|ch| ch.seqs.last().copied());
        let b = self.loose.get(owner).and_then(|l| l.last().copied());
        a.max(b)
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

/// `Q` record value: version 1, count, then (seq, length, delivery) each;
/// or version 2: the same body LZ4-compressed, when that is smaller.
///
/// Compressed because sled rewrites a leaf with all its values when it
/// consolidates or splits it (about 4 bytes written per byte inserted,
/// measured), and the deliveries of one commit repeat themselves (topics,
/// the publisher's id, the payload's shape).
fn encode_chunk(items: &[(u64, &[u8])]) -> Vec<u8> {
    let len: usize = items.iter().map(|(_, v)| 12 + v.len()).sum();
    let mut plain = Vec::with_capacity(5 + len);
    plain.push(CHUNK_V1);
    plain.extend_from_slice(&(items.len() as u32).to_be_bytes());
    for (seq, v) in items {
        plain.extend_from_slice(&seq.to_be_bytes());
        plain.extend_from_slice(&(v.len() as u32).to_be_bytes());
        plain.extend_from_slice(v);
    }
    // Version, uncompressed size (what `decompress_size_prepended` reads),
    // then the block, written in place.
    let body = &plain[1..];
    let mut packed = vec![0u8; 5 + lz4_flex::block::get_maximum_output_size(body.len())];
    packed[0] = CHUNK_V2_LZ4;
    packed[1..5].copy_from_slice(&(body.len() as u32).to_le_bytes());
    match lz4_flex::block::compress_into(body, &mut packed[5..]) {
        Ok(n) if 5 + n < plain.len() => {
            packed.truncate(5 + n);
            packed
        }
        _ => plain,
    }
}

/// The body of a version 2 chunk, decompressed. The stated size is checked
/// against what LZ4 can expand to (at most 255 bytes per input byte), so a
/// damaged record cannot ask for an absurd allocation.
fn unpack_chunk(b: &[u8]) -> Result<Vec<u8>, String> {
    let size = b
        .get(..4)
        .map(|s| u32::from_le_bytes(s.try_into().unwrap_or_default()) as usize)
        .ok_or("truncated at the uncompressed size")?;
    if size > b.len().saturating_mul(255) {
        return Err(format!("uncompressed size {size} is impossible"));
    }
    lz4_flex::block::decompress_size_prepended(b)
        .map_err(|e| format!("compressed data truncated or damaged (LZ4: {e})"))
}

fn decode_chunk(b: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let unpacked;
    let mut b = match b.split_first() {
        Some((&CHUNK_V1, body)) => body,
        Some((&CHUNK_V2_LZ4, packed)) => {
            unpacked = unpack_chunk(packed)?;
            &unpacked[..]
        }
        Some((v, _)) => return Err(format!("unknown chunk version {v}")),
        None => return Err("truncated at version".into()),
    };
    fn take<'a>(b: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], String> {
        if b.len() < n {
            return Err(format!("truncated at {what}"));
        }
        let (a, rest) = b.split_at(n);
        *b = rest;
        Ok(a)
    }
    let n = u32::from_be_bytes(take(&mut b, 4, "count")?.try_into().unwrap_or_default());
    let mut out = Vec::with_capacity(n.min(1 << 16) as usize);
    let mut last = None;
    for _ in 0..n {
        let seq = u64::from_be_bytes(
            take(&mut b, 8, "sequence number")?
                .try_into()
                .unwrap_or_default(),
        );
        if last.is_some_and(|l| l >= seq) {
            return Err("sequence numbers out of order".into());
        }
        last = Some(seq);
        let len = u32::from_be_bytes(take(&mut b, 4, "length")?.try_into().unwrap_or_default());
        out.push((seq, take(&mut b, len as usize, "delivery")?.to_vec()));
    }
    if !b.is_empty() {
        return Err(format!("{} trailing bytes", b.len()));
    }
    if out.is_empty() {
        return Err("empty chunk".into());
    }
    Ok(out)
}

/// Owner and first seq of a `Q` / `x` (`B` / `y`) key.
fn decode_chunk_key(k: &[u8]) -> Result<ChunkId, String> {
    let ns = k
        .first()
        .and_then(|&kind| Ns::of_kind(kind))
        .ok_or("not a chunk key")?;
    let rest = &k[1..];
    let nul = rest.iter().position(|&b| b == 0).ok_or("no separator")?;
    let client = std::str::from_utf8(&rest[..nul]).map_err(|_| "client id is not UTF-8")?;
    let a: [u8; 8] = rest[nul + 1..]
        .try_into()
        .map_err(|_| "bad sequence number")?;
    Ok(((ns, Arc::from(client)), u64::from_be_bytes(a)))
}

/// A `Q` record: its chunk and deliveries, checked (load and repair agree).
fn read_chunk(k: &[u8], v: &[u8]) -> Result<(ChunkId, Items), String> {
    let (c, first) = decode_chunk_key(k)?;
    let items = decode_chunk(v)?;
    if items[0].0 != first {
        return Err("first sequence number differs from its key".into());
    }
    Ok(((c, first), items))
}

/// An `x` record: its chunk and the done bitmap.
fn read_done(k: &[u8], v: &[u8]) -> Result<(ChunkId, Vec<u8>), String> {
    let id = decode_chunk_key(k)?;
    match v.split_first() {
        Some((&CHUNK_V1, bits)) => Ok((id, bits.to_vec())),
        _ => Err("unknown version".into()),
    }
}

fn encode_done(done: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + done.len());
    v.push(CHUNK_V1);
    v.extend_from_slice(done);
    v
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
        Key::BridgeQueue(b, s) => client_key(b'b', b, &s.to_be_bytes()),
        Key::BridgeInflight(b, s) => client_key(b'j', b, &s.to_be_bytes()),
        Key::BridgeQos2(b, id) => client_key(b'k', b, &id.to_be_bytes()),
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
        b'u' | b'q' | b'i' | b'r' | b'b' | b'j' | b'k' => {
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
            let packet_id = || -> Result<u16, String> {
                let a: [u8; 2] = tail
                    .try_into()
                    .map_err(|_| format!("key {k:?}: bad packet id"))?;
                Ok(u16::from_be_bytes(a))
            };
            match kind {
                b'u' => Ok(Key::Sub(client, text(tail)?)),
                b'q' => Ok(Key::Queue(client, seq()?)),
                b'i' => Ok(Key::Inflight(client, seq()?)),
                b'r' => Ok(Key::Qos2(client, packet_id()?)),
                b'b' => Ok(Key::BridgeQueue(client, seq()?)),
                b'j' => Ok(Key::BridgeInflight(client, seq()?)),
                _ => Ok(Key::BridgeQos2(client, packet_id()?)),
            }
        }
        _ => Err(format!("key {k:?} has an unknown kind")),
    }
}

impl Backend for SledBackend {
    fn describe(&self) -> String {
        format!("sled store at {}", self.path.display())
    }

    /// Every record; chunks come back as one `Queue` row per delivery not done.
    fn load(&mut self) -> Result<Vec<(Key, Vec<u8>)>, StoreError> {
        self.chunks.clear();
        self.loose.clear();
        let mut out = Vec::new();
        let mut chunks: Vec<(Vec<u8>, ChunkId, Items)> = Vec::new();
        let mut dones: HashMap<ChunkId, (Vec<u8>, Vec<u8>)> = HashMap::new();
        for item in self.db.iter() {
            let (k, v) = item.map_err(|e| self.io(e))?;
            match k.first() {
                Some(b'Q' | b'B') => {
                    let (id, items) = read_chunk(&k, &v).map_err(|m| self.corrupt(&k, m))?;
                    chunks.push((k.to_vec(), id, items));
                }
                Some(b'x' | b'y') => {
                    let (id, bits) = read_done(&k, &v).map_err(|m| self.corrupt(&k, m))?;
                    dones.insert(id, (k.to_vec(), bits));
                }
                _ => {
                    let key = decode_key(&k).map_err(|m| self.corrupt(&k, m))?;
                    if let Some((owner, s)) = queue_row(&key) {
                        self.loose.entry(owner).or_default().insert(s);
                    }
                    out.push((key, v.to_vec()));
                }
            }
        }
        let mut stale: Vec<Vec<u8>> = Vec::new();
        for (qk, (c, first), items) in chunks {
            let bytes = items.len().div_ceil(8);
            let (xk, done) = match dones.remove(&(c.clone(), first)) {
                Some((xk, d)) if d.len() != bytes => {
                    return Err(self.corrupt(
                        &xk,
                        format!("{} bytes for {} deliveries", d.len(), items.len()),
                    ));
                }
                Some((xk, d)) => (Some(xk), d),
                None => (None, vec![0; bytes]),
            };
            let mut seqs = Vec::with_capacity(items.len());
            let mut live = 0;
            for (i, (s, v)) in items.into_iter().enumerate() {
                seqs.push(s);
                if done[i / 8] & (1 << (i % 8)) == 0 {
                    live += 1;
                    out.push((c.0.key(c.1.clone(), s), v));
                }
            }
            if live == 0 {
                stale.push(qk);
                stale.extend(xk);
            } else {
                self.chunks
                    .entry(c)
                    .or_default()
                    .insert(first, Chunk { seqs, done, live });
            }
        }
        // Done records without their chunk, and chunks with nothing left
        // (neither is written by `commit`; removed if found).
        stale.extend(dones.into_values().map(|(k, _)| k));
        for k in stale {
            self.db.remove(k).map_err(|e| self.io(e))?;
        }
        Ok(out)
    }

    fn drop_unreadable(&mut self) -> Result<Vec<String>, StoreError> {
        let mut gone = Vec::new();
        for kind in [b'Q', b'x', b'B', b'y'] {
            for item in self.db.scan_prefix([kind]) {
                let (k, v) = item.map_err(|e| self.io(e))?;
                let checked = if kind == b'Q' || kind == b'B' {
                    read_chunk(&k, &v).map(drop)
                } else {
                    read_done(&k, &v).map(drop)
                };
                if let Err(m) = checked {
                    self.db.remove(&k).map_err(|e| self.io(e))?;
                    gone.push(format!(
                        "queue record {:?}: {m}",
                        String::from_utf8_lossy(&k)
                    ));
                }
            }
        }
        if !gone.is_empty() {
            self.db.flush().map_err(|e| self.io(e))?;
        }
        Ok(gone)
    }

    fn commit(&mut self, batch: &Batch) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        let cleared: HashSet<Owner> = batch
            .cleared
            .iter()
            .map(|c| (Ns::Session, c.clone()))
            .chain(
                batch
                    .cleared_bridges
                    .iter()
                    .map(|c| (Ns::Bridge, c.clone())),
            )
            .collect();
        for c in &batch.cleared {
            b.remove(encode_key(&Key::Session(c.clone())));
        }
        for (ns, c) in &cleared {
            let kinds: &[u8] = match ns {
                Ns::Session => &KINDS,
                Ns::Bridge => &BRIDGE_KINDS,
            };
            for &kind in kinds {
                let prefix = client_key(kind, c, &[]);
                for k in self.db.scan_prefix(&prefix).keys() {
                    b.remove(k.map_err(|e| self.io(e))?);
                }
            }
        }
        // Changes to the index, made only once the write succeeded (a failed
        // commit is retried with the same batch).
        let mut acked: HashMap<ChunkId, (Vec<u8>, usize)> = HashMap::new();
        let mut unloosed: Vec<(Owner, u64)> = Vec::new();
        let mut fresh: Vec<(Owner, Vec<Item<'_>>)> = Vec::new();
        let mut fresh_at: HashMap<Owner, usize> = HashMap::new();
        for (k, v) in &batch.writes {
            match (queue_row(k), v) {
                (Some((c, s)), Some(v)) => {
                    let i = *fresh_at.entry(c.clone()).or_insert_with(|| {
                        fresh.push((c, Vec::new()));
                        fresh.len() - 1
                    });
                    fresh[i].1.push((s, v.as_slice()));
                }
                // A cleared owner's old records are gone already.
                (Some((c, _)), None) if cleared.contains(&c) => {}
                (Some((c, s)), None) => {
                    if self.loose.get(&c).is_some_and(|l| l.contains(&s)) {
                        b.remove(client_key(c.0.loose(), &c.1, &s.to_be_bytes()));
                        unloosed.push((c.clone(), s));
                    }
                    if let Some((first, ch, i)) = self.find(&c, s) {
                        let e = acked
                            .entry((c.clone(), first))
                            .or_insert_with(|| (ch.done.clone(), ch.live));
                        if e.0[i / 8] & (1 << (i % 8)) == 0 {
                            e.0[i / 8] |= 1 << (i % 8);
                            e.1 -= 1;
                        }
                    }
                }
                (None, v) => {
                    let key = encode_key(k);
                    match v {
                        Some(v) => b.insert(key, v.as_slice()),
                        None => b.remove(key),
                    }
                }
            }
        }
        let mut new_chunks: Vec<(Owner, u64, Chunk)> = Vec::new();
        let mut new_loose: Vec<(Owner, u64)> = Vec::new();
        for (c, mut items) in fresh {
            items.sort_unstable_by_key(|(s, _)| *s);
            let above = if cleared.contains(&c) {
                None
            } else {
                self.max_seq(&c)
            };
            if above.is_some_and(|m| items[0].0 <= m) {
                // Not above everything stored: keep the index's chunks
                // disjoint by writing these one key each.
                for (s, v) in items {
                    b.insert(client_key(c.0.loose(), &c.1, &s.to_be_bytes()), v);
                    new_loose.push((c.clone(), s));
                }
                continue;
            }
            let first = items[0].0;
            b.insert(
                client_key(c.0.chunk(), &c.1, &first.to_be_bytes()),
                encode_chunk(&items),
            );
            let n = items.len();
            new_chunks.push((
                c,
                first,
                Chunk {
                    seqs: items.iter().map(|(s, _)| *s).collect(),
                    done: vec![0; n.div_ceil(8)],
                    live: n,
                },
            ));
        }
        for ((c, first), (done, live)) in &acked {
            let rest = first.to_be_bytes();
            if *live == 0 {
                b.remove(client_key(c.0.chunk(), &c.1, &rest));
                b.remove(client_key(c.0.done(), &c.1, &rest));
            } else {
                b.insert(client_key(c.0.done(), &c.1, &rest), encode_done(done));
            }
        }
        self.db.apply_batch(b).map_err(|e| self.io(e))?;
        self.db.flush().map_err(|e| self.io(e))?;
        for c in &cleared {
            self.chunks.remove(c);
            self.loose.remove(c);
        }
        for (c, s) in unloosed {
            if let Some(l) = self.loose.get_mut(&c) {
                l.remove(&s);
                if l.is_empty() {
                    self.loose.remove(&c);
                }
            }
        }
        for ((c, first), (done, live)) in acked {
            let Some(m) = self.chunks.get_mut(&c) else {
                continue;
            };
            if live == 0 {
                m.remove(&first);
                if m.is_empty() {
                    self.chunks.remove(&c);
                }
            } else if let Some(ch) = m.get_mut(&first) {
                ch.done = done;
                ch.live = live;
            }
        }
        for (c, first, ch) in new_chunks {
            self.chunks.entry(c).or_default().insert(first, ch);
        }
        for (c, s) in new_loose {
            self.loose.entry(c).or_default().insert(s);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    fn open(dir: &Path) -> SledBackend {
        // sled's flusher can hold the directory lock for a moment after a
        // handle is dropped: retry (bounded) while it is busy.
        for _ in 0..100 {
            match SledBackend::open(dir) {
                Ok(b) => return b,
                Err(e) if e.to_string().contains("lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("sled store stayed locked");
    }

    fn queue(client: &str, seqs: impl IntoIterator<Item = u64>) -> Vec<(Key, Option<Vec<u8>>)> {
        seqs.into_iter()
            .map(|s| (Key::Queue(c(client), s), Some(format!("m{s}").into_bytes())))
            .collect()
    }

    fn done(client: &str, seqs: impl IntoIterator<Item = u64>) -> Vec<(Key, Option<Vec<u8>>)> {
        seqs.into_iter()
            .map(|s| (Key::Queue(c(client), s), None))
            .collect()
    }

    fn commit(b: &mut SledBackend, writes: Vec<(Key, Option<Vec<u8>>)>) {
        b.commit(&Batch {
            writes,
            ..Batch::default()
        })
        .unwrap();
    }

    /// Kinds of the stored keys, e.g. "QQx".
    fn kinds(b: &SledBackend) -> String {
        b.db.iter().keys().map(|k| k.unwrap()[0] as char).collect()
    }

    /// (client, seq, value) of the loaded queue rows, in key order per client.
    fn loaded(b: &mut SledBackend) -> Vec<(String, u64, String)> {
        let mut v: Vec<_> = b
            .load()
            .unwrap()
            .into_iter()
            .filter_map(|(k, v)| match k {
                Key::Queue(c, s) => Some((c.to_string(), s, String::from_utf8(v).unwrap())),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn chunks_are_compressed_when_smaller_and_both_versions_decode() {
        let v = b"topic/a client-1 {\"temp\":21.5,\"seq\":0000}".to_vec();
        let items: Vec<(u64, &[u8])> = (1..=50).map(|s| (s, &v[..])).collect();
        let packed = encode_chunk(&items);
        assert_eq!(packed[0], CHUNK_V2_LZ4);
        let plain_len: usize = 5 + items.iter().map(|(_, v)| 12 + v.len()).sum::<usize>();
        assert!(
            packed.len() * 3 < plain_len,
            "{} vs {plain_len}",
            packed.len()
        );
        let back = decode_chunk(&packed).unwrap();
        assert_eq!(back.len(), 50);
        assert!(back.iter().zip(1..).all(|((s, d), n)| *s == n && *d == v));
        // Incompressible: stored as version 1, which older stores hold too.
        let noise: Vec<u8> = (0..64u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let one = encode_chunk(&[(7, &noise[..])]);
        assert_eq!(one[0], CHUNK_V1);
        assert_eq!(decode_chunk(&one).unwrap(), vec![(7, noise.clone())]);
        // A damaged size is refused before anything is allocated for it.
        let mut bad = packed.clone();
        bad[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_chunk(&bad).unwrap_err().contains("impossible"));
        let mut cut = packed.clone();
        cut.truncate(packed.len() / 2);
        assert!(decode_chunk(&cut).is_err());
    }

    #[test]
    fn a_new_store_gets_large_segments_and_an_old_one_keeps_its_own() {
        let conf = |d: &Path| {
            String::from_utf8_lossy(&std::fs::read(d.join("conf")).unwrap()).into_owned()
        };
        let fresh = tempfile::tempdir().unwrap();
        drop(open(fresh.path()));
        assert!(
            conf(fresh.path()).contains(&format!("segment_size: {SEGMENT_SIZE}\n")),
            "{}",
            conf(fresh.path())
        );
        // A store created with sled's default segment size still opens.
        let old = tempfile::tempdir().unwrap();
        {
            let db = sled::Config::new().path(old.path()).open().unwrap();
            db.insert(b"k", b"v").unwrap();
            db.flush().unwrap();
        }
        assert!(conf(old.path()).contains("segment_size: 524288\n"));
        let b = open(old.path());
        assert_eq!(b.db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn one_commits_deliveries_share_one_record_per_client() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = open(dir.path());
        let mut w = queue("a", 1..=5);
        w.extend(queue("b", [7, 8]));
        commit(&mut b, w);
        assert_eq!(kinds(&b), "QQ");
        drop(b);
        let mut b = open(dir.path());
        let rows = loaded(&mut b);
        assert_eq!(rows.len(), 7);
        assert_eq!(rows[0], ("a".into(), 1, "m1".into()));
        assert_eq!(rows[6], ("b".into(), 8, "m8".into()));
    }

    #[test]
    fn acknowledged_deliveries_stay_done_across_a_reopen_and_a_finished_chunk_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = open(dir.path());
        commit(&mut b, queue("a", 1..=5));
        commit(&mut b, queue("a", 6..=6));
        commit(&mut b, done("a", [2, 4]));
        assert_eq!(kinds(&b), "QQx");
        drop(b);
        let mut b = open(dir.path());
        let seqs: Vec<u64> = loaded(&mut b).into_iter().map(|r| r.1).collect();
        assert_eq!(seqs, [1, 3, 5, 6]);
        // The index was rebuilt by the load: finishing the chunk deletes it.
        commit(&mut b, done("a", [1, 3, 5, 99]));
        assert_eq!(kinds(&b), "Q");
        drop(b);
        let mut b = open(dir.path());
        let seqs: Vec<u64> = loaded(&mut b).into_iter().map(|r| r.1).collect();
        assert_eq!(seqs, [6]);
    }

    #[test]
    fn deliveries_below_the_stored_ones_get_their_own_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = open(dir.path());
        commit(&mut b, queue("a", 5..=6));
        commit(&mut b, queue("a", [3, 7]));
        assert_eq!(kinds(&b), "Qqq");
        let seqs: Vec<u64> = loaded(&mut b).into_iter().map(|r| r.1).collect();
        assert_eq!(seqs, [3, 5, 6, 7]);
        commit(&mut b, done("a", [3, 5, 6, 7]));
        assert_eq!(kinds(&b), "");
    }

    #[test]
    fn clearing_a_client_deletes_its_chunks_and_a_new_queue_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = open(dir.path());
        commit(&mut b, queue("a", 1..=3));
        commit(&mut b, done("a", [2]));
        commit(&mut b, queue("b", 1..=1));
        b.commit(&Batch {
            cleared: vec![c("a")],
            writes: queue("a", 1..=1),
            ..Batch::default()
        })
        .unwrap();
        assert_eq!(kinds(&b), "QQ");
        drop(b);
        let mut b = open(dir.path());
        let rows = loaded(&mut b);
        assert_eq!(
            rows,
            [("a".into(), 1, "m1".into()), ("b".into(), 1, "m1".into())]
        );
    }

    #[test]
    fn single_key_deliveries_of_older_stores_load_and_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let b = open(dir.path());
            for s in [1u64, 2] {
                b.db.insert(
                    encode_key(&Key::Queue(c("a"), s)),
                    format!("m{s}").as_bytes(),
                )
                .unwrap();
            }
            b.db.flush().unwrap();
        }
        let mut b = open(dir.path());
        let seqs: Vec<u64> = loaded(&mut b).into_iter().map(|r| r.1).collect();
        assert_eq!(seqs, [1, 2]);
        commit(&mut b, queue("a", 3..=4));
        commit(&mut b, done("a", [1, 3]));
        assert_eq!(kinds(&b), "Qqx");
        let seqs: Vec<u64> = loaded(&mut b).into_iter().map(|r| r.1).collect();
        assert_eq!(seqs, [2, 4]);
    }

    #[test]
    fn a_corrupt_chunk_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut b = open(dir.path());
            commit(&mut b, queue("dev-7", 1..=2));
            let k = client_key(b'Q', &c("dev-7"), &1u64.to_be_bytes());
            let mut v = b.db.get(&k).unwrap().unwrap().to_vec();
            v.truncate(v.len() - 1);
            b.db.insert(k, v).unwrap();
            b.db.flush().unwrap();
        }
        let mut b = open(dir.path());
        let e = b.load().unwrap_err().to_string();
        assert!(
            e.contains("dev-7") && e.contains("corrupt") && e.contains("truncated"),
            "{e}"
        );
        // `midge store repair` deletes it (and nothing else); then the store loads.
        commit(&mut b, queue("dev-8", 1..=1));
        let gone = b.drop_unreadable().unwrap();
        assert_eq!(gone.len(), 1, "{gone:?}");
        assert!(
            gone[0].contains("dev-7") && gone[0].contains("truncated"),
            "{gone:?}"
        );
        let rows = loaded(&mut b);
        assert_eq!(rows, [("dev-8".into(), 1, "m1".into())]);
    }

    #[test]
    fn bridge_buffers_chunk_under_their_own_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = open(dir.path());
        let mut w: Vec<(Key, Option<Vec<u8>>)> = (1..=3)
            .map(|s| {
                (
                    Key::BridgeQueue(c("a"), s),
                    Some(format!("b{s}").into_bytes()),
                )
            })
            .collect();
        w.extend(queue("a", 1..=2));
        commit(&mut b, w);
        assert_eq!(kinds(&b), "BQ");
        commit(&mut b, vec![(Key::BridgeQueue(c("a"), 2), None)]);
        assert_eq!(kinds(&b), "BQy");
        drop(b);
        let mut b = open(dir.path());
        let mut rows: Vec<String> = b
            .load()
            .unwrap()
            .into_iter()
            .map(|(k, v)| format!("{k}={}", String::from_utf8(v).unwrap()))
            .collect();
        rows.sort();
        assert_eq!(
            rows,
            [
                "buffered message 1 of bridge \"a\"=b1",
                "buffered message 3 of bridge \"a\"=b3",
                "queued message 1 of \"a\"=m1",
                "queued message 2 of \"a\"=m2",
            ]
        );
        // Clearing the bridge leaves the client's records.
        b.commit(&Batch {
            cleared_bridges: vec![c("a")],
            ..Batch::default()
        })
        .unwrap();
        assert_eq!(kinds(&b), "Q");
        let keys = [
            Key::BridgeInflight(c("a"), 7),
            Key::BridgeQos2(c("a"), 9),
            Key::BridgeQueue(c("a"), 8),
        ];
        for k in keys {
            assert_eq!(decode_key(&encode_key(&k)).unwrap(), k);
        }
    }
}
