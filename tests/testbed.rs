//! The two-node testbed (tools/testbed.sh): namespaces joined by a veth
//! pair, shaped with htb; the shaped link holds its rate; `down` leaves
//! nothing behind. Needs root (CI runs as root); skips with a reason
//! otherwise.

use replaymig_testkit::Testbed;
use std::process::{Command, Stdio};
use std::time::Duration;

fn script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tools/testbed.sh")
}

fn run_script(name: &str, args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(script())
        .args(["--name", name])
        .args(args)
        .output()
        .expect("run testbed.sh")
}

fn namespaces() -> String {
    String::from_utf8(
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
}

#[test]
fn a_shaped_testbed_holds_its_rate_and_tears_down_cleanly() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP testbed: needs root for network namespaces");
        return;
    }
    let name = format!("rmt{}", std::process::id() % 100_000);
    // Twice in a row: the second cycle finds nothing left by the first.
    for cycle in 1..=2 {
        let _first = Testbed::up(&name, Some(20)).unwrap();
        let tb = Testbed::up(&name, Some(20)).expect("up is idempotent");
        let mbit = bulk_transfer_mbit(&tb);
        // tc shapes L2 frames: TCP payload is ~95.6% of the rate; within
        // 10% of the setting either way.
        assert!(
            (18.0..=22.0).contains(&mbit),
            "cycle {cycle}: shaped to 20 Mbit/s, measured {mbit:.1}"
        );
        drop(tb);
        assert!(
            !namespaces().contains(&name),
            "cycle {cycle}: down leaves no namespace"
        );
        assert!(
            run_script(&name, &["down"]).status.success(),
            "down is idempotent"
        );
    }
}

/// Payload rate of a 2.5 MB transfer from A to B (about 1 s at 20 Mbit/s).
fn bulk_transfer_mbit(tb: &Testbed) -> f64 {
    let addr_b = tb.addr('b').to_string();
    let sink = Command::new("bash")
        .arg(script())
        .args(["--name", &tb.name, "exec", "b", "python3", "-c"])
        .arg(format!(
            "import socket,time\n\
             s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('{addr_b}', 5001)); s.listen(1); s.settimeout(20)\n\
             c,_=s.accept(); c.settimeout(20); n=0; t=None\n\
             while True:\n\
             \x20   d=c.recv(65536)\n\
             \x20   if not d: break\n\
             \x20   t=t or time.time(); n+=len(d)\n\
             print(n*8/(time.time()-t)/1e6)\n"
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let send = run_script(
        &tb.name,
        &[
        "exec",
        "a",
        "python3",
        "-c",
        &format!("import socket\ns=socket.create_connection(('{addr_b}',5001),timeout=20)\ns.sendall(b'x'*2_500_000)\ns.close()"),
    ]);
    assert!(
        send.status.success(),
        "{}",
        String::from_utf8_lossy(&send.stderr)
    );
    let out = sink.wait_with_output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
