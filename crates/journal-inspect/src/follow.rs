//! The follow client (`journal dump --follow`): reads the records of a
//! journal another process holds, through the socket that process serves
//! ([`replaymig_journal::follow::FollowServer`], which owns the socket name,
//! the framing and the frame layout: `u64 LSN` then the record as stored,
//! LSN 0 carrying an error text). Every record is verified here: its
//! checksum and that LSNs arrive contiguous.

use bytes::{Buf, Bytes};
use futures_util::{SinkExt, StreamExt};
use replaymig_journal::follow::{codec, SOCKET_NAME};
use replaymig_journal::{Entry, JournalError, Lsn, Record, Result};
use std::path::Path;
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// The reading end: records of a journal another process holds.
pub struct Follower {
    framed: Framed<UnixStream, LengthDelimitedCodec>,
    next: Lsn,
}

impl Follower {
    /// Connects to the process holding the journal in `dir`, from `from`.
    pub async fn connect(dir: &Path, from: Lsn) -> std::io::Result<Follower> {
        let stream = UnixStream::connect(dir.join(SOCKET_NAME)).await?;
        let mut framed = Framed::new(stream, codec());
        framed
            .send(Bytes::copy_from_slice(&from.max(1).to_be_bytes()))
            .await?;
        Ok(Follower {
            framed,
            next: from.max(1),
        })
    }

    /// Whether a live process serves followers of the journal in `dir`.
    pub fn is_served(dir: &Path) -> bool {
        dir.join(SOCKET_NAME).exists()
    }

    /// The next record (verified: checksum and contiguous LSN), waiting for
    /// it; `None` when the serving process closed the journal or exited.
    pub async fn next(&mut self) -> Result<Option<Entry>> {
        let Some(frame) = self.framed.next().await else {
            return Ok(None);
        };
        let mut frame = frame.map_err(JournalError::Io)?;
        if frame.len() < 8 {
            return Err(JournalError::Malformed {
                lsn: self.next,
                reason: "follow frame shorter than its LSN".into(),
            });
        }
        let lsn = frame.get_u64();
        if lsn == 0 {
            return Err(JournalError::Invalid(format!(
                "the journal's owner stopped the follow: {}",
                String::from_utf8_lossy(&frame)
            )));
        }
        if lsn != self.next {
            return Err(JournalError::Malformed {
                lsn: self.next,
                reason: format!("follow stream skipped to LSN {lsn}"),
            });
        }
        let record = Record::decode(lsn, &frame)?;
        self.next = lsn + 1;
        Ok(Some(Entry { lsn, record }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use replaymig_journal::follow::FollowServer;
    use replaymig_journal::{Durability, Journal, JournalOptions, OpenMode};

    #[tokio::test]
    async fn a_follower_gets_old_and_new_records_in_order_and_the_end() {
        let dir = tempfile::TempDir::new().unwrap();
        let options = JournalOptions {
            durability: Durability::Batch,
            mode: OpenMode::CreateIfMissing,
            ..JournalOptions::default()
        };
        let j = Journal::open(dir.path().join("j"), options).unwrap();
        let conn = j.append(Record::opened("127.0.0.1:9")).await.unwrap();
        for i in 0..3u8 {
            j.append(Record::data(conn, 0, 0, Bytes::from(vec![i])))
                .await
                .unwrap();
        }
        let server = FollowServer::start(&j).unwrap();
        assert!(Follower::is_served(&dir.path().join("j")));
        let mut f = Follower::connect(&dir.path().join("j"), 2).await.unwrap();
        for lsn in 2..=4 {
            assert_eq!(f.next().await.unwrap().unwrap().lsn, lsn);
        }
        // A record appended later arrives too.
        let wait = tokio::spawn(async move { (f.next().await.unwrap().unwrap(), f) });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        j.append(Record::closed(conn, 0)).await.unwrap();
        let (entry, mut f) = wait.await.unwrap();
        assert_eq!(entry.lsn, 5);
        assert_eq!(entry.record.kind_name(), "closed");
        j.close().await.unwrap();
        assert!(f.next().await.unwrap().is_none(), "closed journal: the end");
        drop(server);
        assert!(!Follower::is_served(&dir.path().join("j")));
    }
}
