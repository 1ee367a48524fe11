//! `seqsvc`: a small line protocol service the fidelity tests migrate
//! (`replaymig-seqsvc` is its binary). It exercises what Redis INCR does
//! not: the server speaks first, one global sequence shared by every
//! connection, an answer written in two parts, a non-deterministic answer
//! and an application-level dump.
//!
//! Protocol (every line ends with `\n`; a trailing `\r` is ignored):
//! * on connect the server sends [`GREETING`] (`HELLO seqsvc`);
//! * `NEXT` adds one to the counter and answers `SEQ <n>`, written in two
//!   parts: `SEQ ` at once, `<n>\n` about 3 ms later (the connection's
//!   later answers wait for it; other connections are served meanwhile);
//! * `ADD <k>` adds k and answers `OK <new>` in one write;
//! * `GET` answers `VAL <n>`;
//! * `STATS` answers `STATS <n> <unix-nanos>` (non-deterministic on purpose);
//! * `SAVE <path>` writes the counter to `<path>` atomically (a temporary
//!   file, then rename) and answers `SAVED`;
//! * anything else answers `ERR <why>`.
//!
//! Single-threaded: every complete line is applied to the state as soon as
//! it is read, so the service executes input in the order it reads it; the
//! answers are queued per connection and written by that connection's
//! writer task (which is where the 3 ms pause of `NEXT` happens).
//!
//! Usage: `replaymig-seqsvc --listen 127.0.0.1:PORT [--state FILE]
//! [--exit-with-parent]` serves (loading the counter from FILE if it
//! exists); `replaymig-seqsvc save --port P --to FILE` is the snapshot
//! client (greeting, `SAVE FILE`, `SAVED`).

use anyhow::{bail, ensure, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// What the server sends first on every connection.
pub const GREETING: &str = "HELLO seqsvc\n";

/// How long `NEXT`'s second part waits after its first.
pub const SPLIT_DELAY: Duration = Duration::from_millis(3);

/// The longest request line the server accepts (then it answers `ERR` and
/// closes the connection).
const MAX_LINE: usize = 4096;

/// One request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `NEXT`
    Next,
    /// `ADD <k>`
    Add(u64),
    /// `GET`
    Get,
    /// `STATS`
    Stats,
    /// `SAVE <path>`
    Save(PathBuf),
}

/// Parses one request line (without its `\n`; a trailing `\r` is ignored).
pub fn parse_request(line: &str) -> Result<Request, String> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let (verb, arg) = match line.split_once(' ') {
        Some((verb, arg)) => (verb, Some(arg)),
        None => (line, None),
    };
    match (verb, arg) {
        ("NEXT", None) => Ok(Request::Next),
        ("GET", None) => Ok(Request::Get),
        ("STATS", None) => Ok(Request::Stats),
        ("ADD", Some(k)) => k
            .parse()
            .map(Request::Add)
            .map_err(|_| format!("ADD wants a non-negative integer, not {k:?}")),
        ("SAVE", Some(path)) if !path.is_empty() => Ok(Request::Save(PathBuf::from(path))),
        ("NEXT" | "GET" | "STATS", Some(_)) => Err(format!("{verb} takes no argument")),
        ("ADD" | "SAVE", None) | ("SAVE", Some(_)) => Err(format!("{verb} needs an argument")),
        _ => Err(format!("unknown command {verb:?}")),
    }
}

/// One answer line, as clients (the tests' oracles) parse it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `SEQ <n>`: the counter after a `NEXT`.
    Seq(u64),
    /// `OK <n>`: the counter after an `ADD`.
    Ok(u64),
    /// `VAL <n>`: the counter (`GET`).
    Val(u64),
    /// `STATS <n> <unix-nanos>`.
    Stats(u64, u128),
    /// `SAVED`
    Saved,
    /// `ERR <why>`
    Err(String),
}

impl Answer {
    /// The line, with its `\n`.
    pub fn encode(&self) -> String {
        match self {
            Answer::Seq(n) => format!("SEQ {n}\n"),
            Answer::Ok(n) => format!("OK {n}\n"),
            Answer::Val(n) => format!("VAL {n}\n"),
            Answer::Stats(n, t) => format!("STATS {n} {t}\n"),
            Answer::Saved => "SAVED\n".to_string(),
            Answer::Err(why) => format!("ERR {why}\n"),
        }
    }

    /// Parses one answer line (with or without its `\n`); strict: exactly
    /// the server's format, nothing around it.
    pub fn parse(line: &str) -> Result<Answer, String> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let number = |s: &str| -> Result<u64, String> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("not a number: {s:?} in {line:?}"));
            }
            s.parse()
                .map_err(|_| format!("not a number: {s:?} in {line:?}"))
        };
        let mut words = line.splitn(2, ' ');
        let verb = words.next().unwrap_or_default();
        let rest = words.next();
        match (verb, rest) {
            ("SEQ", Some(n)) => Ok(Answer::Seq(number(n)?)),
            ("OK", Some(n)) => Ok(Answer::Ok(number(n)?)),
            ("VAL", Some(n)) => Ok(Answer::Val(number(n)?)),
            ("STATS", Some(rest)) => {
                let (n, t) = rest
                    .split_once(' ')
                    .ok_or_else(|| format!("STATS wants two numbers: {line:?}"))?;
                Ok(Answer::Stats(number(n)?, u128::from(number(t)?)))
            }
            ("SAVED", None) => Ok(Answer::Saved),
            ("ERR", Some(why)) => Ok(Answer::Err(why.to_string())),
            _ => Err(format!("not an answer: {line:?}")),
        }
    }
}

/// How an answer goes out on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// In one write.
    Whole(String),
    /// `first`, then after [`SPLIT_DELAY`] `second`.
    Split(String, String),
}

/// The service's state: one counter.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct State {
    /// The global counter every connection shares.
    pub counter: u64,
}

impl State {
    /// The state saved in `path`, or a fresh one if there is no such file.
    pub fn load(path: &Path) -> Result<State> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let counter = text
                    .trim()
                    .parse()
                    .with_context(|| format!("{} holds no counter: {text:?}", path.display()))?;
                Ok(State { counter })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes the counter to `path` atomically: a temporary file beside
    /// it, synced, then renamed over it.
    pub fn save(&self, path: &Path) -> Result<()> {
        let name = path
            .file_name()
            .with_context(|| format!("{} names no file", path.display()))?;
        let mut tmp_name = name.to_os_string();
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        let mut file = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        file.write_all(format!("{}\n", self.counter).as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        Ok(())
    }

    /// Executes one request line now; `now_nanos` is what `STATS` reports.
    pub fn execute(&mut self, line: &str, now_nanos: u128) -> Output {
        let answer = match parse_request(line) {
            Ok(Request::Next) => {
                self.counter += 1;
                return Output::Split("SEQ ".into(), format!("{}\n", self.counter));
            }
            Ok(Request::Add(k)) => match self.counter.checked_add(k) {
                Some(n) => {
                    self.counter = n;
                    Answer::Ok(n)
                }
                None => Answer::Err("overflow".into()),
            },
            Ok(Request::Get) => Answer::Val(self.counter),
            Ok(Request::Stats) => Answer::Stats(self.counter, now_nanos),
            Ok(Request::Save(path)) => match self.save(&path) {
                Ok(()) => Answer::Saved,
                Err(e) => Answer::Err(format!("{e:#}").replace('\n', " ")),
            },
            Err(why) => Answer::Err(why),
        };
        Output::Whole(answer.encode())
    }
}

fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Serve on `listen`, the counter loaded from / named by `state`.
    Serve {
        /// Where to listen.
        listen: SocketAddr,
        /// The state file to load at start (if it exists).
        state: Option<PathBuf>,
        /// Exit when the parent process goes away (a test's node agent
        /// killed by its guard must not leave the service behind).
        exit_with_parent: bool,
    },
    /// Ask the server on 127.0.0.1:`port` to save its state to `to`.
    Save {
        /// The server's port on loopback.
        port: u16,
        /// Where the server writes the state.
        to: PathBuf,
    },
}

/// Parses the command line (without the program name).
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Mode> {
    let mut args = args.into_iter().peekable();
    let save = args.peek().map(String::as_str) == Some("save");
    if save {
        args.next();
    }
    let (mut listen, mut state, mut exit_with_parent, mut port, mut to) =
        (None, None, false, None, None);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" if !save => {
                listen = Some(value()?.parse().context("--listen wants HOST:PORT")?)
            }
            "--state" if !save => state = Some(PathBuf::from(value()?)),
            "--exit-with-parent" if !save => exit_with_parent = true,
            "--port" if save => port = Some(value()?.parse().context("--port wants a port")?),
            "--to" if save => to = Some(PathBuf::from(value()?)),
            other => bail!("unexpected argument {other:?}"),
        }
    }
    if save {
        let port = port.context("save needs --port")?;
        let to = to.context("save needs --to")?;
        ensure!(
            !to.to_string_lossy().contains('\n'),
            "--to must not contain a newline"
        );
        Ok(Mode::Save { port, to })
    } else {
        Ok(Mode::Serve {
            listen: listen.context("--listen HOST:PORT is required")?,
            state,
            exit_with_parent,
        })
    }
}

/// The binary's whole behaviour: parse, then serve or save.
pub fn main_with_args<I: IntoIterator<Item = String>>(args: I) -> Result<()> {
    match parse_args(args)? {
        Mode::Serve {
            listen,
            state,
            exit_with_parent,
        } => {
            let initial = match &state {
                Some(path) => State::load(path)?,
                None => State::default(),
            };
            if exit_with_parent {
                watch_parent();
            }
            exit_on_sigterm()?;
            let listener = std::net::TcpListener::bind(listen)
                .with_context(|| format!("cannot listen on {listen}"))?;
            serve(listener, initial)
        }
        Mode::Save { port, to } => save_client(port, &to),
    }
}

/// Exits the process on SIGTERM, as a service is expected to: as the init
/// of a PID namespace (the criu suites run it so) it would otherwise
/// ignore the signal, having no handler.
fn exit_on_sigterm() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut term = runtime.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    })?;
    std::thread::spawn(move || {
        runtime.block_on(term.recv());
        std::process::exit(0);
    });
    Ok(())
}

/// Exits the process as soon as its parent is gone (re-parented).
fn watch_parent() {
    let parent = std::os::unix::process::parent_id();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(100));
        if std::os::unix::process::parent_id() != parent {
            std::process::exit(0);
        }
    });
}

/// Serves on `listener` forever, on one thread.
pub fn serve(listener: std::net::TcpListener, initial: State) -> Result<()> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let state = Arc::new(Mutex::new(initial));
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Transient (e.g. out of descriptors): back off, go on.
                    eprintln!("seqsvc: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            tokio::spawn(connection(stream, state.clone()));
        }
    })
}

/// One client connection: the reader applies each complete line at once
/// and queues its answer; the writer writes the queue in order.
async fn connection(stream: tokio::net::TcpStream, state: Arc<Mutex<State>>) {
    let _ = stream.set_nodelay(true);
    let (mut read, write) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Output>(1024);
    let writer = tokio::spawn(writer(write, rx));
    if tx.send(Output::Whole(GREETING.into())).await.is_err() {
        return;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    'read: loop {
        let n = match read.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]).into_owned();
            let output = state
                .lock()
                .expect("one thread")
                .execute(&line, unix_nanos());
            if tx.send(output).await.is_err() {
                break 'read;
            }
        }
        if buf.len() > MAX_LINE {
            let _ = tx
                .send(Output::Whole(Answer::Err("line too long".into()).encode()))
                .await;
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

async fn writer(mut write: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::Receiver<Output>) {
    while let Some(output) = rx.recv().await {
        let written = match output {
            Output::Whole(text) => write.write_all(text.as_bytes()).await,
            Output::Split(first, second) => {
                match write.write_all(first.as_bytes()).await {
                    Ok(()) => {}
                    Err(_) => return,
                }
                tokio::time::sleep(SPLIT_DELAY).await;
                write.write_all(second.as_bytes()).await
            }
        };
        if written.is_err() {
            return;
        }
    }
    let _ = write.shutdown().await;
}

/// The snapshot client: asks the server on 127.0.0.1:`port` to save its
/// counter to `to` and waits for `SAVED`.
pub fn save_client(port: u16, to: &Path) -> Result<()> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot connect to seqsvc on {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    ensure!(line == GREETING, "expected the greeting, got {line:?}");
    (&stream).write_all(format!("SAVE {}\n", to.display()).as_bytes())?;
    line.clear();
    reader.read_line(&mut line)?;
    match Answer::parse(&line) {
        Ok(Answer::Saved) => Ok(()),
        _ => bail!("SAVE {} answered {line:?}", to.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn requests_parse_strictly() {
        assert_eq!(parse_request("NEXT"), Ok(Request::Next));
        assert_eq!(parse_request("NEXT\r"), Ok(Request::Next));
        assert_eq!(parse_request("ADD 42"), Ok(Request::Add(42)));
        assert_eq!(parse_request("GET"), Ok(Request::Get));
        assert_eq!(parse_request("STATS"), Ok(Request::Stats));
        assert_eq!(
            parse_request("SAVE /tmp/a b"),
            Ok(Request::Save("/tmp/a b".into()))
        );
        for bad in [
            "", "next", "NEXT 1", "ADD", "ADD -1", "ADD x", "SAVE", "SAVE ", "GET x",
        ] {
            assert!(parse_request(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn answers_round_trip_and_parse_strictly() {
        for a in [
            Answer::Seq(1),
            Answer::Ok(17),
            Answer::Val(0),
            Answer::Stats(3, 1_700_000_000_000_000_000),
            Answer::Saved,
            Answer::Err("unknown command".into()),
        ] {
            assert_eq!(Answer::parse(&a.encode()), Ok(a.clone()));
        }
        for bad in [
            "SEQ",
            "SEQ ",
            "SEQ 1 2",
            "SEQ x",
            "SEQ -1",
            "OK",
            "VAL 1x",
            "STATS 1",
            "SAVED 1",
            "HELLO seqsvc",
            "SEQ SEQ 1",
        ] {
            assert!(Answer::parse(bad).is_err(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn execution_changes_the_counter_in_order() {
        let mut s = State::default();
        assert_eq!(
            s.execute("NEXT", 0),
            Output::Split("SEQ ".into(), "1\n".into())
        );
        assert_eq!(s.execute("ADD 5", 0), Output::Whole("OK 6\n".into()));
        assert_eq!(s.execute("GET", 0), Output::Whole("VAL 6\n".into()));
        assert_eq!(s.execute("STATS", 99), Output::Whole("STATS 6 99\n".into()));
        assert!(matches!(s.execute("BOGUS", 0), Output::Whole(t) if t.starts_with("ERR ")));
        assert_eq!(s.counter, 6, "errors change nothing");
        s.counter = u64::MAX;
        assert!(matches!(s.execute("ADD 1", 0), Output::Whole(t) if t.starts_with("ERR ")));
        assert_eq!(s.counter, u64::MAX);
    }

    #[test]
    fn save_is_atomic_and_load_reads_it_back() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("state");
        assert_eq!(State::load(&path).unwrap(), State::default(), "no file");
        let mut s = State { counter: 41 };
        let line = format!("SAVE {}", path.display());
        assert_eq!(s.execute(&line, 0), Output::Whole("SAVED\n".into()));
        assert_eq!(State::load(&path).unwrap().counter, 41);
        s.counter = 42;
        s.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap().counter, 42);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("state")],
            "no tmp left"
        );
        let bad = format!("SAVE {}", dir.path().join("no/such/dir/state").display());
        assert!(matches!(s.execute(&bad, 0), Output::Whole(t) if t.starts_with("ERR ")));
        std::fs::write(&path, "garbage").unwrap();
        assert!(State::load(&path).is_err());
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            parse_args(args(
                "--listen 127.0.0.1:7000 --state /x/s --exit-with-parent"
            ))
            .unwrap(),
            Mode::Serve {
                listen: "127.0.0.1:7000".parse().unwrap(),
                state: Some("/x/s".into()),
                exit_with_parent: true,
            }
        );
        assert_eq!(
            parse_args(args("save --port 7000 --to /x/s")).unwrap(),
            Mode::Save {
                port: 7000,
                to: "/x/s".into()
            }
        );
        for bad in [
            "",
            "--state /x",
            "--listen nowhere",
            "--listen",
            "save --port 1",
            "save --to /x",
            "save --listen 127.0.0.1:1 --port 1 --to /x",
            "--listen 127.0.0.1:1 --port 1",
        ] {
            assert!(parse_args(args(bad)).is_err(), "{bad:?} must be refused");
        }
    }

    /// The real server on a thread: greeting, split answer, order, save.
    #[test]
    fn serves_the_protocol_over_tcp() {
        let dir = tempfile::TempDir::new().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || serve(listener, State { counter: 10 }));
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        let mut next_line = |reader: &mut BufReader<TcpStream>| {
            line.clear();
            reader.read_line(&mut line).unwrap();
            line.clone()
        };
        assert_eq!(next_line(&mut reader), GREETING);
        // Pipelined: answers in order, the split one whole on the line.
        (&stream)
            .write_all(b"NEXT\nADD 3\nGET\nNEXT\r\nBOGUS\n")
            .unwrap();
        assert_eq!(next_line(&mut reader), "SEQ 11\n");
        assert_eq!(next_line(&mut reader), "OK 14\n");
        assert_eq!(next_line(&mut reader), "VAL 14\n");
        assert_eq!(next_line(&mut reader), "SEQ 15\n");
        assert!(next_line(&mut reader).starts_with("ERR "));
        // A second connection shares the counter.
        let path = dir.path().join("state");
        save_client(port, &path).unwrap();
        assert_eq!(State::load(&path).unwrap().counter, 15);
        (&stream).write_all(b"STATS\n").unwrap();
        match Answer::parse(&next_line(&mut reader)) {
            Ok(Answer::Stats(15, t)) => assert!(t > 0),
            other => panic!("{other:?}"),
        }
    }
}
