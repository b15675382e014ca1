//! The two engines behind one small interface, so every measurement runs the
//! same code path for both. Keys: room bytes + 0x00 + seq (u64 BE); values:
//! ts (u64 BE ms) + message JSON.

use std::path::{Path, PathBuf};

pub type R<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// redb `Durability::Immediate`; fjall batch durability `PersistMode::SyncAll`
    Durable,
    /// redb `Durability::Immediate`; fjall batch durability `PersistMode::SyncData`
    DurableData,
    /// redb `Durability::Immediate` + `set_quick_repair(true)`; fjall = Durable
    DurableQuickRepair,
    /// redb `Durability::None`; fjall batch durability `PersistMode::Buffer`
    /// (write(2) to the OS, no fsync)
    Async,
}

impl Mode {
    pub fn parse(s: &str) -> Mode {
        match s {
            "durable" => Mode::Durable,
            "durable-data" => Mode::DurableData,
            "async" => Mode::Async,
            "durable-qr" => Mode::DurableQuickRepair,
            _ => panic!("mode must be durable|durable-data|async, got {s}"),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct OpenOpts {
    /// redb: `Builder::set_check_integrity_on_open(true)`
    pub check_integrity: bool,
    /// fjall: `KeyspaceCreateOptions::max_memtable_size`
    pub fjall_memtable: Option<u64>,
}

/// A trim: delete every key in `[lo, hi)`.
pub type Trim = (Vec<u8>, Vec<u8>);

pub trait Store {
    /// One transaction / write batch: all puts and all trims, atomically,
    /// made durable according to `mode`. Returns the number of keys trimmed
    /// when the engine reports it (fjall), else 0.
    fn write(&mut self, puts: &[(Vec<u8>, Vec<u8>)], trims: &[Trim], mode: Mode) -> R<usize>;
    /// Visit every key/value in `[lo, hi)` in key order; returns (count, bytes).
    fn read_range(&self, lo: &[u8], hi: &[u8], f: &mut dyn FnMut(&[u8], &[u8])) -> R<(usize, usize)>;
    /// First key in `[lo, hi)` whose value's ts (first 8 bytes) is >= cutoff.
    fn first_key_ts_ge(&self, lo: &[u8], hi: &[u8], cutoff: u64) -> R<Option<Vec<u8>>>;
    /// Reclaim space (redb `Database::compact` loop, fjall `Keyspace::major_compact`).
    fn compact(&mut self) -> R<()>;
    /// fjall: force the memtable to an SST (for building test stores); redb: no-op.
    fn flush(&mut self) -> R<()>;
    fn close(self: Box<Self>) -> R<()>;
}

pub fn open_store(engine: &str, dir: &Path, opts: &OpenOpts) -> R<Box<dyn Store>> {
    std::fs::create_dir_all(dir)?;
    match engine {
        "redb" => Ok(Box::new(RedbStore::open(dir, opts)?)),
        "fjall" => Ok(Box::new(FjallStore::open(dir, opts)?)),
        _ => Err(format!("unknown engine {engine}").into()),
    }
}

/// Allocated bytes (st_blocks * 512) under a path: fjall preallocates its
/// journal sparsely, so the apparent length would overstate it.
pub fn disk_usage(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::symlink_metadata(p) else { return 0 };
    if md.is_dir() {
        std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| disk_usage(&e.path())).sum())
            .unwrap_or(0)
    } else {
        md.blocks() * 512
    }
}

// ---------------------------------------------------------------- redb

const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("msgs");

pub struct RedbStore {
    db: redb::Database,
}

impl RedbStore {
    fn path(dir: &Path) -> PathBuf {
        dir.join("history.redb")
    }
    fn open(dir: &Path, opts: &OpenOpts) -> R<Self> {
        let mut b = redb::Database::builder();
        b.set_check_integrity_on_open(opts.check_integrity);
        let db = b.create(Self::path(dir))?;
        // make sure the table exists so readers never see TableDoesNotExist
        let tx = db.begin_write()?;
        tx.open_table(TABLE)?;
        tx.commit()?;
        Ok(Self { db })
    }
}

impl Store for RedbStore {
    fn write(&mut self, puts: &[(Vec<u8>, Vec<u8>)], trims: &[Trim], mode: Mode) -> R<usize> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(match mode {
            Mode::Durable | Mode::DurableData | Mode::DurableQuickRepair => redb::Durability::Immediate,
            Mode::Async => redb::Durability::None,
        })?;
        if mode == Mode::DurableQuickRepair {
            tx.set_quick_repair(true);
        }
        {
            let mut t = tx.open_table(TABLE)?;
            for (k, v) in puts {
                t.insert(k.as_slice(), v.as_slice())?;
            }
            for (lo, hi) in trims {
                t.retain_in::<&[u8], _>(lo.as_slice()..hi.as_slice(), |_, _| false)?;
            }
        }
        tx.commit()?;
        Ok(0)
    }

    fn read_range(&self, lo: &[u8], hi: &[u8], f: &mut dyn FnMut(&[u8], &[u8])) -> R<(usize, usize)> {
        use redb::ReadableDatabase;
        let rtx = self.db.begin_read()?;
        let t = rtx.open_table(TABLE)?;
        let (mut n, mut bytes) = (0, 0);
        for e in t.range::<&[u8]>(lo..hi)? {
            let (k, v) = e?;
            let v = v.value();
            f(k.value(), v);
            n += 1;
            bytes += v.len();
        }
        Ok((n, bytes))
    }

    fn first_key_ts_ge(&self, lo: &[u8], hi: &[u8], cutoff: u64) -> R<Option<Vec<u8>>> {
        use redb::ReadableDatabase;
        let rtx = self.db.begin_read()?;
        let t = rtx.open_table(TABLE)?;
        for e in t.range::<&[u8]>(lo..hi)? {
            let (k, v) = e?;
            if crate::ts_of(v.value()) >= cutoff {
                return Ok(Some(k.value().to_vec()));
            }
        }
        Ok(None)
    }

    fn compact(&mut self) -> R<()> {
        while self.db.compact()? {}
        Ok(())
    }

    fn flush(&mut self) -> R<()> {
        Ok(())
    }

    fn close(self: Box<Self>) -> R<()> {
        self.db.close()?;
        Ok(())
    }
}

// ---------------------------------------------------------------- fjall

pub struct FjallStore {
    db: fjall::Database,
    ks: fjall::Keyspace,
}

impl FjallStore {
    fn open(dir: &Path, opts: &OpenOpts) -> R<Self> {
        let db = fjall::Database::builder(dir).open()?;
        let mem = opts.fjall_memtable;
        let ks = db.keyspace("msgs", move || {
            let o = fjall::KeyspaceCreateOptions::default();
            match mem {
                Some(m) => o.max_memtable_size(m),
                None => o,
            }
        })?;
        Ok(Self { db, ks })
    }
}

impl Store for FjallStore {
    fn write(&mut self, puts: &[(Vec<u8>, Vec<u8>)], trims: &[Trim], mode: Mode) -> R<usize> {
        let mut b = self.db.batch().durability(Some(match mode {
            Mode::Durable | Mode::DurableQuickRepair => fjall::PersistMode::SyncAll,
            Mode::DurableData => fjall::PersistMode::SyncData,
            Mode::Async => fjall::PersistMode::Buffer,
        }));
        for (k, v) in puts {
            b.insert(&self.ks, k.as_slice(), v.as_slice());
        }
        let mut deleted = 0;
        for (lo, hi) in trims {
            // no range delete in fjall 3: one tombstone per key
            for g in self.ks.range(lo.as_slice()..hi.as_slice()) {
                b.remove(&self.ks, g.key()?);
                deleted += 1;
            }
        }
        b.commit()?;
        Ok(deleted)
    }

    fn read_range(&self, lo: &[u8], hi: &[u8], f: &mut dyn FnMut(&[u8], &[u8])) -> R<(usize, usize)> {
        let (mut n, mut bytes) = (0, 0);
        for g in self.ks.range(lo..hi) {
            let (k, v) = g.into_inner()?;
            f(&k, &v);
            n += 1;
            bytes += v.len();
        }
        Ok((n, bytes))
    }

    fn first_key_ts_ge(&self, lo: &[u8], hi: &[u8], cutoff: u64) -> R<Option<Vec<u8>>> {
        for g in self.ks.range(lo..hi) {
            let (k, v) = g.into_inner()?;
            if crate::ts_of(&v) >= cutoff {
                return Ok(Some(k.to_vec()));
            }
        }
        Ok(None)
    }

    fn compact(&mut self) -> R<()> {
        // tombstones still in the memtable must reach an SST before a major
        // compaction can drop the records they cover
        self.ks.rotate_memtable_and_wait()?;
        self.ks.major_compact()?;
        Ok(())
    }

    fn flush(&mut self) -> R<()> {
        self.ks.rotate_memtable_and_wait()?;
        Ok(())
    }

    fn close(self: Box<Self>) -> R<()> {
        self.db.persist(fjall::PersistMode::SyncAll)?;
        drop(self);
        Ok(())
    }
}
