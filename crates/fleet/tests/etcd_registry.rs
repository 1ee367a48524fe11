//! The registry against a real 3-member etcd cluster (Debian's 3.4, the
//! version this runs on; the etcd-client crate is tested upstream only on
//! 3.5+): ownership compare-and-swap and its retries, membership leases,
//! the owner map's watch across a killed member, and a commit whose
//! outcome is unknown while quorum is lost, settled by a pin afterwards.

use replaymig_fleet::{
    CommitOutcome, Etcd, EtcdOptions, FleetError, NodeInfo, OwnerEntry, Registry,
};
use replaymig_testkit::EtcdCluster;
use std::time::{Duration, Instant};

fn registry(cluster: &EtcdCluster, prefix: &str) -> Registry {
    let etcd = Etcd::new(EtcdOptions::new(cluster.endpoints())).unwrap();
    Registry::new(etcd, prefix)
}

fn entry(owner: &str, epoch: u64, handover_lsn: u64) -> OwnerEntry {
    OwnerEntry {
        owner: owner.into(),
        epoch,
        handover_lsn,
    }
}

const D: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_commit_swaps_only_what_was_read_and_its_retry_is_idempotent() {
    let cluster = EtcdCluster::start(3).unwrap();
    let reg = registry(&cluster, "/t1");

    // The first claim creates the entry; a later one finds it.
    let first = reg.claim("redis", &entry("a", 1, 0), D).await.unwrap();
    assert_eq!(first.entry, entry("a", 1, 0));
    let again = reg.claim("redis", &entry("b", 1, 0), D).await.unwrap();
    assert_eq!(again, first, "a second claim changes nothing");

    // a → b under epoch 2.
    let next = entry("b", 2, 1234);
    assert_eq!(
        reg.commit("redis", &first, &next, D).await.unwrap(),
        CommitOutcome::Committed
    );
    // The same commit again (its answer lost, say): still committed, once.
    assert_eq!(
        reg.commit("redis", &first, &next, D).await.unwrap(),
        CommitOutcome::Committed
    );
    let now = reg.owner("redis", D).await.unwrap().unwrap();
    assert_eq!(now.entry, next);
    // Another commit over the same read: the key moved on to a later
    // epoch, which only a commit of that read could do — it is spent.
    let stale = reg
        .commit("redis", &first, &entry("c", 2, 99), D)
        .await
        .unwrap();
    assert_eq!(stale, CommitOutcome::Superseded { now: now.clone() });
    // etcd itself holds the entry as JSON under the fleet's prefix.
    let raw = cluster
        .etcdctl(&["get", "/t1/services/redis", "--print-value-only"])
        .unwrap();
    assert_eq!(
        serde_json::from_str::<OwnerEntry>(raw.trim()).unwrap(),
        next
    );
    // b moves it on to c; a, who lost the answer to a → b, pins: it finds
    // the hand-over applied and superseded — never "not committed", which
    // would let a serve again beside c.
    let at_c = entry("c", 3, 2000);
    assert_eq!(
        reg.commit("redis", &now, &at_c, D).await.unwrap(),
        CommitOutcome::Committed
    );
    match reg.pin("redis", &first, &next, D).await.unwrap() {
        CommitOutcome::Superseded { now } => assert_eq!(now.entry, at_c),
        other => panic!("a pin after later moves must say superseded, got {other:?}"),
    }
    // A pin of the read as it still is, though, pins it.
    let at_c_read = reg.owner("redis", D).await.unwrap().unwrap();
    let pinned = reg
        .pin("redis", &at_c_read, &entry("d", 4, 3000), D)
        .await
        .unwrap();
    assert!(matches!(pinned, CommitOutcome::NotCommitted { now: Some(n) } if n.entry == at_c));
    // Something else's bytes under the key are an error naming it.
    cluster
        .etcdctl(&["put", "/t1/services/bad", "not json"])
        .unwrap();
    match reg.owner("bad", D).await {
        Err(FleetError::Malformed { key, .. }) => assert_eq!(key, "/t1/services/bad"),
        other => panic!("expected a malformed-entry error, got {other:?}"),
    }
}

#[tokio::test]
async fn membership_lasts_as_long_as_its_lease_is_kept() {
    let cluster = EtcdCluster::start(3).unwrap();
    let reg = registry(&cluster, "/t2");
    let info = |name: &str| NodeInfo {
        name: name.into(),
        peer: format!("10.0.0.{}:7000", name.len()),
        admin: None,
    };
    let ttl = Duration::from_secs(2);
    let members = reg.member_map();
    let mut a = reg.register(info("a"), ttl);
    let mut b = reg.register(info("bb"), ttl);
    assert!(a.registered_within(D).await && b.registered_within(D).await);
    let mut names: Vec<_> = reg
        .members()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    names.sort();
    assert_eq!(names, ["a", "bb"]);
    let seen = members
        .wait_for("bb", D, |_| true)
        .await
        .expect("the member map sees bb");
    assert_eq!(seen.value, info("bb"));
    // Kept alive past several TTLs.
    tokio::time::sleep(ttl * 2).await;
    assert_eq!(reg.members().await.unwrap().len(), 2);
    assert!(a.is_registered());

    // Leaving revokes at once; a node that just stops renewing (dropped:
    // a crash) is gone once its lease runs out.
    a.leave().await.unwrap();
    assert_eq!(reg.members().await.unwrap(), vec![info("bb")]);
    let left_by = Instant::now() + D;
    while members.get("a").is_some() {
        assert!(
            Instant::now() < left_by,
            "the member map did not see a leave"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(b);
    let gone_by = Instant::now() + ttl + Duration::from_secs(2);
    while !reg.members().await.unwrap().is_empty() {
        assert!(
            Instant::now() < gone_by,
            "the crashed node's key outlived its lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn with_a_member_killed_requests_fail_over_and_the_owner_map_keeps_up() {
    let mut cluster = EtcdCluster::start(3).unwrap();
    let reg = registry(&cluster, "/t3");
    let map = reg.owner_map();
    let read = reg.claim("svc", &entry("a", 1, 0), D).await.unwrap();
    let seen = map.wait_for("svc", D, |o| o.value.owner == "a").await;
    assert!(
        seen.is_some(),
        "map: {:?} at revision {}",
        map.all(),
        map.revision()
    );

    // The member every client talks to first (and the map's watch) dies.
    cluster.kill(0);
    let next = entry("b", 2, 10);
    assert_eq!(
        reg.commit("svc", &read, &next, D).await.unwrap(),
        CommitOutcome::Committed
    );
    let seen = map
        .wait_for("svc", D, |o| o.value.epoch == 2)
        .await
        .expect("the owner map saw the commit through another member");
    assert_eq!(seen.value, next);

    // Back, and the other two killed in turn: the map follows each change.
    cluster.restart(0).unwrap();
    let mut read = reg.owner("svc", D).await.unwrap().unwrap();
    for (victim, owner) in [(1, "c"), (2, "d")] {
        cluster.kill(victim);
        let next = entry(owner, read.entry.epoch + 1, read.entry.handover_lsn + 5);
        assert_eq!(
            reg.commit("svc", &read, &next, D).await.unwrap(),
            CommitOutcome::Committed
        );
        assert!(
            map.wait_for("svc", D, |o| o.value == next).await.is_some(),
            "the owner map missed {owner}'s commit with member {victim} down"
        );
        cluster.restart(victim).unwrap();
        read = reg.owner("svc", D).await.unwrap().unwrap();
    }
    assert_eq!(read.entry.owner, "d");
    assert_eq!(read.entry.epoch, 4);
}

#[tokio::test]
async fn a_commit_without_quorum_is_unknown_until_a_pin_settles_it() {
    let mut cluster = EtcdCluster::start(3).unwrap();
    let reg = registry(&cluster, "/t4");
    let read = reg.claim("svc", &entry("a", 1, 0), D).await.unwrap();
    let next = entry("b", 2, 77);

    cluster.kill(1);
    cluster.kill(2);
    let started = Instant::now();
    match reg
        .commit("svc", &read, &next, Duration::from_secs(2))
        .await
    {
        Err(FleetError::Unreachable { .. }) => {}
        other => panic!("a commit without quorum must be unknown, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "bounded by its deadline"
    );
    // Nobody can settle it meanwhile either.
    assert!(reg
        .pin("svc", &read, &next, Duration::from_secs(1))
        .await
        .is_err());

    // Quorum back: the pin decides, and what it says is what the key says.
    cluster.restart(1).unwrap();
    let settled = reg.pin("svc", &read, &next, D).await.unwrap();
    let now = reg.owner("svc", D).await.unwrap().unwrap();
    match &settled {
        CommitOutcome::Committed => assert_eq!(now.entry, next),
        CommitOutcome::NotCommitted { now: said } => {
            assert_eq!(now.entry, read.entry, "pinned as read");
            assert_eq!(said.as_ref().map(|o| &o.entry), Some(&read.entry));
        }
        CommitOutcome::Superseded { now } => panic!("nobody moved it on: {now:?}"),
    }
    // And it stays decided: the late commit can no longer apply.
    cluster.restart(2).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = reg.owner("svc", D).await.unwrap().unwrap();
    assert_eq!(later.entry, now.entry);
    if let CommitOutcome::NotCommitted { .. } = settled {
        let retry = reg.commit("svc", &read, &next, D).await.unwrap();
        assert!(
            matches!(retry, CommitOutcome::NotCommitted { .. }),
            "a pinned commit stays refused"
        );
    }
}
