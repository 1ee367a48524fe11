//! The TCP server: plain blocking sockets, one thread per connection, one
//! mutex around the state. Nothing a checkpointer (CRIU) finds unusual:
//! a listening socket, established sockets and threads blocked in
//! `accept`/`read`.

use crate::protocol::{read_request, MAX_FRAME};
use crate::state::ServiceState;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A bound server, ready to [`serve`](Server::serve).
pub struct Server {
    listener: TcpListener,
    state: Arc<Mutex<ServiceState>>,
}

impl Server {
    /// Binds `addr`; bind the state only once it is built, so a client that
    /// can connect gets answers at full speed.
    pub fn bind(addr: impl ToSocketAddrs, state: ServiceState) -> io::Result<Server> {
        Ok(Server {
            listener: TcpListener::bind(addr)?,
            state: Arc::new(Mutex::new(state)),
        })
    }

    /// The bound address (to learn the port after binding port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts forever; a failing accept or thread spawn costs that
    /// connection only.
    pub fn serve(self) -> ! {
        loop {
            let (stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let state = Arc::clone(&self.state);
            let spawned = std::thread::Builder::new()
                .name(format!("conn-{peer}"))
                .spawn(move || serve_connection(stream, peer, &state));
            if let Err(e) = spawned {
                tracing::warn!(%peer, "cannot start a connection thread, closing: {e}");
            }
        }
    }
}

/// Answers requests on one connection until the peer closes or misbehaves.
fn serve_connection(mut stream: TcpStream, peer: SocketAddr, state: &Mutex<ServiceState>) {
    let _ = stream.set_nodelay(true);
    tracing::debug!(%peer, "connection opened");
    loop {
        let payload = match read_request(&mut stream, MAX_FRAME) {
            Ok(Some(payload)) => payload,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(%peer, "closing connection: {e}");
                break;
            }
        };
        let answer = state
            .lock()
            .expect("a request panicked while holding the state")
            .process(&payload);
        if let Err(e) = stream.write_all(&answer.to_bytes()) {
            tracing::warn!(%peer, "closing connection: write failed: {e}");
            break;
        }
    }
    tracing::debug!(%peer, "connection closed");
}

/// Time one request's CPU part takes on this host, measured without
/// touching the state (logged at start: `cpu-us` is nominal).
pub fn measure_cpu(state: &ServiceState) -> Duration {
    let start = Instant::now();
    std::hint::black_box(state.model().infer(&[0x5a; 32], state.steps()));
    start.elapsed()
}
