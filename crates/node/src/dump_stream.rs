//! Sending a dump's files while a dump that holds the clients runs (CRIU's,
//! under the snapshot barrier): the link works during the dump instead of
//! idling until it ends. Kept from lengthening the hold: the dump's end is
//! never made to wait for the link (what the link has not taken by then
//! stays in its write buffer, sent once the clients are released), and
//! only pieces zstd would not shrink go, uncompressed — compressing beside
//! the frozen dump took the CPU it needed (+20 ms of hold on a loaded
//! two-core machine); compressible pieces follow after the dump.

use anyhow::{Context, Result};
use replaymig_peer::PeerLink;
use replaymig_snapshot::stream::DumpStream;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

/// How often the dump's directory is looked at for newly written pieces
/// when none was ready: short against a dump's length, long enough not to
/// spin.
pub(crate) const STREAM_POLL: Duration = Duration::from_millis(5);

/// Runs `dump` while queuing every whole piece of the files it writes in
/// `dir` on `link`, one at a time, and flushing it between looks — with
/// no wait on the link once `dump` is done (the caller flushes the rest
/// after the hold). A link or read error stops the streaming, but `dump`
/// still runs to its end (CRIU must thaw the service itself); the error
/// is returned then.
pub(crate) async fn stream_while<T>(
    dump: impl Future<Output = Result<T>>,
    dir: &Path,
    link: &mut PeerLink,
) -> Result<(T, DumpStream)> {
    tokio::pin!(dump);
    let mut stream = DumpStream::incompressible_only(dir);
    let mut failed: Option<anyhow::Error> = None;
    let dumped = loop {
        if failed.is_none() && link.is_flushed() {
            if let Err(e) = queue_next(&mut stream, link) {
                failed = Some(e);
            }
        }
        let flushing = failed.is_none() && !link.is_flushed();
        tokio::select! {
            biased;
            dumped = &mut dump => break dumped,
            // Cancel-safe: what is not written stays buffered.
            flushed = link.flush(), if flushing => {
                if let Err(e) = flushed {
                    failed = Some(e.into());
                }
            }
            _ = tokio::time::sleep(STREAM_POLL), if !flushing => {}
        }
    };
    let dumped = dumped?;
    if let Some(e) = failed {
        return Err(e).context("sending the dump's files while it was written");
    }
    Ok((dumped, stream))
}

/// Queues the next whole piece written, if there is one.
fn queue_next(stream: &mut DumpStream, link: &mut PeerLink) -> Result<()> {
    // Tests: the link failing while the dump runs (CRIU's keeps the
    // service frozen meanwhile), whether or not a piece was ready yet.
    if fail::eval("dump-stream-link-fails", |_| ()).is_some() {
        anyhow::bail!("the link failed (fail point dump-stream-link-fails)");
    }
    if let Some(msg) = stream.next_message()? {
        link.queue(msg)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use replaymig_peer::{Authenticator, Message, Secret};
    use replaymig_snapshot::transfer::CHUNK_BYTES;
    use std::io::Write;
    use std::time::Instant;

    /// A linked pair over loopback: (sender, receiver).
    async fn linked() -> (PeerLink, PeerLink) {
        let secret = || Secret::new("a-shared-secret-of-enough-length").unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            PeerLink::accept(stream, &Authenticator::new("b", secret())).await
        });
        let sender = PeerLink::connect(addr, &Authenticator::new("a", secret()))
            .await
            .unwrap();
        (sender, accept.await.unwrap().unwrap())
    }

    /// A "dump" writing `pieces` whole pieces of one file, `pause` apart
    /// (incompressible, like memory pages: compression does not shrink
    /// them below what the socket buffers hold).
    async fn dump(dir: &Path, pieces: usize, pause: Duration) -> Result<usize> {
        let mut file = std::fs::File::create(dir.join("pages-1.img"))?;
        for i in 0..pieces {
            file.write_all(&replaymig_testkit::noise(CHUNK_BYTES, i as u64))?;
            tokio::time::sleep(pause).await;
        }
        Ok(pieces)
    }

    #[tokio::test]
    async fn pieces_go_while_the_dump_runs_and_its_end_never_waits_for_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let (mut sender, mut receiver) = linked().await;
        // Nobody reads yet: the link fills, and the dump's end must still
        // come at once.
        // (32 MiB: more than loopback's socket buffers hold.)
        let started = Instant::now();
        let dumping = dump(dir.path(), 32, Duration::from_millis(2));
        let streaming = stream_while(dumping, dir.path(), &mut sender);
        let (pieces, stream) = tokio::time::timeout(Duration::from_secs(10), streaming)
            .await
            .expect("the dump's end waited for the link")
            .unwrap();
        let took = started.elapsed();
        assert_eq!(pieces, 32);
        assert!(
            !sender.is_flushed(),
            "the link took everything: no test of the end"
        );
        let streamed = stream.stats.raw_bytes;
        assert!(
            streamed >= CHUNK_BYTES as u64,
            "nothing went during the dump"
        );
        assert!(took < Duration::from_secs(5), "{took:?}");
        // What was queued arrives whole and in order once read.
        let reading = tokio::spawn(async move {
            let mut offsets = Vec::new();
            while let Ok(Message::SnapshotStreamChunk { offset, .. }) =
                receiver.recv_timeout(Duration::from_secs(5)).await
            {
                offsets.push(offset);
                if offsets.len() as u64 * CHUNK_BYTES as u64 == streamed {
                    break;
                }
            }
            offsets
        });
        sender.flush().await.unwrap();
        let offsets = reading.await.unwrap();
        let expected: Vec<u64> = (0..offsets.len() as u64)
            .map(|i| i * CHUNK_BYTES as u64)
            .collect();
        assert_eq!(offsets, expected);
        assert_eq!(offsets.len() as u64 * CHUNK_BYTES as u64, streamed);
    }

    #[tokio::test]
    async fn a_dead_link_stops_the_streaming_but_the_dump_runs_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let (mut sender, receiver) = linked().await;
        drop(receiver);
        let ran_to_end = std::sync::atomic::AtomicBool::new(false);
        let dumping = async {
            let pieces = dump(dir.path(), 40, Duration::from_millis(2)).await?;
            ran_to_end.store(true, std::sync::atomic::Ordering::Release);
            Ok(pieces)
        };
        let err = stream_while(dumping, dir.path(), &mut sender)
            .await
            .err()
            .expect("the link died");
        assert!(ran_to_end.load(std::sync::atomic::Ordering::Acquire));
        assert!(
            format!("{err:#}").contains("while it was written"),
            "{err:#}"
        );
    }
}
