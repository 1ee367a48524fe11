//! CRIU carrying the client connections (`carry_connections`): the
//! source hands the socket holder a copy of the proxy's end of every
//! service connection for the length of the dump, so the image holds both
//! ends; the destination takes the restored proxy ends from the restored
//! holder and continues each connection on its own socket
//! (`replaymig_snapshot::holder` has the mechanism).

use crate::context::ServiceHost;
use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use replaymig_journal::ConnId;
use replaymig_snapshot::{holder, Driver, Placeholders};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// The dump of a snapshot that carries the connections, under `hold`
/// (the gate is held, so the set of connections and their input is
/// fixed): copies to the holder, the dump, the copies let go again —
/// whatever the dump did — and the check that no answer bytes were read
/// meanwhile (the proxy's `carry` module says why that would make the
/// image ambiguous). Returns how many connections the image carries.
pub(crate) async fn dump_carrying(
    host: &ServiceHost,
    hold: &replaymig_proxy::Quiesced,
    driver: &Driver,
    dir: &Path,
    vars: &Placeholders,
) -> Result<usize> {
    let service = host.config.name.clone();
    let sockets = host
        .proxy
        .service_sockets(hold)
        .await
        .context("cannot copy the proxy's service connections for the dump")?;
    let count = sockets.len();
    let name = service.clone();
    let held = tokio::task::spawn_blocking(move || {
        // Copies left by an attempt whose node died before letting them go
        // would keep closed connections open for the service: none may
        // enter this image.
        holder::release(&name)?;
        let conns: Vec<_> = sockets.iter().map(|(c, fd)| (*c, fd.as_fd())).collect();
        holder::hold(&name, &conns)
    })
    .await?;
    let result = match held {
        Ok(n) if n == count => driver.fix_point(dir, vars).await.map_err(Into::into),
        Ok(n) => Err(anyhow::anyhow!(
            "the socket holder holds {n} connections, {count} were handed to it"
        )),
        Err(e) => Err(anyhow::Error::from(e).context("cannot hand the connections to the holder")),
    };
    let name = service.clone();
    let released = tokio::task::spawn_blocking(move || holder::release(&name)).await?;
    result?;
    // Not let go: a connection the proxy closes stays open for the
    // service until the holder is stopped.
    released.context("the socket holder did not let the dumped connections go")?;
    let moved = host.proxy.answers_moved(hold);
    if !moved.is_empty() {
        bail!(
            "answer bytes arrived on {} connection(s) ({}) while the service was dumped: where \
             their answers resume in the image is unknown, so the snapshot is refused",
            moved.len(),
            moved
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    tracing::info!(
        connections = count,
        "the dump carries the client connections"
    );
    Ok(count)
}

/// The restored proxy ends, by connection, from the holder restored with
/// the service.
pub(crate) async fn take_restored(service: &str) -> Result<BTreeMap<ConnId, OwnedFd>> {
    let name = service.to_string();
    tokio::task::spawn_blocking(move || holder::take(&name))
        .await?
        .context("cannot take the restored connections from the socket holder")
}

/// The service, paused at a barrier of a migration that carries the
/// connections (see [`pause_and_drain`]); resumed when dropped — with
/// the release of the input: after the dump, after the switch (when what
/// it would still say goes nowhere), or when the migration gives up and
/// it serves on.
pub(crate) struct PausedService {
    group: Pid,
}

impl Drop for PausedService {
    fn drop(&mut self) {
        let _ = killpg(self.group, Signal::SIGCONT);
    }
}

/// Resumes a restored service: it was dumped paused, and CRIU restores
/// the state it found.
pub(crate) fn resume_restored(group_leader: u32) -> Result<()> {
    killpg(Pid::from_raw(group_leader as i32), Signal::SIGCONT)
        .context("cannot resume the restored service")
}

/// How long the proxy may take to read what the paused service wrote.
const DRAIN_BOUND: Duration = Duration::from_millis(50);

/// At a barrier of a migration that carries the connections, the point
/// must be exact even though input without an answer is not waited for:
/// each connection continues at the destination at the answer count the
/// mark recorded (from the image's socket queues at the snapshot; from
/// the destination's own replay at the hand-over), so no answer byte may
/// come from the service after the mark. The service (the holder's
/// process group, `group_leader`) is paused, the proxy reads what it had
/// already written, and the barrier holds only if nothing was read since
/// `hold`'s mark: then every answer byte the service wrote is in the mark,
/// and the rest comes from the destination — a blocked `BLPOP`, a value
/// still being sent continue there. Otherwise this attempt fails (the
/// caller releases the input and tries again). CRIU dumps the paused tree
/// as it is; the destination resumes it after the restore.
pub(crate) async fn pause_and_drain(
    host: &ServiceHost,
    hold: &replaymig_proxy::Quiesced,
    group_leader: u32,
) -> Result<PausedService> {
    let group = Pid::from_raw(group_leader as i32);
    killpg(group, Signal::SIGSTOP).context("cannot pause the service at the barrier")?;
    let paused = PausedService { group };
    // The holder (the group's leader) goes on: it takes the sockets for
    // the dump. Stopping the group first leaves no window in which a
    // process the service forks escapes the pause.
    kill(group, Signal::SIGCONT).context("cannot resume the socket holder")?;
    let started = Instant::now();
    loop {
        let unread = host.proxy.answers_unread(hold).await?;
        if unread == 0 {
            break;
        }
        if started.elapsed() > DRAIN_BOUND {
            bail!(
                "{unread} answer bytes of the paused service were not read within {DRAIN_BOUND:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // A read just done is counted within the same poll of its task.
    tokio::task::yield_now().await;
    let moved = host.proxy.answers_moved(hold);
    if !moved.is_empty() {
        bail!(
            "the service answered on {} connection(s) after the barrier's point",
            moved.len()
        );
    }
    Ok(paused)
}
