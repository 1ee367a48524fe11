//! Following a live journal from another process (`journal dump --follow`).
//!
//! sled lets one process open a journal, so the process that holds it (a
//! proxy or a node) serves a Unix socket, [`SOCKET_NAME`] in the journal
//! directory; a follower connects, sends the LSN to start from, and
//! receives every durable record from there on, in order, as they are
//! committed. Read-only: nothing a follower sends can append. The socket is
//! owner-only (0600), like the journal's files.
//!
//! Frames (length-delimited, big-endian length): `u64 LSN` then the record
//! as stored (checksummed over its LSN, verified by the follower). LSN 0
//! carries an error text instead: the server could not go on.

use crate::error::{JournalError, Result};
use crate::record::{Record, MAX_DATA_LEN};
use crate::store::Entry;
use crate::{Journal, Lsn};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// The socket's file name inside the journal directory.
pub const SOCKET_NAME: &str = "follow.sock";

/// Followers served at once; more are refused (closed at once).
const MAX_FOLLOWERS: usize = 16;

/// Largest frame: one record (its payload limit plus headers).
const MAX_FRAME: usize = MAX_DATA_LEN + 4096;

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// Serves followers of one journal while it lives; removes its socket when
/// dropped.
pub struct FollowServer {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl FollowServer {
    /// Binds `<journal dir>/follow.sock` (replacing a stale one: the caller
    /// holds the journal's lock, so no other live process serves it).
    pub fn start(journal: &Journal) -> std::io::Result<FollowServer> {
        let path = journal.dir().join(SOCKET_NAME);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let task = tokio::spawn(accept(listener, journal.clone()));
        Ok(FollowServer { path, task })
    }

    /// Where followers connect.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FollowServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn accept(listener: UnixListener, journal: Journal) {
    let slots = Arc::new(Semaphore::new(MAX_FOLLOWERS));
    let mut followers = tokio::task::JoinSet::new();
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!("journal follower refused: {MAX_FOLLOWERS} already connected");
            let _ = stream.shutdown().await;
            continue;
        };
        let journal = journal.clone();
        followers.spawn(async move {
            if let Err(e) = serve(stream, &journal).await {
                tracing::debug!(error = %e, "journal follower ended");
            }
            drop(permit);
        });
        while followers.try_join_next().is_some() {}
    }
}

/// One follower: read its start LSN, then stream records until it leaves
/// or the journal closes.
async fn serve(stream: UnixStream, journal: &Journal) -> std::io::Result<()> {
    let mut framed = Framed::new(stream, codec());
    let Some(first) = framed.next().await else {
        return Ok(());
    };
    let mut first = first?;
    if first.len() != 8 {
        return Err(std::io::Error::other("a follow request is one 8-byte LSN"));
    }
    let from = first.get_u64().max(1);
    let mut tail = match journal.tail(from) {
        Ok(tail) => tail,
        Err(e) => return send_error(&mut framed, &e).await,
    };
    loop {
        tokio::select! {
            next = tail.next() => match next {
                Ok(Some(entry)) => {
                    let mut frame = BytesMut::with_capacity(8 + entry.record.encoded_len_hint());
                    frame.put_u64(entry.lsn);
                    frame.extend_from_slice(&entry.record.encode(entry.lsn));
                    framed.send(frame.freeze()).await?;
                }
                Ok(None) => return Ok(()),
                Err(e) => return send_error(&mut framed, &e).await,
            },
            // The follower left (or sent something it should not have).
            _ = framed.next() => return Ok(()),
        }
    }
}

async fn send_error(
    framed: &mut Framed<UnixStream, LengthDelimitedCodec>,
    e: &JournalError,
) -> std::io::Result<()> {
    let mut frame = BytesMut::new();
    frame.put_u64(0);
    frame.extend_from_slice(e.to_string().as_bytes());
    framed.send(frame.freeze()).await
}

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
    use crate::{Durability, JournalOptions, OpenMode};

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
