//! Reading a Prometheus endpoint the way an operator's scraper does:
//! plain HTTP, text format, one sample per series.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Samples of one scrape: `name{labels}` → value.
pub struct Metrics(pub BTreeMap<String, f64>);

impl Metrics {
    /// The value of a series written exactly as on the page; a bare family
    /// name sums its labelled series (0 if absent).
    pub fn get(&self, series: &str) -> f64 {
        if let Some(v) = self.0.get(series) {
            return *v;
        }
        let prefix = format!("{series}{{");
        self.0
            .iter()
            .filter(|(k, _)| !series.contains('{') && k.starts_with(&prefix))
            .map(|(_, v)| v)
            .sum()
    }
    /// Whether any series of the family exists.
    pub fn has_family(&self, prefix: &str) -> bool {
        self.0.keys().any(|k| k.starts_with(prefix))
    }
}

/// GET /metrics over plain HTTP/1.0.
pub fn scrape(addr: SocketAddr) -> anyhow::Result<Metrics> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    // The samples are the body, after the HTTP headers.
    let body = body
        .split_once("\r\n\r\n")
        .map_or(body.as_str(), |(_, b)| b);
    let mut samples = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        if let Some((series, value)) = line.rsplit_once(' ') {
            if let Ok(v) = value.parse() {
                samples.insert(series.to_string(), v);
            }
        }
    }
    Ok(Metrics(samples))
}
