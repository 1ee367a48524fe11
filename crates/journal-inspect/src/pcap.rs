//! Exporting journaled conversations as a classic pcap capture
//! (`replaymig journal export`), so a recorded session can be read in
//! Wireshark/tshark with its TCP dissectors and the service's protocol
//! dissector (RESP, HTTP, ...) instead of as raw hex.
//!
//! Every journaled connection becomes one IPv4/TCP stream (LINKTYPE_RAW,
//! no link layer): a three-way handshake at its `opened` time, each `data`
//! record as client→service segments of at most [`MSS`] bytes at the
//! record's time, each acknowledged by the service, a client FIN on
//! `half_closed` and the rest of the teardown on `closed`. The journal holds
//! only the client's bytes (answers are counted, not kept), so the service
//! side carries no payload: its sequence numbers never advance past its SYN
//! and FIN, which keeps Wireshark's sequence analysis free of "unseen
//! segment" warnings. Sequence numbers are synthetic (derived from the
//! connection id) but consistent, and the IPv4 and TCP checksums are real
//! (computed by `etherparse`; [`checksum`] checks them independently).

use etherparse::PacketBuilder;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::DataLink;
use replaymig_journal::{ConnId, Entry, Record};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

/// Largest TCP payload per exported segment: a client read (up to 1 MiB)
/// is split like an Ethernet path would, so every packet fits the snaplen
/// and looks like real traffic to the dissectors.
pub const MSS: usize = 1400;

/// TCP window advertised by both sides; a constant is enough because no
/// flow control is being modelled.
const WINDOW: u16 = 65535;

/// IPv4 TTL of the synthesized packets (Linux's default).
const TTL: u8 = 64;

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Writing the capture failed (disk full, closed pipe, ...).
    #[error("cannot write the capture: {0}")]
    Write(#[from] pcap_file::PcapError),
    /// Building a packet failed (should not happen: sizes are bounded).
    #[error("cannot build a packet: {0}")]
    Build(String),
}

/// What to export and how to address the service side.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The service's address in the capture (the journal does not record
    /// where the proxy forwarded to, so the user says it).
    pub service: SocketAddrV4,
    /// Only these connections (empty: all).
    pub conns: HashSet<ConnId>,
}

/// What an export wrote, for the CLI's summary line and for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// TCP streams (journaled connections) in the capture.
    pub streams: u64,
    /// Packets written.
    pub packets: u64,
    /// Client→service TCP payload bytes (= the exported data records' bytes).
    pub payload_bytes: u64,
    /// Service→client TCP payload bytes (the answer bytes the journal kept,
    /// `--journal-responses full`; digests carry no bytes to export).
    pub answer_bytes: u64,
}

/// Which end of a connection sends a payload.
#[derive(Debug, Clone, Copy)]
enum Sender {
    Client,
    Service,
}

/// One exported connection's TCP state.
#[derive(Debug)]
struct Flow {
    client: SocketAddrV4,
    /// Next client sequence number.
    client_seq: u32,
    /// Next service sequence number.
    service_seq: u32,
    client_fin: bool,
    service_fin: bool,
}

/// TCP flags of one segment.
#[derive(Debug, Clone, Copy, Default)]
struct Flags {
    syn: bool,
    ack: bool,
    psh: bool,
    fin: bool,
}

/// Writes journal entries, in LSN order, as a pcap capture.
pub struct PcapExporter<W: Write> {
    writer: PcapWriter<W>,
    options: ExportOptions,
    flows: HashMap<ConnId, Flow>,
    /// Client addresses of connections opened before the exported range,
    /// so their streams still get the right address.
    known_clients: HashMap<ConnId, String>,
    next_synthetic: u32,
    stats: ExportStats,
}

impl<W: Write> PcapExporter<W> {
    /// Starts a capture on `out` (writes the pcap file header).
    pub fn new(out: W, options: ExportOptions) -> Result<Self, ExportError> {
        let header = PcapHeader {
            datalink: DataLink::RAW,
            ..PcapHeader::default()
        };
        Ok(PcapExporter {
            writer: PcapWriter::with_header(out, header)?,
            options,
            flows: HashMap::new(),
            known_clients: HashMap::new(),
            next_synthetic: 0,
            stats: ExportStats::default(),
        })
    }

    /// Tells the client address of a connection whose `opened` record
    /// precedes the exported range, so its stream (which then starts at its
    /// first exported record) gets the recorded address.
    pub fn know_client(&mut self, conn: ConnId, client_addr: String) {
        self.known_clients.insert(conn, client_addr);
    }

    /// Adds one journal entry. Markers and filtered-out connections are
    /// skipped; a connection first seen after its `opened` record gets its
    /// handshake at that record's time.
    pub fn push(&mut self, entry: &Entry) -> Result<(), ExportError> {
        let record = &entry.record;
        let Some(conn) = record.conn(entry.lsn) else {
            return Ok(());
        };
        if !self.options.conns.is_empty() && !self.options.conns.contains(&conn) {
            return Ok(());
        }
        let time = record.time_us();
        match record {
            Record::Opened { client_addr, .. } => {
                self.open(conn, client_addr.clone(), time)?;
            }
            Record::Data { data, .. } => {
                self.ensure_open(conn, time)?;
                self.payload(conn, time, data, Sender::Client)?;
                self.service_ack(conn, time, false)?;
            }
            Record::HalfClosed { .. } => {
                self.ensure_open(conn, time)?;
                self.client_fin(conn, time)?;
            }
            Record::Closed { .. } => {
                self.ensure_open(conn, time)?;
                self.client_fin(conn, time)?;
                if !self.flows[&conn].service_fin {
                    self.service_ack(conn, time, true)?;
                    self.client_ack(conn, time)?;
                }
                self.flows.remove(&conn);
            }
            Record::Answer { data, .. } => {
                self.ensure_open(conn, time)?;
                self.payload(conn, time, data, Sender::Service)?;
                if !data.is_empty() {
                    self.client_ack(conn, time)?;
                }
            }
            Record::Marker { .. } => {}
        }
        Ok(())
    }

    /// Ends the capture: flushes it and gives back the output and what was
    /// written. Connections still open stay open in the capture, as they
    /// were in the journal.
    pub fn finish(self) -> Result<(W, ExportStats), ExportError> {
        let mut out = self.writer.into_writer();
        out.flush()
            .map_err(|e| ExportError::Write(pcap_file::PcapError::IoError(e)))?;
        Ok((out, self.stats))
    }

    fn ensure_open(&mut self, conn: ConnId, time: u64) -> Result<(), ExportError> {
        if self.flows.contains_key(&conn) {
            return Ok(());
        }
        let addr = self.known_clients.remove(&conn).unwrap_or_default();
        self.open(conn, addr, time)
    }

    /// Starts a stream: the three-way handshake at `time`.
    fn open(&mut self, conn: ConnId, client_addr: String, time: u64) -> Result<(), ExportError> {
        let client = self.client_address(conn, &client_addr);
        let client_isn = isn(conn);
        let service_isn = isn(!conn);
        self.flows.insert(
            conn,
            Flow {
                client,
                client_seq: client_isn.wrapping_add(1),
                service_seq: service_isn.wrapping_add(1),
                client_fin: false,
                service_fin: false,
            },
        );
        self.stats.streams += 1;
        let syn = Flags {
            syn: true,
            ..Flags::default()
        };
        self.client_packet(conn, time, client_isn, 0, syn, &[])?;
        let syn_ack = Flags {
            syn: true,
            ack: true,
            ..Flags::default()
        };
        self.service_packet(
            conn,
            time,
            service_isn,
            client_isn.wrapping_add(1),
            syn_ack,
            &[],
        )?;
        let ack = Flags {
            ack: true,
            ..Flags::default()
        };
        self.client_packet(
            conn,
            time,
            client_isn.wrapping_add(1),
            service_isn.wrapping_add(1),
            ack,
            &[],
        )
    }

    /// `data` from `from` as segments of at most `MSS` bytes, advancing
    /// that side's sequence number and the payload counts.
    fn payload(
        &mut self,
        conn: ConnId,
        time: u64,
        data: &[u8],
        from: Sender,
    ) -> Result<(), ExportError> {
        let flags = Flags {
            ack: true,
            psh: true,
            ..Flags::default()
        };
        for chunk in data.chunks(MSS) {
            let flow = self.flows.get_mut(&conn).expect("flow is open");
            let len = chunk.len() as u32;
            let (seq, ack) = match from {
                Sender::Client => {
                    flow.client_seq = flow.client_seq.wrapping_add(len);
                    self.stats.payload_bytes += chunk.len() as u64;
                    (flow.client_seq.wrapping_sub(len), flow.service_seq)
                }
                Sender::Service => {
                    flow.service_seq = flow.service_seq.wrapping_add(len);
                    self.stats.answer_bytes += chunk.len() as u64;
                    (flow.service_seq.wrapping_sub(len), flow.client_seq)
                }
            };
            match from {
                Sender::Client => self.client_packet(conn, time, seq, ack, flags, chunk)?,
                Sender::Service => self.service_packet(conn, time, seq, ack, flags, chunk)?,
            }
        }
        Ok(())
    }

    /// The client acknowledges everything the service sent.
    fn client_ack(&mut self, conn: ConnId, time: u64) -> Result<(), ExportError> {
        let flow = &self.flows[&conn];
        let (seq, ack) = (flow.client_seq, flow.service_seq);
        let ack_only = Flags {
            ack: true,
            ..Flags::default()
        };
        self.client_packet(conn, time, seq, ack, ack_only, &[])
    }

    /// The client's FIN (once) and the service's ACK of it.
    fn client_fin(&mut self, conn: ConnId, time: u64) -> Result<(), ExportError> {
        let flow = &self.flows[&conn];
        if flow.client_fin {
            return Ok(());
        }
        let (seq, ack) = (flow.client_seq, flow.service_seq);
        let fin = Flags {
            fin: true,
            ack: true,
            ..Flags::default()
        };
        self.client_packet(conn, time, seq, ack, fin, &[])?;
        let flow = self.flows.get_mut(&conn).expect("flow is open");
        flow.client_seq = flow.client_seq.wrapping_add(1);
        flow.client_fin = true;
        self.service_ack(conn, time, false)
    }

    /// The service acknowledges everything the client sent, with its own
    /// FIN when `fin`.
    fn service_ack(&mut self, conn: ConnId, time: u64, fin: bool) -> Result<(), ExportError> {
        let flow = &self.flows[&conn];
        let (seq, ack) = (flow.service_seq, flow.client_seq);
        let flags = Flags {
            ack: true,
            fin,
            ..Flags::default()
        };
        self.service_packet(conn, time, seq, ack, flags, &[])?;
        if fin {
            let flow = self.flows.get_mut(&conn).expect("flow is open");
            flow.service_seq = flow.service_seq.wrapping_add(1);
            flow.service_fin = true;
        }
        Ok(())
    }

    fn client_packet(
        &mut self,
        conn: ConnId,
        time: u64,
        seq: u32,
        ack: u32,
        flags: Flags,
        payload: &[u8],
    ) -> Result<(), ExportError> {
        let client = self.flows[&conn].client;
        let bytes = tcp_packet(client, self.options.service, seq, ack, flags, payload)?;
        self.write(time, bytes)
    }

    fn service_packet(
        &mut self,
        conn: ConnId,
        time: u64,
        seq: u32,
        ack: u32,
        flags: Flags,
        payload: &[u8],
    ) -> Result<(), ExportError> {
        let client = self.flows[&conn].client;
        let bytes = tcp_packet(self.options.service, client, seq, ack, flags, payload)?;
        self.write(time, bytes)
    }

    fn write(&mut self, time_us: u64, bytes: Vec<u8>) -> Result<(), ExportError> {
        let len = bytes.len() as u32;
        let packet = PcapPacket::new_owned(Duration::from_micros(time_us), len, bytes);
        self.writer.write_packet(&packet)?;
        self.stats.packets += 1;
        Ok(())
    }

    /// The recorded client address if it is IPv4 (or IPv4-mapped IPv6),
    /// otherwise a synthetic 10.x.y.z one (keeping the port if there is one)
    /// so the stream is still distinct.
    fn client_address(&mut self, conn: ConnId, recorded: &str) -> SocketAddrV4 {
        match recorded.parse::<SocketAddr>() {
            Ok(SocketAddr::V4(v4)) => v4,
            Ok(SocketAddr::V6(v6)) if v6.ip().to_ipv4_mapped().is_some() => {
                SocketAddrV4::new(v6.ip().to_ipv4_mapped().expect("checked"), v6.port())
            }
            parsed => {
                let host = self.next_synthetic % 0x00ff_fffe + 1;
                self.next_synthetic = self.next_synthetic.wrapping_add(1);
                let ip = Ipv4Addr::from(0x0a00_0000 | host);
                let port = match parsed {
                    Ok(addr) => addr.port(),
                    Err(_) => 32768 + (conn % 28000) as u16,
                };
                SocketAddrV4::new(ip, port)
            }
        }
    }
}

/// A connection's initial sequence number: fixed per connection id so
/// exports are reproducible, spread out so streams do not look alike.
fn isn(conn: ConnId) -> u32 {
    let mixed = conn.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (mixed >> 32) as u32
}

/// One IPv4+TCP packet (no link layer), checksums included.
fn tcp_packet(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    seq: u32,
    ack: u32,
    flags: Flags,
    payload: &[u8],
) -> Result<Vec<u8>, ExportError> {
    let mut builder = PacketBuilder::ipv4(src.ip().octets(), dst.ip().octets(), TTL).tcp(
        src.port(),
        dst.port(),
        seq,
        WINDOW,
    );
    if flags.syn {
        builder = builder.syn();
    }
    if flags.ack {
        builder = builder.ack(ack);
    }
    if flags.psh {
        builder = builder.psh();
    }
    if flags.fin {
        builder = builder.fin();
    }
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut out, payload)
        .map_err(|e| ExportError::Build(e.to_string()))?;
    Ok(out)
}

/// The Internet checksum (RFC 1071) and the IPv4/TCP checksums built on it:
/// an independent check of the packets `etherparse` builds, so a wrong
/// checksum is caught by unit tests and not first by Wireshark.
pub mod checksum {
    /// RFC 1071 one's-complement sum of `data` (odd length padded with a
    /// zero byte), folded and complemented.
    pub fn internet(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for pair in data.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// Whether the IPv4 header at the start of `packet` has a valid
    /// checksum (summing a header including its checksum gives 0).
    pub fn ipv4_header_ok(packet: &[u8]) -> bool {
        let ihl = usize::from(packet[0] & 0x0f) * 4;
        internet(&packet[..ihl]) == 0
    }

    /// Whether the TCP segment inside the IPv4 `packet` has a valid
    /// checksum over the pseudo-header (addresses, protocol, TCP length)
    /// and the segment.
    pub fn tcp_ok(packet: &[u8]) -> bool {
        let ihl = usize::from(packet[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
        let segment = &packet[ihl..total];
        let mut pseudo = Vec::with_capacity(12 + segment.len());
        pseudo.extend_from_slice(&packet[12..20]);
        pseudo.extend_from_slice(&[0, packet[9]]);
        pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(segment);
        internet(&pseudo) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    fn service() -> SocketAddrV4 {
        "127.0.0.1:6379".parse().unwrap()
    }

    #[test]
    fn internet_checksum_matches_rfc1071_example() {
        // RFC 1071 section 3's example words sum to 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum::internet(&data), !0xddf2);
        // A known IPv4 header (Wikipedia's example), checksum 0xb861.
        let mut header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum::internet(&header), 0xb861);
        header[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert!(checksum::ipv4_header_ok(&header));
        // Odd length pads with zero.
        assert_eq!(checksum::internet(&[0x01]), !0x0100);
    }

    #[test]
    fn built_packets_have_valid_checksums() {
        let client: SocketAddrV4 = "192.168.7.9:51234".parse().unwrap();
        for payload in [&b""[..], b"x", b"*1\r\n$4\r\nPING\r\n", &[0xff; 1400]] {
            let flags = Flags {
                ack: true,
                psh: !payload.is_empty(),
                ..Flags::default()
            };
            let mut p = tcp_packet(client, service(), 0xfffffff0, 77, flags, payload).unwrap();
            assert!(checksum::ipv4_header_ok(&p));
            assert!(checksum::tcp_ok(&p));
            // A flipped payload or address bit is caught.
            let last = p.len() - 1;
            p[last] ^= 0x10;
            assert!(!checksum::tcp_ok(&p));
            p[last] ^= 0x10;
            p[13] ^= 1;
            assert!(!checksum::ipv4_header_ok(&p) && !checksum::tcp_ok(&p));
        }
    }

    fn entry(lsn: u64, record: Record) -> Entry {
        Entry { lsn, record }
    }

    /// Parses a capture back into (src port, flags "SAPF", seq, ack, payload len).
    fn parse(capture: &[u8]) -> Vec<(u16, String, u32, u32, usize, u64)> {
        let mut reader = pcap_file::pcap::PcapReader::new(capture).unwrap();
        assert_eq!(reader.header().datalink, DataLink::RAW);
        let mut out = Vec::new();
        while let Some(packet) = reader.next_packet() {
            let packet = packet.unwrap();
            assert!(checksum::ipv4_header_ok(&packet.data));
            assert!(checksum::tcp_ok(&packet.data));
            let sliced = SlicedPacket::from_ip(&packet.data).unwrap();
            assert!(matches!(sliced.net, Some(NetSlice::Ipv4(_))));
            let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
                panic!("not TCP")
            };
            let mut flags = String::new();
            for (on, c) in [
                (tcp.syn(), 'S'),
                (tcp.ack(), 'A'),
                (tcp.psh(), 'P'),
                (tcp.fin(), 'F'),
            ] {
                if on {
                    flags.push(c);
                }
            }
            out.push((
                tcp.source_port(),
                flags,
                tcp.sequence_number(),
                tcp.acknowledgment_number(),
                tcp.payload().len(),
                packet.timestamp.as_micros() as u64,
            ));
        }
        out
    }

    #[test]
    fn a_connection_becomes_one_consistent_stream() {
        let options = ExportOptions {
            service: service(),
            conns: HashSet::new(),
        };
        let mut ex = PcapExporter::new(Vec::new(), options).unwrap();
        let records = [
            Record::Opened {
                time_us: 1_000_000,
                client_addr: "10.1.2.3:40000".into(),
            },
            Record::Data {
                time_us: 1_000_100,
                conn: 1,
                resp_before: 0,
                resp_total_before: 0,
                data: Bytes::from(vec![b'a'; 3000]),
            },
            Record::Marker {
                time_us: 1_000_150,
                mark: "snapshot".into(),
                lsn_ref: 2,
                payload: Bytes::new(),
            },
            Record::HalfClosed {
                time_us: 1_000_200,
                conn: 1,
            },
            Record::Closed {
                time_us: 1_000_300,
                conn: 1,
                resp_total: 5,
            },
        ];
        for (i, r) in records.into_iter().enumerate() {
            ex.push(&entry(i as u64 + 1, r)).unwrap();
        }
        let (capture, stats) = ex.finish().unwrap();
        assert_eq!(
            stats,
            ExportStats {
                streams: 1,
                packets: 3 + 3 + 1 + 2 + 2,
                payload_bytes: 3000,
                answer_bytes: 0,
            }
        );
        let packets = parse(&capture);
        let c = isn(1);
        let s = isn(!1);
        let summary: Vec<_> = packets
            .iter()
            .map(|p| (p.0, p.1.as_str(), p.2, p.3, p.4))
            .collect();
        assert_eq!(
            summary,
            vec![
                (40000, "S", c, 0, 0),
                (6379, "SA", s, c + 1, 0),
                (40000, "A", c + 1, s + 1, 0),
                (40000, "AP", c + 1, s + 1, 1400),
                (40000, "AP", c + 1401, s + 1, 1400),
                (40000, "AP", c + 2801, s + 1, 200),
                (6379, "A", s + 1, c + 3001, 0),
                (40000, "AF", c + 3001, s + 1, 0),
                (6379, "A", s + 1, c + 3002, 0),
                (6379, "AF", s + 1, c + 3002, 0),
                (40000, "A", c + 3002, s + 2, 0),
            ]
        );
        assert_eq!(packets[0].5, 1_000_000);
        assert_eq!(packets[3].5, 1_000_100);
        assert_eq!(packets[10].5, 1_000_300);
    }

    #[test]
    fn filters_addresses_and_streams_opened_before_the_range() {
        let options = ExportOptions {
            service: "192.0.2.1:80".parse().unwrap(),
            conns: [5, 9].into_iter().collect(),
        };
        let mut ex = PcapExporter::new(Vec::new(), options).unwrap();
        ex.know_client(5, "[::ffff:10.9.8.7]:1234".into());
        let data = |conn| Record::Data {
            time_us: 7,
            conn,
            resp_before: 0,
            resp_total_before: 0,
            data: Bytes::from_static(b"hi"),
        };
        ex.push(&entry(10, data(5))).unwrap();
        ex.push(&entry(11, data(6))).unwrap(); // filtered out
        ex.push(&entry(
            9,
            Record::Opened {
                time_us: 7,
                client_addr: "not an address".into(),
            },
        ))
        .unwrap();
        ex.push(&entry(12, data(9))).unwrap();
        let (capture, stats) = ex.finish().unwrap();
        assert_eq!(stats.streams, 2);
        assert_eq!(stats.payload_bytes, 4);
        let packets = parse(&capture);
        assert_eq!(packets[0].0, 1234);
        assert_eq!(packets.len(), 2 * 5);
        let mut reader = pcap_file::pcap::PcapReader::new(&capture[..]).unwrap();
        for _ in 0..5 {
            reader.next_packet();
        }
        let sixth = reader.next_packet().unwrap().unwrap().data.into_owned();
        let synthetic = SlicedPacket::from_ip(&sixth).unwrap();
        let Some(NetSlice::Ipv4(ip)) = synthetic.net else {
            panic!()
        };
        assert_eq!(ip.header().source_addr(), Ipv4Addr::new(10, 0, 0, 1));
    }
}
