//! The socket holder: how CRIU carries a service's client connections.
//!
//! CRIU dumps and restores established TCP connections only when both ends
//! are in the dumped process tree (`--tcp-established`). The service holds
//! one end of each connection from the proxy; the proxy, outside the tree,
//! holds the other. So the service runs under a small holder process — the
//! init of its PID namespace, the root of the tree CRIU dumps — and right
//! before a dump the node hands the holder a copy of the proxy's end of
//! every service connection (`SCM_RIGHTS` over a Unix socket). The image
//! then holds both ends with their TCP state, unread bytes and the
//! service's per-connection state; the holder restored at the destination
//! hands the restored proxy ends to the node there, which continues the
//! connections on them. Right after the dump the source's holder lets its
//! copies go, so a connection the proxy closes is closed for the service.
//!
//! The holder listens on an abstract Unix `SOCK_SEQPACKET` socket named
//! after the service (abstract names belong to the network namespace, like
//! the service's address). Each request is one connection, closed before
//! anything else happens: CRIU cannot dump half of a connected Unix pair.
//!
//! Messages (one datagram each): `[op u8][count u32 LE][count × conn id
//! u64 LE]`, with `count` descriptors attached for `HOLD` and for each
//! batch `TAKE` answers with. Ops: `H` hold these (added to those held),
//! `R` release all, `T` take all (the holder answers `K` with the total,
//! then batches of at most [`BATCH`], and lets its copies go).

use nix::cmsg_space;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{self, SigHandler, Signal};
use nix::sys::socket::{
    accept4, bind, connect, listen, recvmsg, sendmsg, setsockopt, socket, sockopt, AddressFamily,
    Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use nix::sys::time::TimeVal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

/// A connection's id in the journal (`replaymig_journal::ConnId`).
pub type ConnId = u64;

/// Descriptors per message (the kernel's limit is 253).
pub const BATCH: usize = 200;

/// How long a request may take before it fails (the holder is local and
/// answers at once unless it is frozen): clients' input is held meanwhile.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

const OP_HOLD: u8 = b'H';
const OP_RELEASE: u8 = b'R';
const OP_TAKE: u8 = b'T';
const OP_OK: u8 = b'K';
const OP_FDS: u8 = b'F';

/// The abstract socket name of `service`'s holder.
pub fn socket_name(service: &str) -> String {
    format!("replaymig-holder/{service}")
}

fn address(service: &str) -> io::Result<UnixAddr> {
    UnixAddr::new_abstract(socket_name(service).as_bytes()).map_err(io::Error::from)
}

fn encode(op: u8, ids: &[ConnId]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + ids.len() * 8);
    out.push(op);
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

fn decode(bytes: &[u8]) -> io::Result<(u8, Vec<ConnId>)> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed holder message");
    let (&op, rest) = bytes.split_first().ok_or_else(bad)?;
    let count = u32::from_le_bytes(rest.get(..4).ok_or_else(bad)?.try_into().expect("4"));
    let ids = rest[4..]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8")))
        .collect::<Vec<_>>();
    if ids.len() != count as usize || rest.len() != 4 + ids.len() * 8 {
        return Err(bad());
    }
    Ok((op, ids))
}

fn send(sock: BorrowedFd<'_>, message: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let iov = [IoSlice::new(message)];
    let cmsgs = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsgs };
    on_signal_again(|| sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None))?;
    Ok(())
}

/// Runs a socket call again when a signal interrupted it. The holder
/// gets SIGCHLD whenever its service stops or continues — a node's pause
/// can complete after the node resumed the holder, in the middle of a
/// request — and a call with a timeout is never restarted by the kernel;
/// failing there closed the request's connection ("Broken pipe" at the
/// node, its migration refused).
fn on_signal_again<T>(mut call: impl FnMut() -> nix::Result<T>) -> nix::Result<T> {
    loop {
        match call() {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other,
        }
    }
}

/// One message and the descriptors that came with it (close-on-exec).
fn receive(sock: BorrowedFd<'_>) -> io::Result<(u8, Vec<ConnId>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; 5 + BATCH * 8 + 8];
    let mut cmsg = cmsg_space!([RawFd; BATCH]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = loop {
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            // As `on_signal_again` (its closure could not lend `iov` out).
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other?,
        }
    };
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these descriptors for us.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let truncated = msg
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
    let len = msg.bytes;
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the holder closed the connection",
        ));
    }
    if truncated {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "holder message truncated",
        ));
    }
    let (op, ids) = decode(&buf[..len])?;
    Ok((op, ids, fds))
}

fn seqpacket() -> io::Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

fn with_timeouts(fd: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let tv = TimeVal::new(timeout.as_secs() as i64, timeout.subsec_micros() as i64);
    setsockopt(fd, sockopt::ReceiveTimeout, &tv)?;
    setsockopt(fd, sockopt::SendTimeout, &tv)?;
    Ok(())
}

fn dial(service: &str) -> io::Result<OwnedFd> {
    let fd = seqpacket()?;
    with_timeouts(&fd, REQUEST_TIMEOUT)?;
    connect(fd.as_raw_fd(), &address(service)?).map_err(|e| {
        io::Error::new(
            io::ErrorKind::NotConnected,
            format!(
                "no socket holder for {service} (is the service started under {{holder}}?): {e}"
            ),
        )
    })?;
    Ok(fd)
}

fn expect_ok(fd: &OwnedFd) -> io::Result<usize> {
    match receive(fd.as_fd())? {
        (OP_OK, ids, _) => Ok(ids.first().copied().unwrap_or(0) as usize),
        (op, _, _) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected holder answer {op:#x}"),
        )),
    }
}

/// Hands the holder of `service` a copy of each connection's socket (it
/// keeps them until [`release`] or [`take`]); returns how many it holds.
pub fn hold(service: &str, conns: &[(ConnId, BorrowedFd<'_>)]) -> io::Result<usize> {
    let mut held = 0;
    for batch in conns.chunks(BATCH) {
        let fd = dial(service)?;
        let ids: Vec<_> = batch.iter().map(|(id, _)| *id).collect();
        let raw: Vec<_> = batch.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        send(fd.as_fd(), &encode(OP_HOLD, &ids), &raw)?;
        held = expect_ok(&fd)?;
    }
    Ok(held)
}

/// Lets the holder of `service` close every copy it holds.
pub fn release(service: &str) -> io::Result<()> {
    let fd = dial(service)?;
    send(fd.as_fd(), &encode(OP_RELEASE, &[]), &[])?;
    expect_ok(&fd).map(|_| ())
}

/// Takes every socket the holder of `service` holds (after a restore:
/// the restored proxy ends), by connection; the holder keeps no copy.
pub fn take(service: &str) -> io::Result<BTreeMap<ConnId, OwnedFd>> {
    let fd = dial(service)?;
    send(fd.as_fd(), &encode(OP_TAKE, &[]), &[])?;
    let total = expect_ok(&fd)?;
    let mut out = BTreeMap::new();
    while out.len() < total {
        let (op, ids, fds) = receive(fd.as_fd())?;
        if op != OP_FDS || ids.len() != fds.len() || ids.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "holder sent {} ids with {} sockets (op {op:#x})",
                    ids.len(),
                    fds.len()
                ),
            ));
        }
        out.extend(ids.into_iter().zip(fds));
    }
    Ok(out)
}

/// The signal the holder was asked to stop with (0: none yet).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop(sig: i32) {
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
}

extern "C" fn on_child(_: i32) {}

/// Runs the holder for `service`: starts `command` (its child; the init
/// of a PID namespace also reaps orphans), serves requests, passes
/// SIGTERM/SIGINT/SIGHUP on to the service, and exits with the service's
/// exit code when it exits. Single-threaded and blocking, so CRIU dumps
/// it as it is.
pub fn serve(service: &str, command: &[String]) -> io::Result<i32> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "holder: no service command"))?;
    // CRIU dumps a tree only if its session leader is inside it: as the
    // init of a fresh PID namespace the holder leads its own session (not
    // possible, and not needed, when it already leads a group).
    let _ = nix::unistd::setsid();
    let listener = listen_as(service)?;
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { signal::signal(sig, SigHandler::Handler(on_stop)) }?;
    }
    // SAFETY: an empty handler, so SIGCHLD interrupts poll.
    unsafe { signal::signal(Signal::SIGCHLD, SigHandler::Handler(on_child)) }?;
    let child = std::process::Command::new(program).args(args).spawn()?;
    let child = Pid::from_raw(child.id() as i32);
    let mut held: Vec<(ConnId, OwnedFd)> = Vec::new();
    let mut forwarded = false;
    let mut watchdog = PauseWatchdog::default();
    loop {
        let sig = STOP_SIGNAL.load(Ordering::SeqCst);
        if sig != 0 && !forwarded {
            forwarded = true;
            if let Ok(sig) = Signal::try_from(sig) {
                let _ = signal::kill(child, sig);
            }
        }
        watchdog.check(child);
        while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            match status {
                WaitStatus::Exited(pid, code) if pid == child => return Ok(code),
                WaitStatus::Signaled(pid, sig, _) if pid == child => return Ok(128 + sig as i32),
                WaitStatus::StillAlive => break,
                _ => {}
            }
        }
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(n) if n > 0 => {}
            _ => continue,
        }
        if let Err(e) = accept_one(&listener, &mut held) {
            eprintln!("replaymig holder {service}: request failed: {e}");
        }
    }
}

/// The holder's listening socket.
fn listen_as(service: &str) -> io::Result<OwnedFd> {
    let listener = seqpacket()?;
    bind(listener.as_raw_fd(), &address(service)?)?;
    listen(&listener, Backlog::new(64).map_err(io::Error::from)?)?;
    Ok(listener)
}

/// Accepts one request and answers it; the connection is closed after.
fn accept_one(listener: &OwnedFd, held: &mut Vec<(ConnId, OwnedFd)>) -> io::Result<()> {
    let conn = on_signal_again(|| accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC))?;
    // SAFETY: accept4 just returned this descriptor.
    let conn = unsafe { OwnedFd::from_raw_fd(conn) };
    with_timeouts(&conn, REQUEST_TIMEOUT)?;
    answer(&conn, held)
}

/// A node pauses the service (SIGSTOP to the holder's process group) for
/// the length of a bounded hold; if it dies meanwhile nobody resumes it
/// and every client hangs. So the holder resumes a service it has seen
/// stopped for this long — far beyond any hold, where the worst a resume
/// can do is fail the migration that paused it (its answer check sees
/// the service answer after the point, and refuses).
pub const PAUSE_WATCHDOG: Duration = Duration::from_secs(10);

/// Tracks how long the service has been stopped.
#[derive(Default)]
struct PauseWatchdog {
    stopped_since: Option<std::time::Instant>,
}

impl PauseWatchdog {
    /// Looks at the service's state; resumes its process group after
    /// [`PAUSE_WATCHDOG`] stopped.
    fn check(&mut self, child: Pid) {
        if !is_stopped(child) {
            self.stopped_since = None;
            return;
        }
        let since = *self
            .stopped_since
            .get_or_insert_with(std::time::Instant::now);
        if since.elapsed() >= PAUSE_WATCHDOG {
            eprintln!(
                "replaymig holder: the service was stopped for {PAUSE_WATCHDOG:?} with nobody \
                 resuming it (its node died during a hold?); resuming it"
            );
            let _ = signal::killpg(nix::unistd::getpgrp(), Signal::SIGCONT);
            self.stopped_since = None;
        }
    }
}

/// Whether `pid` is stopped by a signal (state `T` in /proc).
fn is_stopped(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| rest.starts_with('T'))
        })
        .unwrap_or(false)
}

/// Serves one request on `conn`.
fn answer(conn: &OwnedFd, held: &mut Vec<(ConnId, OwnedFd)>) -> io::Result<()> {
    let (op, ids, fds) = receive(conn.as_fd())?;
    match op {
        OP_HOLD if ids.len() == fds.len() => {
            held.extend(ids.into_iter().zip(fds));
            send(conn.as_fd(), &encode(OP_OK, &[held.len() as u64]), &[])
        }
        OP_RELEASE => {
            held.clear();
            send(conn.as_fd(), &encode(OP_OK, &[0]), &[])
        }
        OP_TAKE => {
            let all = std::mem::take(held);
            send(conn.as_fd(), &encode(OP_OK, &[all.len() as u64]), &[])?;
            for batch in all.chunks(BATCH) {
                let ids: Vec<_> = batch.iter().map(|(id, _)| *id).collect();
                let raw: Vec<_> = batch.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
                send(conn.as_fd(), &encode(OP_FDS, &ids), &raw)?;
            }
            Ok(())
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "unknown request {op:#x} with {} ids, {} sockets",
                ids.len(),
                fds.len()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let m = encode(OP_HOLD, &[1, u64::MAX, 7]);
        assert_eq!(decode(&m).unwrap(), (OP_HOLD, vec![1, u64::MAX, 7]));
        assert!(decode(&m[..m.len() - 1]).is_err());
        assert!(decode(&[]).is_err());
        let mut lying = encode(OP_HOLD, &[1]);
        lying[1] = 2;
        assert!(decode(&lying).is_err());
    }

    /// Sockets handed to a holder come back by connection id and still
    /// carry their bytes; a take leaves nothing behind. (The process part
    /// of the holder is exercised with CRIU in `tests/criu_carry.rs`.)
    #[test]
    fn a_holder_keeps_sockets_and_hands_them_back_by_connection() {
        let service = format!("unit-{}", std::process::id());
        let listener = listen_as(&service).unwrap();
        let holder = std::thread::spawn(move || {
            let mut held = Vec::new();
            for _ in 0..4 {
                accept_one(&listener, &mut held).unwrap();
            }
            held.len()
        });
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut pairs = Vec::new();
        for _ in 0..3 {
            let a = TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
            let (b, _) = tcp.accept().unwrap();
            pairs.push((a, b));
        }
        let conns: Vec<_> = pairs
            .iter()
            .enumerate()
            .map(|(i, (a, _))| (10 + i as u64, a.as_fd()))
            .collect();
        assert_eq!(hold(&service, &conns).unwrap(), 3);
        // Our copies go; the held ones keep the connections open.
        let peers: Vec<TcpStream> = pairs.into_iter().map(|(_, b)| b).collect();
        for (i, mut peer) in peers.iter().enumerate() {
            peer.write_all(format!("to {}", 10 + i).as_bytes()).unwrap();
        }
        let taken = take(&service).unwrap();
        assert_eq!(taken.keys().copied().collect::<Vec<_>>(), vec![10, 11, 12]);
        for (id, fd) in taken {
            let mut s = TcpStream::from(fd);
            let mut buf = vec![0u8; 5];
            s.read_exact(&mut buf).unwrap();
            assert_eq!(buf, format!("to {id}").as_bytes());
        }
        assert!(take(&service).unwrap().is_empty(), "taken twice");
        release(&service).unwrap();
        assert_eq!(holder.join().unwrap(), 0);
    }

    #[test]
    fn a_malformed_request_fails_alone_and_the_holder_serves_on() {
        let service = format!("unit-bad-{}", std::process::id());
        let listener = listen_as(&service).unwrap();
        let holder = std::thread::spawn(move || {
            let mut held = Vec::new();
            let first = accept_one(&listener, &mut held);
            let second = accept_one(&listener, &mut held);
            (first.is_err(), second.is_ok())
        });
        let fd = dial(&service).unwrap();
        send(fd.as_fd(), b"H\xff\xff", &[]).unwrap();
        // The holder answers nothing to garbage and closes the connection.
        assert!(receive(fd.as_fd()).is_err());
        release(&service).unwrap();
        assert_eq!(holder.join().unwrap(), (true, true));
    }

    /// The holder gets SIGCHLD whenever the service stops — also when a
    /// node's pause completes after it already resumed the holder, in the
    /// middle of a request. A signal is no failure: the request goes on
    /// (it used to fail with EINTR and close the connection, and the node
    /// saw "Broken pipe": fidelity suite n, 1 of 10 runs).
    #[test]
    fn a_signal_during_a_request_does_not_fail_it() {
        // SAFETY: an empty handler, as the holder's own, without SA_RESTART
        // (a socket call with a timeout is never restarted anyway).
        unsafe {
            signal::sigaction(
                Signal::SIGCHLD,
                &signal::SigAction::new(
                    SigHandler::Handler(on_child),
                    signal::SaFlags::empty(),
                    signal::SigSet::empty(),
                ),
            )
        }
        .unwrap();
        let service = format!("unit-sig-{}", std::process::id());
        let listener = listen_as(&service).unwrap();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            tid_tx.send(nix::sys::pthread::pthread_self()).unwrap();
            let mut held = Vec::new();
            accept_one(&listener, &mut held).map(|_| held.len())
        });
        let holder_thread = tid_rx.recv().unwrap();
        let fd = dial(&service).unwrap();
        // The holder has accepted and waits for the request: interrupt it.
        std::thread::sleep(Duration::from_millis(50));
        for _ in 0..3 {
            nix::sys::pthread::pthread_kill(holder_thread, Signal::SIGCHLD).unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        send(fd.as_fd(), &encode(OP_RELEASE, &[]), &[]).unwrap();
        assert_eq!(expect_ok(&fd).unwrap(), 0);
        assert_eq!(holder.join().unwrap().unwrap(), 0);
    }

    #[test]
    fn a_stopped_process_is_seen_stopped() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        assert!(!is_stopped(pid));
        signal::kill(pid, Signal::SIGSTOP).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !is_stopped(pid) {
            assert!(std::time::Instant::now() < deadline, "never seen stopped");
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut watchdog = PauseWatchdog::default();
        watchdog.check(pid);
        assert!(watchdog.stopped_since.is_some(), "the stop is timed");
        signal::kill(pid, Signal::SIGCONT).unwrap();
        while is_stopped(pid) {
            assert!(std::time::Instant::now() < deadline, "never resumed");
            std::thread::sleep(Duration::from_millis(5));
        }
        watchdog.check(pid);
        assert!(
            watchdog.stopped_since.is_none(),
            "a resumed service resets it"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_message_beyond_the_batch_is_refused_whole() {
        let service = format!("unit-big-{}", std::process::id());
        let listener = listen_as(&service).unwrap();
        let holder = std::thread::spawn(move || {
            let mut held = Vec::new();
            let result = accept_one(&listener, &mut held);
            (result.is_err(), held.len())
        });
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let ids: Vec<ConnId> = (0..BATCH as u64 + 10).collect();
        let raw: Vec<RawFd> = ids.iter().map(|_| tcp.as_raw_fd()).collect();
        let fd = dial(&service).unwrap();
        send(fd.as_fd(), &encode(OP_HOLD, &ids), &raw).unwrap();
        assert_eq!(holder.join().unwrap(), (true, 0), "refused, nothing held");
    }

    #[test]
    fn no_holder_is_a_clear_error() {
        let e = release("nobody-holds-this").unwrap_err();
        assert!(e.to_string().contains("no socket holder"), "{e}");
    }
}
