//! `replaymig-seqsvc`: the line protocol test service of the fidelity tests
//! (see `replaymig_testkit::seqsvc` for the protocol). `--listen ADDR
//! [--state FILE] [--exit-with-parent]` serves; `save --port P --to FILE`
//! asks a running one to save its state (the exec driver's dump).

use std::process::ExitCode;

fn main() -> ExitCode {
    match replaymig_testkit::seqsvc::main_with_args(std::env::args().skip(1)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("replaymig-seqsvc: {e:#}");
            ExitCode::FAILURE
        }
    }
}
