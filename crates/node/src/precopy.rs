//! The pre-copy rounds of an iterative migration (paper Algorithm 1, lines
//! 1–7): full dumps while the service runs (this kernel has no soft-dirty
//! tracking for CRIU `pre-dump`), each shipped as a block delta against what
//! the destination already holds, until memory is dirtied slower than the
//! threshold or the round limit is reached. The final dump, under held
//! input, follows in the migration proper.

use crate::context::{NodeShared, ServiceHost};
use crate::report::Iteration;
use anyhow::Result;
use replaymig_peer::PeerLink;
use replaymig_snapshot::delta::BlockIndex;
use replaymig_snapshot::transfer::SnapshotChunks;
use replaymig_snapshot::{Manifest, Placeholders};
use std::time::Instant;

/// What the pre-copy left at the destination.
pub(crate) struct PreCopied {
    /// Block digests of the last round's dump (the destination's copy).
    pub held: BlockIndex,
    /// The rounds.
    pub rounds: Vec<Iteration>,
}

/// Runs the rounds; `sent` is told the link bytes after every chunk.
pub(crate) async fn run(
    node: &NodeShared,
    host: &ServiceHost,
    link: &mut PeerLink,
    vars: &Placeholders,
    (threshold, max_rounds): (u64, u32),
    sent: &mut (dyn FnMut(u64) + Send),
) -> Result<PreCopied> {
    let service = &host.config;
    let driver = service.snapshot.driver();
    let mut held: Option<BlockIndex> = None;
    let mut rounds: Vec<Iteration> = Vec::new();
    let mut previous_dump: Option<Instant> = None;
    let mut total_sent = 0;
    for round in 1..=max_rounds.max(1) {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-precopy-", service.name))
            .tempdir_in(&node.config.work_dir)?;
        driver.fix_point(dir.path(), vars).await?;
        driver.finish_dump(dir.path(), vars).await?;
        let dump_seconds = started.elapsed().as_secs_f64();
        let mut manifest = Manifest::build(dir.path(), &service.name, driver.name(), 0)?;
        manifest.precopy = true;
        let index = BlockIndex::of(dir.path(), &manifest)?;
        let (ranges, dirty_bytes) = index.changed_since(&manifest, held.as_ref());
        let mut chunks = SnapshotChunks::delta(dir.path(), &manifest, true, ranges);
        while let Some(msg) = chunks.next_message()? {
            link.send(msg).await?;
            sent(total_sent + chunks.stats.wire_bytes);
        }
        total_sent += chunks.stats.wire_bytes;
        let dirty_rate = previous_dump
            .map(|at| dirty_bytes as f64 / at.elapsed().as_secs_f64().max(1e-3))
            .unwrap_or(0.0);
        previous_dump = Some(started);
        rounds.push(Iteration {
            round,
            dump_seconds,
            dirty_bytes,
            sent_bytes: chunks.stats.wire_bytes,
            dirty_rate,
            seconds: started.elapsed().as_secs_f64(),
        });
        held = Some(index);
        tracing::info!(service = %service.name, round, dirty_bytes, dirty_rate, "pre-copy round shipped");
        if round > 1 && dirty_rate <= threshold as f64 {
            break;
        }
    }
    Ok(PreCopied {
        held: held.expect("at least one round"),
        rounds,
    })
}
