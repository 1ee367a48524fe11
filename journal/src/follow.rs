//! The journal's live feed for readers in other processes (what
//! `journal dump --follow` reads through).
//!
//! sled lets one process open a journal, so the process that holds it (a
//! proxy or a node) serves a Unix socket, [`SOCKET_NAME`] in the journal
//! directory; a follower connects, sends the LSN to start from, and
//! receives every durable record from there on, in order, as they are
//! committed. Read-only: nothing a follower sends can append. The socket is
//! owner-only (0600), like the journal's files.
//!
//! Frames ([`codec`]: length-delimited, big-endian length): `u64 LSN` then
//! the record as stored (checksummed over its LSN, verified by the
//! follower). LSN 0 carries an error text instead: the server could not go
//! on. The reading end is `Follower` in the `replaymig-journal-inspect`
//! crate; this module owns the server and the wire format it speaks.

use crate::error::JournalError;
use crate::record::MAX_DATA_LEN;
use crate::Journal;
use bytes::{Buf, BufMut, BytesMut};
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

/// The framing both ends of the follow socket use (public so the follower,
/// which lives outside this crate, reads exactly what the server writes).
pub fn codec() -> LengthDelimitedCodec {
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
