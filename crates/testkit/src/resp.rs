//! A minimal blocking RESP2 client: enough for tests to send commands
//! (pipelined or not) and check every answer.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Status(String),
    /// `-ERR ...`
    Error(String),
    /// `:42`
    Int(i64),
    /// `$n` bulk string.
    Bulk(Vec<u8>),
    /// `$-1` / `*-1`
    Nil,
    /// `*n`
    Array(Vec<Reply>),
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode_command(args: &[&str]) -> Vec<u8> {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    encode_command_bytes(&args)
}

/// [`encode_command`] for arguments that are not text (binary values).
pub fn encode_command_bytes(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A blocking connection that also keeps every byte it sent (tests compare
/// that with the journal).
pub struct RespClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// Every byte written on this connection, in order.
    pub sent: Vec<u8>,
}

impl RespClient {
    /// Connects with 10 s read/write timeouts so a hung peer fails the test.
    pub fn connect(addr: SocketAddr) -> Result<RespClient> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connect {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(RespClient {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            sent: Vec::new(),
        })
    }

    /// Sends one command and reads its reply.
    pub fn cmd(&mut self, args: &[&str]) -> Result<Reply> {
        self.send(&encode_command(args))?;
        self.read_reply()
    }

    /// Sends several commands in one write and reads all their replies.
    pub fn pipeline(&mut self, cmds: &[Vec<&str>]) -> Result<Vec<Reply>> {
        let mut buf = Vec::new();
        for c in cmds {
            buf.extend(encode_command(c));
        }
        self.send(&buf)?;
        cmds.iter().map(|_| self.read_reply()).collect()
    }

    /// The whole list at `key`, as UTF-8 strings.
    pub fn lrange(&mut self, key: &str) -> Result<Vec<String>> {
        match self.cmd(&["LRANGE", key, "0", "-1"])? {
            Reply::Array(items) => items
                .into_iter()
                .map(|r| match r {
                    Reply::Bulk(v) => Ok(String::from_utf8(v)?),
                    other => bail!("LRANGE {key}: odd item {other:?}"),
                })
                .collect(),
            other => bail!("LRANGE {key}: {other:?}"),
        }
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer.write_all(bytes)?;
        self.sent.extend_from_slice(bytes);
        Ok(())
    }

    /// The underlying socket (e.g. to shut down its write side).
    pub fn stream(&self) -> &TcpStream {
        &self.writer
    }

    /// Reads one reply.
    pub fn read_reply(&mut self) -> Result<Reply> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("connection closed while waiting for a reply");
        }
        let line = line.trim_end_matches("\r\n");
        let (tag, rest) = line.split_at(1);
        Ok(match tag {
            "+" => Reply::Status(rest.into()),
            "-" => Reply::Error(rest.into()),
            ":" => Reply::Int(rest.parse()?),
            "$" => {
                let n: i64 = rest.parse()?;
                if n < 0 {
                    Reply::Nil
                } else {
                    let mut b = vec![0; n as usize + 2];
                    self.reader.read_exact(&mut b)?;
                    b.truncate(n as usize);
                    Reply::Bulk(b)
                }
            }
            "*" => {
                let n: i64 = rest.parse()?;
                if n < 0 {
                    Reply::Nil
                } else {
                    let items = (0..n).map(|_| self.read_reply()).collect::<Result<_>>()?;
                    Reply::Array(items)
                }
            }
            other => bail!("not a RESP reply: {other:?}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_encode_as_arrays_of_bulk_strings_binary_values_too() {
        assert_eq!(
            encode_command(&["SET", "k", "vv"]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nvv\r\n".to_vec()
        );
        let binary = [0u8, b'\r', b'\n', 255];
        assert_eq!(
            encode_command_bytes(&[b"SET", b"k", &binary]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\n\0\r\n\xff\r\n".to_vec()
        );
    }
}
