//! What nodes say to each other. The handshake messages come first on
//! every link; the rest is only accepted after it succeeded.

use serde::{Deserialize, Serialize};

/// One peer-link message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Dialer → listener: who I am and a fresh challenge for you.
    Hello {
        /// The dialing node's name.
        node: String,
        /// Random challenge the listener must answer.
        nonce: [u8; 32],
    },
    /// Listener → dialer: who I am, proof that I know the secret, and a
    /// challenge for you.
    HelloProof {
        /// The listening node's name.
        node: String,
        /// Random challenge the dialer must answer.
        nonce: [u8; 32],
        /// HMAC over both challenges, bound to the listener's role.
        proof: Vec<u8>,
    },
    /// Dialer → listener: proof that I know the secret.
    Proof {
        /// HMAC over both challenges, bound to the dialer's role.
        proof: Vec<u8>,
    },
    /// Listener → dialer: authenticated.
    Welcome,
    /// Either way: the link is being refused or closed, and why.
    Goodbye {
        /// A sentence for the other side's log.
        reason: String,
    },
    /// A snapshot begins: its manifest (JSON, see `replaymig-snapshot`).
    SnapshotBegin {
        /// The manifest, serialized.
        manifest: Vec<u8>,
    },
    /// A piece of one snapshot file, in order.
    SnapshotChunk {
        /// Index of the file in the manifest.
        file: u32,
        /// Where the piece starts in the file.
        offset: u64,
        /// Whether `data` is zstd-compressed.
        compressed: bool,
        /// The bytes (compressed or not).
        data: Vec<u8>,
        /// CRC-32 of the uncompressed bytes.
        crc32: u32,
    },
    /// Every chunk was sent.
    SnapshotEnd,
    /// Journal records after the snapshot point, in LSN order, each in the
    /// journal's own checksummed encoding (verified on arrival).
    LogBatch {
        /// LSN of the first record.
        first_lsn: u64,
        /// How many records it holds (LSNs `first_lsn..first_lsn + count`).
        count: u32,
        /// The encoded records, each prefixed by its length (u32, big
        /// endian), zstd-compressed together: journal records of small
        /// requests compress several-fold, and the log competes with the
        /// snapshot for the link.
        packed: Vec<u8>,
    },
    /// The receiver has journaled everything up to `lsn`.
    LogApplied {
        /// Highest LSN done.
        lsn: u64,
    },
    /// Source → destination: I want to hand you `service` under `epoch`.
    MigrateBegin {
        /// The service.
        service: String,
        /// The ownership epoch the destination will hold after hand-over.
        epoch: u64,
        /// The source journals answer digests: the destination must check
        /// every replayed answer against them, strictly (see the
        /// replayer's `verify_answers`).
        verify_answers: bool,
    },
    /// Destination → source: ready to receive the snapshot and the log.
    MigrateReady,
    /// Either way: the migration is off; the source stays the owner.
    MigrateAbort {
        /// Why.
        reason: String,
    },
    /// Source → destination: everything is shipped and the source holds
    /// client input; take ownership. `delivered`: answer bytes each open
    /// connection's client has received.
    HandOver {
        /// The new epoch.
        epoch: u64,
        /// (connection id, answer bytes delivered) per open connection.
        delivered: Vec<(u64, u64)>,
    },
    /// Destination → source: replay is complete and the connections are
    /// parked; ready to own the service under `epoch` (not owning yet).
    HandOverDone {
        /// The epoch prepared.
        epoch: u64,
        /// How long restoring the snapshot took there, microseconds.
        restore_micros: u64,
        /// How long the replay ran there (restore to hand-over), microseconds.
        replay_micros: u64,
    },
    /// Source → destination: the source gave the service up; own it now.
    /// (A tunnel from the source after this point also means it.)
    HandOverCommit {
        /// The epoch committed.
        epoch: u64,
    },
    /// Open a tunnel for a client connection to the owner of `service`;
    /// after `TunnelReady` the link carries the connection's raw bytes.
    TunnelOpen {
        /// The service.
        service: String,
        /// The journaled connection being handed over, or a new client.
        conn: Option<u64>,
        /// Answer bytes the client has received on it.
        delivered: u64,
        /// The client's address, for the owner's journal.
        client: String,
        /// The ownership epoch the dialing node routes by: the owner
        /// refuses a tunnel from a newer epoch than its own (it is stale),
        /// and a prepared destination takes it as the source's commit.
        epoch: u64,
    },
    /// The owner accepted the tunnel; raw bytes follow.
    TunnelReady,
    /// Who owns `service`, as this node knows it (a prepared destination
    /// asks its source when the commit did not arrive).
    OwnerQuery {
        /// The service.
        service: String,
    },
    /// Answer to `OwnerQuery`.
    OwnerIs {
        /// The owner this node knows.
        owner: String,
        /// Its epoch.
        epoch: u64,
        /// A migration of the service is running on the answering node.
        migrating: bool,
    },
    /// Liveness probe.
    Ping(u64),
    /// Answer to a probe.
    Pong(u64),
    // New variants go last: bincode numbers them by position, so the
    // older ones keep their wire numbers.
    /// A piece of a file the dump was still writing, sent before the
    /// manifest exists: the file is known by a stream number until
    /// `SnapshotStreamsNamed` says which file it became.
    SnapshotStreamChunk {
        /// The sender's number for the file being written.
        stream: u32,
        /// Where the piece starts in the file.
        offset: u64,
        /// Whether `data` is zstd-compressed.
        compressed: bool,
        /// The bytes (compressed or not).
        data: Vec<u8>,
        /// CRC-32 of the uncompressed bytes.
        crc32: u32,
    },
    /// The dump finished: which streamed file is which snapshot file (the
    /// rest were temporary and are dropped). `SnapshotBegin` follows; its
    /// chunks fill in what the stream lacks or got wrong.
    SnapshotStreamsNamed {
        /// (stream number, file name relative to the snapshot directory).
        names: Vec<(u32, String)>,
    },
    /// Fleet mode: run this migration of a service the receiver owns
    /// (`replaymig migrate` was asked at another node). One per link; the
    /// answer is `MigrateResult`.
    MigrateRequest {
        /// The service.
        service: String,
        /// The destination node.
        to: String,
        /// The method, as the admin request's JSON gives it.
        method: Vec<u8>,
        /// Replay without checking answers (see the admin request).
        unverified: bool,
    },
    /// The outcome of a `MigrateRequest`.
    MigrateResult {
        /// The migration report (JSON), when it succeeded.
        report: Option<Vec<u8>>,
        /// Why it failed, otherwise.
        error: Option<String>,
    },
    /// Fleet mode: which LSNs the receiver's journal of a service holds
    /// (`replaymig status --fleet` asked at another node).
    JournalQuery {
        /// The service.
        service: String,
    },
    /// Answer to `JournalQuery`: the first and last LSN (0, 0: empty).
    JournalIs {
        /// The oldest stored LSN.
        first: u64,
        /// The last durable LSN.
        last: u64,
    },
    /// `TunnelOpen` from a node that can move the connection to a later
    /// owner itself: `relay` is its id of the connection, which that
    /// owner's hand-over names in a `TunnelMove`.
    TunnelOpenMovable {
        /// The service.
        service: String,
        /// The journaled connection being handed over, or a new client.
        conn: Option<u64>,
        /// Answer bytes the client has received on it.
        delivered: u64,
        /// The client's address, for the owner's journal.
        client: String,
        /// The ownership epoch the dialing node routes by.
        epoch: u64,
        /// The dialing node's id of the connection.
        relay: u64,
    },
    /// Old owner → a node that relays a client to it over a tunnel, in the
    /// old owner's hand-over (after its commit): dial `to` for connection
    /// `conn` yourself, sending again the tunnel's input after `consumed`;
    /// the old tunnel ends after answer byte `answers_end`. Answered with
    /// `TunnelMoveTaken`, or `MigrateAbort` (then the old owner relays on).
    TunnelMove {
        /// The service.
        service: String,
        /// The relaying node's id of the connection.
        relay: u64,
        /// The new owner.
        to: String,
        /// Its epoch.
        epoch: u64,
        /// The journaled connection (parked at the new owner).
        conn: u64,
        /// Tunnel input bytes the old owner journaled.
        consumed: u64,
        /// Answer offset the old tunnel ends at.
        answers_end: u64,
    },
    /// The relaying node took a `TunnelMove` (its input into the old
    /// tunnel stopped); it goes on once the old owner confirms with
    /// `TunnelMoveGo`, and stays on the old tunnel otherwise.
    TunnelMoveTaken,
    /// Old owner → relaying node: confirmed, the old owner ends its
    /// tunnel now.
    TunnelMoveGo,
}

impl Message {
    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::HelloProof { .. } => "hello_proof",
            Message::Proof { .. } => "proof",
            Message::Welcome => "welcome",
            Message::Goodbye { .. } => "goodbye",
            Message::SnapshotBegin { .. } => "snapshot_begin",
            Message::SnapshotChunk { .. } => "snapshot_chunk",
            Message::SnapshotEnd => "snapshot_end",
            Message::SnapshotStreamChunk { .. } => "snapshot_stream_chunk",
            Message::SnapshotStreamsNamed { .. } => "snapshot_streams_named",
            Message::MigrateRequest { .. } => "migrate_request",
            Message::MigrateResult { .. } => "migrate_result",
            Message::JournalQuery { .. } => "journal_query",
            Message::JournalIs { .. } => "journal_is",
            Message::TunnelOpenMovable { .. } => "tunnel_open_movable",
            Message::TunnelMove { .. } => "tunnel_move",
            Message::TunnelMoveTaken => "tunnel_move_taken",
            Message::TunnelMoveGo => "tunnel_move_go",
            Message::LogBatch { .. } => "log_batch",
            Message::LogApplied { .. } => "log_applied",
            Message::MigrateBegin { .. } => "migrate_begin",
            Message::MigrateReady => "migrate_ready",
            Message::MigrateAbort { .. } => "migrate_abort",
            Message::HandOver { .. } => "hand_over",
            Message::HandOverDone { .. } => "hand_over_done",
            Message::HandOverCommit { .. } => "hand_over_commit",
            Message::TunnelOpen { .. } => "tunnel_open",
            Message::TunnelReady => "tunnel_ready",
            Message::OwnerQuery { .. } => "owner_query",
            Message::OwnerIs { .. } => "owner_is",
            Message::Ping(_) => "ping",
            Message::Pong(_) => "pong",
        }
    }
}
