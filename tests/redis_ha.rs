//! Many gateway instances on a Redis that is more than one server: a local Redis Cluster
//! (3 masters, 3 replicas) and a Sentinel group (master, replica, 3 Sentinels), all real
//! `redis-server` processes of this test. Two gateways with long cache TTLs show that an
//! invalidation published on one node reaches both; two with no cache and no stale window
//! carry traffic through a failover (the master killed with SIGKILL) and show errors only
//! while it lasts, each a 503 JSON with Retry-After.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

/// Workspace ids whose keys spread over the cluster's slots.
fn ids() -> Vec<String> {
    "0123456789ABCDEF"
        .chars()
        .take(12)
        .map(|c| format!("01HZX3M9Q4T8V6W2Y5B7C9D1E{c}"))
        .collect()
}

const LONG_CACHE: &str =
    "[cache]\nttl_ms = 600000\nnegative_ttl_ms = 600000\n[activity]\ninterval_secs = 1\n";
/// Every request reads Redis and nothing is served stale: failover errors are visible.
const NO_CACHE: &str = "[cache]\nttl_ms = 1\nnegative_ttl_ms = 1\nstale_ms = 0\n";

/// A private directory for node files, removed after the nodes stopped.
fn scratch(name: &str) -> Scratch {
    Scratch::new(&format!("edgegate-ha-{name}"))
}

fn node_url(r: &Redis) -> String {
    format!("redis://127.0.0.1:{}", r.port)
}

fn query<T: redis::FromRedisValue>(r: &Redis, args: &[&str]) -> redis::RedisResult<T> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut r.client().get_connection()?)
}

fn subscribers(r: &Redis) -> i64 {
    query::<Vec<redis::Value>>(r, &["PUBSUB", "NUMSUB", "edgegate:invalidate"])
        .ok()
        .and_then(|v| match v.get(1) {
            Some(redis::Value::Int(n)) => Some(*n),
            _ => None,
        })
        .unwrap_or(0)
}

/// Wait (bounded) until `f` holds.
fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Which upstream served a request through `gw` for workspace `id` (its name), or the status.
async fn served_by(gw: &Gateway, id: &str) -> Result<String, Resp> {
    let r = gw.get(&gw.ws_host(id), "/ha", &[]).await;
    if r.status == 200 {
        Ok(r.json()["upstream"].as_str().unwrap_or("?").to_string())
    } else {
        Err(r)
    }
}

/// Requests `ids` round-robin through `gws` for at most `limit` after calling `fault` at
/// `fault_after`; stops once it has seen errors and then `quiet` of successes. Returns
/// (time since the fault, status) for every request, and asserts every refusal is a 503 JSON
/// with Retry-After.
async fn traffic_through(
    gws: &[&Gateway],
    ids: &[String],
    fault_after: Duration,
    fault: impl FnOnce(),
    limit: Duration,
    quiet: Duration,
) -> Vec<(f64, u16)> {
    let start = Instant::now();
    let mut fault = Some(fault);
    let mut faulted_at: Option<Instant> = None;
    let mut log = Vec::new();
    let mut last_error: Option<Instant> = None;
    let mut n = 0usize;
    while start.elapsed() < limit {
        if faulted_at.is_none() && start.elapsed() >= fault_after {
            if let Some(f) = fault.take() {
                f();
            }
            faulted_at = Some(Instant::now());
        }
        let gw = gws[n % gws.len()];
        let id = &ids[n % ids.len()];
        n += 1;
        let since = faulted_at.map_or(-1.0, |t| t.elapsed().as_secs_f64());
        match served_by(gw, id).await {
            Ok(name) => {
                assert_eq!(name, "upstream-a", "workspace {id} went elsewhere");
                log.push((since, 200));
            }
            Err(r) => {
                assert_eq!(r.status, 503, "a failover refusal is a 503: {r:?}");
                assert_eq!(r.error_code(), "store_unavailable", "{r:?}");
                assert!(r.header("retry-after").is_some(), "{r:?}");
                last_error = Some(Instant::now());
                log.push((since, 503));
            }
        }
        if let (Some(_), Some(e)) = (faulted_at, last_error) {
            if e.elapsed() >= quiet {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    log
}

/// Errors only inside one window after the fault, and a clean run after it.
fn assert_errors_only_in_failover_window(log: &[(f64, u16)], most: f64) -> (usize, f64, f64) {
    assert!(
        log.iter().filter(|(t, _)| *t < 0.0).all(|(_, s)| *s == 200),
        "errors before the fault"
    );
    let errors: Vec<f64> = log
        .iter()
        .filter(|(_, s)| *s != 200)
        .map(|(t, _)| *t)
        .collect();
    let first = errors.first().copied().unwrap_or(0.0);
    let last = errors.last().copied().unwrap_or(0.0);
    assert!(
        last <= most,
        "errors went on {last:.1} s after the fault (limit {most} s)"
    );
    let after: Vec<_> = log.iter().filter(|(t, _)| *t > last).collect();
    assert!(
        after.len() >= 20 && after.iter().all(|(_, s)| *s == 200),
        "no clean run after the failover window: {} requests after it",
        after.len()
    );
    (errors.len(), first, last)
}

// ---------------------------------------------------------------------------------------
// Redis Cluster

struct Cluster {
    nodes: Vec<Redis>,
    /// Last: the nodes stop before their files go.
    _dir: Scratch,
}

impl Cluster {
    /// Six nodes, `redis-cli --cluster create` with one replica per master.
    fn start() -> Cluster {
        let dir = scratch("cluster");
        let nodes: Vec<Redis> = (0..6)
            .map(|i| {
                let file = dir.join(format!("nodes-{i}.conf"));
                Redis::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &file.display().to_string(),
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-require-full-coverage",
                    "no",
                ])
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli is installed with redis-server");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = Cluster { nodes, _dir: dir };
        wait_until("the cluster to be ok", Duration::from_secs(30), || {
            c.nodes.iter().all(|n| {
                query::<String>(n, &["CLUSTER", "INFO"])
                    .is_ok_and(|i| i.contains("cluster_state:ok"))
            }) && c.replicas_in_sync() == 3
        });
        c
    }

    /// Replicas attached to a master and in sync (as the masters report them).
    fn replicas_in_sync(&self) -> usize {
        self.nodes
            .iter()
            .filter_map(|n| query::<String>(n, &["INFO", "replication"]).ok())
            .filter(|i| i.contains("role:master"))
            .map(|i| i.matches("state=online").count())
            .sum()
    }

    /// The masters' ports.
    fn masters(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| {
                query::<String>(n, &["INFO", "replication"])
                    .is_ok_and(|i| i.contains("role:master"))
            })
            .map(|n| n.port)
            .collect()
    }

    fn node(&self, port: u16) -> &Redis {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
    }

    fn client(&self) -> redis::cluster::ClusterConnection {
        let urls: Vec<String> = self.nodes.iter().map(node_url).collect();
        redis::cluster::ClusterClient::new(urls)
            .expect("cluster client")
            .get_connection()
            .expect("cluster connection")
    }

    fn hset(&self, key: &str, fields: &[(&str, &str)]) {
        let mut c = self.client();
        let mut cmd = redis::cmd("HSET");
        cmd.arg(key);
        for (f, v) in fields {
            cmd.arg(*f).arg(*v);
        }
        let _: () = cmd.query(&mut c).expect("HSET");
    }

    fn workspace(&self, id: &str, backend: &str) {
        self.hset(
            &format!("workspace:{id}"),
            &[
                ("backend", backend),
                ("owner", OWNER),
                ("status", "running"),
            ],
        );
    }

    /// The master that owns `key`'s slot.
    fn owner_of(&self, key: &str) -> &Redis {
        // Asked of any node still up.
        let (slot, slots) = self
            .nodes
            .iter()
            .find_map(|n| {
                let slot: i64 = query(n, &["CLUSTER", "KEYSLOT", key]).ok()?;
                let slots: Vec<redis::Value> = query(n, &["CLUSTER", "SLOTS"]).ok()?;
                Some((slot, slots))
            })
            .expect("a node answers");
        for range in slots {
            let redis::Value::Array(r) = range else {
                continue;
            };
            let (Some(redis::Value::Int(lo)), Some(redis::Value::Int(hi))) = (r.first(), r.get(1))
            else {
                continue;
            };
            if (*lo..=*hi).contains(&slot) {
                if let Some(redis::Value::Array(m)) = r.get(2) {
                    if let Some(redis::Value::Int(port)) = m.get(1) {
                        if let Some(n) = self.nodes.iter().find(|n| i64::from(n.port) == *port) {
                            return n;
                        }
                    }
                }
            }
        }
        panic!("no master owns the slot of {key}");
    }
}

fn cluster_section(nodes: &[&Redis]) -> String {
    let list: Vec<String> = nodes.iter().map(|n| format!("{:?}", node_url(n))).collect();
    format!("mode = \"cluster\"\nnodes = [{}]", list.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_invalidation_reaches_every_instance_and_failover_errors_stay_in_its_window() {
    let cluster = Cluster::start();
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    let (a, b, app) = (
        upstream("upstream-a").await,
        upstream("upstream-b").await,
        upstream("app").await,
    );
    let ids = ids();
    for id in &ids {
        cluster.workspace(id, &a.addr.to_string());
    }
    cluster.hset(&format!("session:{OWNER_SESSION}"), &[("user", OWNER)]);
    // The keys really are spread: every master owns some.
    let mut per_master: BTreeMap<u16, usize> = BTreeMap::new();
    for id in &ids {
        *per_master
            .entry(cluster.owner_of(&format!("workspace:{id}")).port)
            .or_default() += 1;
    }
    assert_eq!(per_master.len(), 3, "keys on every master: {per_master:?}");

    // Two long-cache instances that subscribe to different nodes (the first one listed).
    let (m0, m1, m2) = (
        cluster.node(masters[0]),
        cluster.node(masters[1]),
        cluster.node(masters[2]),
    );
    let start = |nodes: &[&Redis], cache: &str| {
        Gateway::start(&config_text_redis(
            free_port(),
            &cluster_section(nodes),
            app.addr,
            cache,
        ))
    };
    let l1 = start(&[m0, m1, m2], LONG_CACHE);
    let l2 = start(&[m1, m2, m0], LONG_CACHE);
    wait_until("subscribers on two nodes", Duration::from_secs(10), || {
        subscribers(m0) >= 1 && subscribers(m1) >= 1
    });
    for gw in [&l1, &l2] {
        for id in &ids {
            assert_eq!(served_by(gw, id).await.ok().as_deref(), Some("upstream-a"));
        }
    }

    // Move two workspaces to b; announce only one, on the third master (neither instance
    // listens there: the message crosses the cluster bus).
    let (moved, silent) = (&ids[0], &ids[1]);
    cluster.workspace(moved, &b.addr.to_string());
    cluster.workspace(silent, &b.addr.to_string());
    let seen_by_b = b.count();
    let _: i64 = query(
        m2,
        &[
            "PUBLISH",
            "edgegate:invalidate",
            &format!("workspace:{moved}"),
        ],
    )
    .expect("PUBLISH");
    for gw in [&l1, &l2] {
        assert!(
            eventually(Duration::from_secs(5), || async {
                served_by(gw, moved).await.ok().as_deref() == Some("upstream-b")
            })
            .await,
            "the invalidation did not reach the instance on {}",
            gw.addr
        );
        // The unannounced one stays cached (so the switch above came from the message).
        assert_eq!(
            served_by(gw, silent).await.ok().as_deref(),
            Some("upstream-a")
        );
    }
    assert!(b.count() >= seen_by_b + 2, "upstream b saw both instances");
    // The activity writer reaches records on every master (one script per key in a cluster).
    let mut conn = cluster.client();
    let marked = |c: &mut redis::cluster::ClusterConnection| {
        ids.iter()
            .filter(|id| {
                redis::cmd("HGET")
                    .arg(format!("workspace:{id}"))
                    .arg("last_activity")
                    .query::<Option<u64>>(c)
                    .ok()
                    .flatten()
                    .is_some()
            })
            .count()
    };
    wait_until(
        "activity marks on every record",
        Duration::from_secs(10),
        || marked(&mut conn) == ids.len(),
    );
    cluster.workspace(moved, &a.addr.to_string());
    cluster.workspace(silent, &a.addr.to_string());

    // Failover: kill the master of one workspace's slot; the no-cache pair keeps asking.
    let s1 = start(&[m0, m1, m2], NO_CACHE);
    let s2 = start(&[m2, m1, m0], NO_CACHE);
    let victim_port = cluster.owner_of(&format!("workspace:{}", ids[2])).port;
    let seen_before = a.count();
    let mut cluster = cluster;
    let log = {
        let killed = cluster
            .nodes
            .iter_mut()
            .find(|n| n.port == victim_port)
            .expect("victim is a node");
        traffic_through(
            &[&s1, &s2],
            &ids,
            Duration::from_secs(1),
            || killed.stop(),
            Duration::from_secs(40),
            Duration::from_secs(3),
        )
        .await
    };
    let (errors, first, last) = assert_errors_only_in_failover_window(&log, 20.0);
    let ok = log.iter().filter(|(_, s)| *s == 200).count();
    eprintln!(
        "cluster failover: {} requests, {errors} refused between {first:.2} s and {last:.2} s \
         after the kill",
        log.len()
    );
    assert!(errors > 0, "killing a master cost nothing: was it used?");
    assert!(a.count() >= seen_before + ok, "upstream saw every success");
    // A former replica now serves the killed master's slot.
    let new_owner = cluster.owner_of(&format!("workspace:{}", ids[2])).port;
    assert!(
        new_owner != victim_port && !masters.contains(&new_owner),
        "slot owner after the failover: {new_owner}"
    );
}

// ---------------------------------------------------------------------------------------
// Redis Sentinel

const SERVICE: &str = "edgegate-master";

struct SentinelGroup {
    master: Redis,
    replica: Redis,
    sentinels: Vec<Redis>,
    /// Last: the Sentinels stop before their files go.
    _dir: Scratch,
}

impl SentinelGroup {
    fn start() -> SentinelGroup {
        let dir = scratch("sentinel");
        let master = Redis::start();
        let replica = Redis::start_with(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
        let sentinels = (0..3)
            .map(|i| {
                let file = dir.join(format!("sentinel-{i}.conf"));
                std::fs::write(
                    &file,
                    format!(
                        "sentinel monitor {SERVICE} 127.0.0.1 {} 2\n\
                         sentinel down-after-milliseconds {SERVICE} 1000\n\
                         sentinel failover-timeout {SERVICE} 10000\n",
                        master.port
                    ),
                )
                .expect("sentinel config");
                Redis::start_with(&[&file.display().to_string(), "--sentinel"])
            })
            .collect();
        let g = SentinelGroup {
            master,
            replica,
            sentinels,
            _dir: dir,
        };
        // Each Sentinel must know the replica and the other two before a failover can happen.
        wait_until(
            "the sentinels to see each other",
            Duration::from_secs(30),
            || {
                g.sentinels.iter().all(|s| {
                    let others = query::<Vec<redis::Value>>(s, &["SENTINEL", "SENTINELS", SERVICE])
                        .map_or(0, |v| v.len());
                    let replicas =
                        query::<Vec<redis::Value>>(s, &["SENTINEL", "REPLICAS", SERVICE])
                            .map_or(0, |v| v.len());
                    others == 2 && replicas == 1
                })
            },
        );
        g
    }

    fn section(&self) -> String {
        let list: Vec<String> = self
            .sentinels
            .iter()
            .map(|n| format!("{:?}", node_url(n)))
            .collect();
        format!(
            "mode = \"sentinel\"\nservice = \"{SERVICE}\"\nnodes = [{}]",
            list.join(", ")
        )
    }

    /// The master's port as the Sentinels name it.
    fn named_master(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            query::<Vec<String>>(s, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE])
                .ok()
                .and_then(|v| v.get(1).and_then(|p| p.parse().ok()))
        })
    }
}

/// Write on `r` and wait until its replica has it.
fn replicated_workspace(r: &Redis, id: &str, backend: &str) {
    r.workspace(id, backend);
    let _: i64 = query(r, &["WAIT", "1", "2000"]).expect("WAIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_instances_follow_the_master_through_a_failover() {
    let mut group = SentinelGroup::start();
    let (a, b, app) = (
        upstream("upstream-a").await,
        upstream("upstream-b").await,
        upstream("app").await,
    );
    let ids = ids();
    for id in &ids {
        group.master.workspace(id, &a.addr.to_string());
    }
    group.master.sessions();
    let _: i64 = query(&group.master, &["WAIT", "1", "2000"]).expect("WAIT");

    let start = |cache: &str| {
        Gateway::start(&config_text_redis(
            free_port(),
            &group.section(),
            app.addr,
            cache,
        ))
    };
    let (l1, l2, s1, s2) = (
        start(LONG_CACHE),
        start(LONG_CACHE),
        start(NO_CACHE),
        start(NO_CACHE),
    );
    wait_until(
        "four subscribers on the master",
        Duration::from_secs(10),
        || subscribers(&group.master) >= 4,
    );
    for gw in [&l1, &l2] {
        for id in &ids {
            assert_eq!(served_by(gw, id).await.ok().as_deref(), Some("upstream-a"));
        }
    }
    // An invalidation published on the master reaches both long-cache instances.
    let moved = &ids[0];
    replicated_workspace(&group.master, moved, &b.addr.to_string());
    group
        .master
        .publish("edgegate:invalidate", &format!("workspace:{moved}"));
    for gw in [&l1, &l2] {
        assert!(
            eventually(Duration::from_secs(5), || async {
                served_by(gw, moved).await.ok().as_deref() == Some("upstream-b")
            })
            .await,
            "invalidation did not reach {}",
            gw.addr
        );
    }
    replicated_workspace(&group.master, moved, &a.addr.to_string());
    group
        .master
        .publish("edgegate:invalidate", &format!("workspace:{moved}"));

    // Kill the master; the Sentinels promote the replica.
    let old = group.master.port;
    let seen_before = a.count();
    let log = {
        let master = &mut group.master;
        traffic_through(
            &[&s1, &s2],
            &ids,
            Duration::from_secs(1),
            || master.stop(),
            Duration::from_secs(40),
            Duration::from_secs(3),
        )
        .await
    };
    let (errors, first, last) = assert_errors_only_in_failover_window(&log, 20.0);
    let ok = log.iter().filter(|(_, s)| *s == 200).count();
    eprintln!(
        "sentinel failover: {} requests, {errors} refused between {first:.2} s and {last:.2} s \
         after the kill",
        log.len()
    );
    assert!(errors > 0, "killing the master cost nothing: was it used?");
    assert!(a.count() >= seen_before + ok, "upstream saw every success");
    assert_eq!(group.named_master(), Some(group.replica.port));
    assert_ne!(group.replica.port, old);

    // The subscriptions followed the master: an invalidation published on the new master
    // reaches both long-cache instances.
    let new_master = &group.replica;
    wait_until(
        "subscribers on the new master",
        Duration::from_secs(10),
        || subscribers(new_master) >= 4,
    );
    for gw in [&l1, &l2] {
        // Resubscribing cleared the cache; read the record once so it is cached again.
        assert_eq!(
            served_by(gw, moved).await.ok().as_deref(),
            Some("upstream-a")
        );
    }
    new_master.workspace(moved, &b.addr.to_string());
    new_master.publish("edgegate:invalidate", &format!("workspace:{moved}"));
    for gw in [&l1, &l2] {
        assert!(
            eventually(Duration::from_secs(5), || async {
                served_by(gw, moved).await.ok().as_deref() == Some("upstream-b")
            })
            .await,
            "after the failover the invalidation did not reach {}",
            gw.addr
        );
    }
}
