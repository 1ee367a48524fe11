//! Termination on SIGTERM/SIGINT. Needed because the server may run as the
//! init of its own PID namespace (`unshare --pid --fork setsid ...`, the
//! CRIU setup), where signals without a handler are ignored, even when
//! they come from the node that started it.

use nix::libc;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// Exits at once with 128 + signal; only async-signal-safe calls.
extern "C" fn exit_now(signal: libc::c_int) {
    // SAFETY: `_exit` is async-signal-safe and never returns.
    unsafe { libc::_exit(128 + signal) }
}

/// Installs the handler for SIGTERM and SIGINT.
pub fn exit_on_termination() -> nix::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(exit_now),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only calls `_exit`.
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}
