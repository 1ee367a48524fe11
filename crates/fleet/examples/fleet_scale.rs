//! The registry at scale (issue #17): SERVICES services and NODES node
//! agents on a real 3-member etcd cluster on loopback. Each agent is what a
//! node keeps — its own client, a registration under a lease, an owner map
//! and a member map fed by watches. Measured: the memory the agents' maps
//! take, how long a migration's commit takes, how long until every agent's
//! map shows it (watch propagation), the watch events that generates, and
//! what a route lookup costs a new client connection. Prints a Markdown
//! table. Run by `tools/bench-fleet.sh`.
//!
//!   cargo run --release -p replaymig-fleet --example fleet_scale -- [SERVICES] [NODES] [COMMITS]

use replaymig_fleet::{CommitOutcome, Etcd, EtcdOptions, NodeInfo, OwnerEntry, OwnerMap, Registry};
use replaymig_testkit::EtcdCluster;
use std::time::{Duration, Instant};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let services = *args.first().unwrap_or(&1000) as usize;
    let nodes = *args.get(1).unwrap_or(&10) as usize;
    let commits = *args.get(2).unwrap_or(&200) as usize;
    let cluster = EtcdCluster::start(3).expect("etcd (tools/setup.sh installs it)");
    let registry = |prefix: &str| {
        Registry::new(
            Etcd::new(EtcdOptions::new(cluster.endpoints())).unwrap(),
            prefix,
        )
    };
    let admin = registry("/scale");
    let d = Duration::from_secs(5);

    // The services, claimed by nodes round-robin.
    let started = Instant::now();
    let mut owned = Vec::with_capacity(services);
    for i in 0..services {
        let entry = OwnerEntry {
            owner: format!("node{}", i % nodes),
            epoch: 1,
            handover_lsn: 0,
        };
        owned.push(admin.claim(&format!("svc{i:04}"), &entry, d).await.unwrap());
    }
    let claim_ms = started.elapsed().as_secs_f64() * 1000.0 / services as f64;

    // The agents: each its own client, registration and maps.
    let before = rss_kib();
    let mut agents = Vec::new();
    for n in 0..nodes {
        let reg = registry("/scale");
        let membership = reg.register(
            NodeInfo {
                name: format!("node{n}"),
                peer: format!("10.0.0.{n}:7100"),
                admin: None,
            },
            Duration::from_secs(5),
        );
        let owners = reg.owner_map();
        let members = reg.member_map();
        agents.push((membership, owners, members));
    }
    for (_, owners, members) in &agents {
        assert!(owners.listed_within(Duration::from_secs(30)).await);
        assert!(members.listed_within(Duration::from_secs(30)).await);
    }
    // Every agent sees every service and node.
    let deadline = Instant::now() + Duration::from_secs(30);
    while agents
        .iter()
        .any(|(_, o, m)| o.all().len() < services || m.all().len() < nodes)
    {
        assert!(Instant::now() < deadline, "the maps did not fill");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let per_agent_kib = rss_kib().saturating_sub(before) as f64 / nodes as f64;

    // Commits, each followed until every agent's map shows it.
    let maps: Vec<&OwnerMap> = agents.iter().map(|(_, o, _)| o).collect();
    let (mut commit_ms, mut seen_ms) = (Vec::new(), Vec::new());
    for k in 0..commits {
        let i = (k * 7919) % services;
        let name = format!("svc{i:04}");
        let read = &owned[i];
        let next = OwnerEntry {
            owner: format!("node{}", (k + 1) % nodes),
            epoch: read.entry.epoch + 1,
            handover_lsn: read.entry.handover_lsn + 100,
        };
        let t = Instant::now();
        let outcome = admin.commit(&name, read, &next, d).await.unwrap();
        assert_eq!(outcome, CommitOutcome::Committed);
        commit_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        for map in &maps {
            map.wait_for(&name, d, |v| v.value == next)
                .await
                .expect("every agent sees the commit");
        }
        seen_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        owned[i] = admin.owner(&name, d).await.unwrap().unwrap();
    }
    commit_ms.sort_by(f64::total_cmp);
    seen_ms.sort_by(f64::total_cmp);

    // A route lookup, as a new client connection makes it.
    let lookups = 1_000_000;
    let t = Instant::now();
    let mut hits = 0usize;
    for k in 0..lookups {
        if maps[k % nodes]
            .owner(&format!("svc{:04}", k % services))
            .is_some()
        {
            hits += 1;
        }
    }
    let lookup_ns = t.elapsed().as_secs_f64() * 1e9 / lookups as f64;
    assert_eq!(hits, lookups);
    let value_bytes = serde_json::to_vec(&owned[0].entry).unwrap().len();

    println!("## Fleet registry at scale: {services} services, {nodes} node agents, 3-member etcd 3.4 on loopback\n");
    println!("| measure | value |");
    println!("|---|---|");
    println!("| claim of one service (sequential, first time) | {claim_ms:.2} ms |");
    println!(
        "| agent memory (owner map + member map + client, RSS ÷ agents) | {per_agent_kib:.0} KiB |"
    );
    println!(
        "| migration commit (compare-and-swap), median / p99 of {commits} | {:.2} / {:.2} ms |",
        percentile(&commit_ms, 0.5),
        percentile(&commit_ms, 0.99)
    );
    println!(
        "| commit until all {nodes} agents' maps show it, median / p99 | {:.2} / {:.2} ms |",
        percentile(&seen_ms, 0.5),
        percentile(&seen_ms, 0.99)
    );
    println!(
        "| watch traffic per commit | {nodes} events (one per agent), value {value_bytes} bytes + key |"
    );
    println!("| route lookup per new connection (owner map, incl. the name's format) | {lookup_ns:.0} ns |");
    drop(agents);
}
