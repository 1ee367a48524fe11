//! What a process-level snapshot that carries the connections themselves
//! needs from the proxy (CRIU `--tcp-established` with the socket holder,
//! see `replaymig_snapshot::holder`): a copy of the proxy's end of every
//! journaled service connection, taken while a barrier holds the gate, and
//! a check that no answer bytes were read from the service while it was
//! being dumped.
//!
//! Why the check: the image holds each connection's unread answer bytes,
//! and the destination continues the connection from the answer count the
//! snapshot mark recorded. Bytes the proxy read after the mark but before
//! the dump copied the socket's queue would be in neither the count nor
//! the image; bytes read after the copy would be in both. With the gate
//! held no input reaches the service, so the count moves only when an
//! answer to earlier input arrives; if it moved, where the image's answer
//! stream starts is unknown, and the snapshot is refused.

use crate::barrier::Quiesced;
use crate::shared::Shared;
use replaymig_journal::ConnId;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;

/// Applies `f` to the proxy's end of each open journaled service
/// connection, in connection order. Under a barrier's hold (the gate is
/// held), so no forward is using a writing half and the set of journaled
/// connections is fixed.
async fn each_service_socket<T>(
    shared: &Shared,
    mut f: impl FnMut(ConnId, &tokio::net::TcpStream) -> std::io::Result<T>,
) -> std::io::Result<Vec<T>> {
    let mut open = shared.open_slots();
    open.sort_by_key(|slot| slot.conn);
    let mut out = Vec::with_capacity(open.len());
    for slot in open {
        let half = slot.service_write.lock().await;
        out.push(f(slot.conn, half.half.as_ref())?);
    }
    Ok(out)
}

/// A copy of the proxy's end of each open journaled service connection
/// (`_hold` proves the gate is held).
pub(crate) async fn service_sockets(
    shared: &Shared,
    _hold: &Quiesced,
) -> std::io::Result<Vec<(ConnId, OwnedFd)>> {
    each_service_socket(shared, |conn, stream| {
        Ok((conn, stream.as_fd().try_clone_to_owned()?))
    })
    .await
}

nix::ioctl_read_bad!(unread_bytes, nix::libc::FIONREAD, nix::libc::c_int);

/// Answer bytes the service has written that the proxy has not read yet,
/// over all journaled service connections (each socket's receive queue).
/// With the service paused: once this is 0 and the answer counts still
/// match the mark, the service has said its last word before the point,
/// and everything it said is in the mark.
pub(crate) async fn answers_unread(shared: &Shared, _hold: &Quiesced) -> std::io::Result<u64> {
    let unread = each_service_socket(shared, |_, stream| {
        let mut n: nix::libc::c_int = 0;
        // SAFETY: FIONREAD writes one int through the pointer.
        unsafe { unread_bytes(std::os::fd::AsRawFd::as_raw_fd(stream), &mut n) }
            .map_err(std::io::Error::from)?;
        Ok(n.max(0) as u64)
    })
    .await?;
    Ok(unread.iter().sum())
}

/// The connections whose count of answer bytes read from the service is
/// no longer the one `hold`'s snapshot mark recorded.
pub(crate) fn answers_moved(shared: &Shared, hold: &Quiesced) -> Vec<ConnId> {
    let open = shared.open.lock().expect("poisoned");
    let mut moved: Vec<ConnId> = hold
        .mark
        .delivered
        .iter()
        .filter(|(conn, at_mark)| {
            open.get(conn).is_some_and(|slot| {
                slot.answer_bytes_read_from_service.load(Ordering::Acquire) != **at_mark
            })
        })
        .map(|(conn, _)| *conn)
        .collect();
    moved.sort_unstable();
    moved
}
