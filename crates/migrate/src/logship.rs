//! Log shipping: the owner streams every durable journal record from
//! `from` on to the receiving node in batches; the receiver verifies each
//! record's checksum under its LSN, journals it under the same LSN, hands
//! it to the caller (the replayer), and acknowledges the highest LSN done.

use futures_util::FutureExt;
use replaymig_journal::{Entry, Journal, JournalError, Lsn, Record, Tail};
use replaymig_peer::{LinkError, Message, PeerLink};

/// Most records per batch (a batch also stays under the frame limit: the
/// journal caps a record at 1 MiB and the proxy reads 16 KiB at a time).
pub const MAX_BATCH_RECORDS: usize = 256;
/// Most encoded bytes per batch.
pub const MAX_BATCH_BYTES: usize = 4 << 20;

/// Why shipping failed.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// The link failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// Reading or writing a journal failed (a corrupt record names its LSN).
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The peer broke the protocol.
    #[error("log shipping protocol error: {0}")]
    Protocol(String),
    /// The receiver gave up (e.g. its replay diverged).
    #[error("the destination aborted: {0}")]
    Aborted(String),
}

/// Figures of the shipping so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShipStats {
    /// Records shipped.
    pub records: u64,
    /// Encoded bytes shipped (before compression).
    pub bytes: u64,
    /// Bytes of the packed batches on the link.
    pub wire_bytes: u64,
    /// Batches shipped.
    pub batches: u64,
    /// Last LSN shipped.
    pub last_lsn: Lsn,
    /// Highest LSN the receiver acknowledged.
    pub acked: Lsn,
}

/// Ships a journal from a starting LSN, reading the receiver's
/// acknowledgements as they come (so neither side's buffers fill up).
pub struct Shipper {
    tail: Tail,
    /// Figures so far.
    pub stats: ShipStats,
    shipping: bool,
}

impl Shipper {
    /// Starts at `from` (the first LSN after the snapshot point).
    pub fn new(journal: &Journal, from: Lsn) -> Result<Shipper, ShipError> {
        Ok(Shipper {
            tail: journal.tail(from)?,
            stats: ShipStats::default(),
            shipping: true,
        })
    }

    /// Ships and reads acknowledgements until `done(stats)` holds (checked
    /// after each batch and each acknowledgement). Fails if the journal
    /// closes first.
    pub async fn run_until(
        &mut self,
        link: &mut PeerLink,
        mut done: impl FnMut(&ShipStats) -> bool,
    ) -> Result<(), ShipError> {
        loop {
            if done(&self.stats) {
                return Ok(());
            }
            tokio::select! {
                next = self.tail.next(), if self.shipping => {
                    let Some(first) = next? else {
                        self.shipping = false;
                        continue;
                    };
                    let batch = fill_batch(first, &mut self.tail)?;
                    self.send_batch(link, batch).await?;
                }
                msg = link.recv() => match msg? {
                    Message::LogApplied { lsn } => self.stats.acked = self.stats.acked.max(lsn),
                    Message::MigrateAbort { reason } => return Err(ShipError::Aborted(reason)),
                    other => return Err(ShipError::Protocol(format!("unexpected {} while shipping", other.name()))),
                },
            }
            if !self.shipping && self.stats.acked >= self.stats.last_lsn && !done(&self.stats) {
                return Err(ShipError::Protocol(
                    "the journal closed while shipping".into(),
                ));
            }
        }
    }
}

impl Shipper {
    /// Ships whatever is durable right now (at most `max_batches`
    /// batches) without waiting for more or reading acknowledgements:
    /// used between snapshot chunks, so the log travels with the snapshot.
    pub async fn ship_ready(
        &mut self,
        link: &mut PeerLink,
        max_batches: usize,
    ) -> Result<(), ShipError> {
        for _ in 0..max_batches {
            let first = match self.tail.next().now_or_never() {
                Some(Ok(Some(first))) => first,
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(None)) | None => return Ok(()),
            };
            let batch = fill_batch(first, &mut self.tail)?;
            self.send_batch(link, batch).await?;
        }
        Ok(())
    }
}

impl Shipper {
    async fn send_batch(&mut self, link: &mut PeerLink, batch: Batch) -> Result<(), ShipError> {
        let packed = pack(&batch.records);
        self.stats.records += batch.records.len() as u64;
        self.stats.bytes += batch.bytes as u64;
        self.stats.wire_bytes += packed.len() as u64;
        self.stats.batches += 1;
        self.stats.last_lsn = batch.last;
        link.send(Message::LogBatch {
            first_lsn: batch.first,
            count: batch.records.len() as u32,
            packed,
        })
        .await?;
        Ok(())
    }
}

/// Most bytes a batch may unpack to: the batch limit plus one maximal
/// record (a batch closes once it passes the limit) and the length
/// prefixes. A packed batch claiming more is refused, not inflated.
const MAX_UNPACKED_BYTES: usize = MAX_BATCH_BYTES + (1 << 20) + 4 * MAX_BATCH_RECORDS;

/// Packs encoded records for a [`Message::LogBatch`].
pub fn pack(records: &[Vec<u8>]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(records.iter().map(|r| r.len() + 4).sum());
    for record in records {
        raw.extend_from_slice(&(record.len() as u32).to_be_bytes());
        raw.extend_from_slice(record);
    }
    zstd::bulk::compress(&raw, 1).expect("compressing into memory cannot fail")
}

/// Unpacks a [`Message::LogBatch`]'s records; anything but exactly
/// `count` well-formed records within the size bound is an error.
pub fn unpack(count: u32, packed: &[u8]) -> Result<Vec<Vec<u8>>, ShipError> {
    let bad = |why: String| ShipError::Protocol(format!("malformed log batch: {why}"));
    if count as usize > MAX_BATCH_RECORDS {
        return Err(bad(format!(
            "{count} records (at most {MAX_BATCH_RECORDS})"
        )));
    }
    let raw = zstd::bulk::decompress(packed, MAX_UNPACKED_BYTES).map_err(|e| {
        bad(format!(
            "does not decompress within {MAX_UNPACKED_BYTES} bytes: {e}"
        ))
    })?;
    let mut records = Vec::with_capacity(count as usize);
    let mut rest = raw.as_slice();
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_be_bytes(*len) as usize;
        if tail.len() < len {
            return Err(bad(format!("record {} is cut short", records.len())));
        }
        records.push(tail[..len].to_vec());
        rest = &tail[len..];
    }
    if !rest.is_empty() || records.len() != count as usize {
        return Err(bad(format!(
            "{} records and {} stray bytes, {count} announced",
            records.len(),
            rest.len()
        )));
    }
    Ok(records)
}

/// One batch being assembled.
struct Batch {
    first: Lsn,
    last: Lsn,
    bytes: usize,
    records: Vec<Vec<u8>>,
}

/// Adds to `first` whatever else is already durable, without waiting.
fn fill_batch(first: Entry, tail: &mut Tail) -> Result<Batch, ShipError> {
    let encoded = first.record.encode(first.lsn);
    let mut batch = Batch {
        first: first.lsn,
        last: first.lsn,
        bytes: encoded.len(),
        records: vec![encoded],
    };
    while batch.records.len() < MAX_BATCH_RECORDS && batch.bytes < MAX_BATCH_BYTES {
        match tail.next().now_or_never() {
            Some(Ok(Some(entry))) => {
                let encoded = entry.record.encode(entry.lsn);
                batch.bytes += encoded.len();
                batch.last = entry.lsn;
                batch.records.push(encoded);
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(None)) | None => break,
        }
    }
    Ok(batch)
}

/// Unpacks a received [`Message::LogBatch`] and journals it (see
/// [`journal_batch`]).
pub async fn journal_packed(
    journal: &Journal,
    first_lsn: Lsn,
    count: u32,
    packed: &[u8],
) -> Result<Vec<Entry>, ShipError> {
    journal_batch(journal, first_lsn, &unpack(count, packed)?).await
}

/// Verifies one received batch and journals it under its LSNs (which must
/// continue `journal`); returns its entries. Nothing of a bad batch is
/// journaled.
pub async fn journal_batch(
    journal: &Journal,
    first_lsn: Lsn,
    encoded: &[Vec<u8>],
) -> Result<Vec<Entry>, ShipError> {
    if encoded.is_empty() {
        return Err(ShipError::Protocol("empty log batch".into()));
    }
    // A peer's first LSN near u64::MAX must be refused, not overflow.
    if first_lsn == 0 || first_lsn.checked_add(encoded.len() as Lsn).is_none() {
        return Err(ShipError::Protocol(format!(
            "log batch of {} records at LSN {first_lsn} is out of range",
            encoded.len()
        )));
    }
    let mut entries = Vec::with_capacity(encoded.len());
    for (i, bytes) in encoded.iter().enumerate() {
        let lsn = first_lsn + i as Lsn;
        entries.push(Entry {
            lsn,
            record: Record::decode(lsn, bytes)?,
        });
    }
    // A batch may pass the journal's group limit (it closes once past its
    // own byte limit, and answers kept in `full` mode are large): append
    // it in as many groups as it takes, in order.
    for run in replaymig_journal::split_for_append(entries.iter().collect(), |e: &&Entry| &e.record)
    {
        let first = run[0].lsn;
        journal
            .append_at(first, run.iter().map(|e| e.record.clone()).collect())
            .await?;
    }
    Ok(entries)
}

/// Tells the sender everything up to `lsn` is journaled and applied.
pub async fn ack(link: &mut PeerLink, lsn: Lsn) -> Result<(), ShipError> {
    link.send(Message::LogApplied { lsn }).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_pack_and_unpack_and_bad_ones_are_refused() {
        let records = vec![b"one".to_vec(), Vec::new(), vec![7u8; 5000]];
        let packed = pack(&records);
        assert!(
            packed.len() < 200,
            "repetitive records compress: {}",
            packed.len()
        );
        assert_eq!(unpack(3, &packed).unwrap(), records);
        for (count, packed, why) in [
            (2, packed.clone(), "announced"),
            (4, packed.clone(), "announced"),
            (3, b"not zstd".to_vec(), "decompress"),
            (
                3,
                zstd::bulk::compress(&[0, 0, 0, 9, 1], 1).unwrap(),
                "cut short",
            ),
            (9999, packed.clone(), "at most"),
        ] {
            let err = unpack(count, &packed).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
    }
}
