//! The three ways edgegate reaches Redis (`[redis] mode`), behind one connection type:
//! a single server through the redis crate's `ConnectionManager`, a Redis Cluster through its
//! cluster connection (slots followed, MOVED handled by the crate), and the master of a Sentinel
//! group, re-asked from the Sentinels whenever the current master stops answering as one.
//! None of them connects before the first command, so the gateway starts while Redis is down.

use crate::config::{RedisConfig, RedisMode};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the Sentinels may be asked for the master, at most.
const SENTINEL_ASK_INTERVAL: Duration = Duration::from_millis(250);

/// The configured Redis, ready to hand out connections.
pub enum Backend {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Box<SentinelMaster>),
}

/// One connection handle, cheap to clone, for one command or pipeline.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Backend {
    /// Must be called inside the Tokio runtime that will drive the connections.
    pub fn new(cfg: &RedisConfig) -> Result<Self, String> {
        let connect = Duration::from_millis(cfg.connect_timeout_ms);
        let response = Duration::from_millis(cfg.command_timeout_ms);
        match cfg.mode {
            RedisMode::Single => {
                let client = redis::Client::open(cfg.url.as_str()).map_err(|e| e.to_string())?;
                Ok(Backend::Single(lazy_manager(client, connect, response)?))
            }
            RedisMode::Cluster => {
                let client = ClusterClient::builder(cfg.nodes.iter().map(String::as_str))
                    .connection_timeout(connect)
                    .response_timeout(response)
                    .retries(2)
                    .build()
                    .map_err(|e| e.to_string())?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(connect)
                    .set_response_timeout(response);
                Ok(Backend::Cluster(
                    client.get_pending_async_connection_with_config(config),
                ))
            }
            RedisMode::Sentinel => Ok(Backend::Sentinel(Box::new(SentinelMaster::new(
                cfg, connect, response,
            )?))),
        }
    }

    /// A connection for the next command: the current master's, for Sentinel.
    pub async fn conn(&self) -> RedisResult<Conn> {
        match self {
            Backend::Single(m) => Ok(Conn::Single(m.clone())),
            Backend::Cluster(c) => Ok(Conn::Cluster(c.clone())),
            Backend::Sentinel(s) => s.conn().await.map(Conn::Single),
        }
    }

    /// Tell the backend a command failed; a Sentinel master is then asked for again. `true`
    /// when the master is now suspect, so the command may be worth one more try.
    pub fn failed(&self, err: Option<&RedisError>) -> bool {
        if let Backend::Sentinel(s) = self {
            let suspect = match err {
                // No answer in time, or a lost connection: the master may be gone.
                None => true,
                Some(e) => {
                    e.is_io_error()
                        || e.is_connection_dropped()
                        || e.is_connection_refusal()
                        || e.is_timeout()
                        // A demoted master answers writes with READONLY.
                        || e.code() == Some("READONLY")
                }
            };
            if suspect {
                s.suspect();
            }
            return suspect;
        }
        false
    }

    /// Pipelines must stay on one node in a cluster; there, commands go one by one.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Backend::Cluster(_))
    }
}

fn lazy_manager(
    client: redis::Client,
    connect: Duration,
    response: Duration,
) -> Result<ConnectionManager, String> {
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect))
        .set_response_timeout(Some(response))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, cfg).map_err(|e| e.to_string())
}

/// A client of the Sentinels at `nodes` that names the master of `service`.
fn sentinel_client(cfg: &RedisConfig) -> Result<SentinelClient, String> {
    let mut info = redis::RedisConnectionInfo::default().set_db(cfg.master_db);
    if let Some(pw) = cfg.master_password() {
        info = info.set_password(pw);
    }
    let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
    SentinelClient::build(
        cfg.nodes.iter().map(String::as_str).collect(),
        cfg.service.clone(),
        Some(node),
        SentinelServerType::Master,
    )
    .map_err(|e| e.to_string())
}

/// The master of a Sentinel group: asked of the Sentinels on first use and again after a
/// command fails the way a gone or demoted master makes it fail.
pub struct SentinelMaster {
    sentinels: tokio::sync::Mutex<SentinelClient>,
    state: Mutex<MasterState>,
    connect: Duration,
    response: Duration,
}

struct MasterState {
    /// The master in use and its address.
    current: Option<(ConnectionManager, String)>,
    /// A command failed since the master was last confirmed.
    suspect: bool,
    /// When the Sentinels were last asked.
    asked: Option<Instant>,
}

impl SentinelMaster {
    fn new(cfg: &RedisConfig, connect: Duration, response: Duration) -> Result<Self, String> {
        Ok(Self {
            sentinels: tokio::sync::Mutex::new(sentinel_client(cfg)?),
            state: Mutex::new(MasterState {
                current: None,
                suspect: false,
                asked: None,
            }),
            connect,
            response,
        })
    }

    fn suspect(&self) {
        self.lock().suspect = true;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MasterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection to use now; asks the Sentinels when there is none or it is suspect
    /// (at most every `SENTINEL_ASK_INTERVAL`, so an outage does not flood them).
    async fn conn(&self) -> RedisResult<ConnectionManager> {
        {
            let st = self.lock();
            let may_ask = st
                .asked
                .is_none_or(|t| t.elapsed() >= SENTINEL_ASK_INTERVAL);
            match &st.current {
                Some((m, _)) if !st.suspect || !may_ask => return Ok(m.clone()),
                None if !may_ask => {
                    return Err(RedisError::from((
                        redis::ErrorKind::Io,
                        "no master known yet; the Sentinels were just asked",
                    )));
                }
                _ => {}
            }
        }
        // One asker at a time; the others use what it found.
        let mut sentinels = self.sentinels.lock().await;
        {
            let st = self.lock();
            let fresh = st
                .asked
                .is_some_and(|t| t.elapsed() < SENTINEL_ASK_INTERVAL);
            if let (true, Some((m, _))) = (fresh, &st.current) {
                return Ok(m.clone());
            }
        }
        self.lock().asked = Some(Instant::now());
        let client = sentinels.async_get_client().await;
        drop(sentinels);
        let client = client?;
        let addr = client.get_connection_info().addr().to_string();
        let mut st = self.lock();
        st.suspect = false;
        if let Some((m, at)) = &st.current {
            if *at == addr {
                return Ok(m.clone());
            }
        }
        log::info!("redis sentinel: master is now {addr}");
        let m = lazy_manager(client, self.connect, self.response)
            .map_err(|e| RedisError::from((redis::ErrorKind::Client, "connection manager", e)))?;
        st.current = Some((m.clone(), addr));
        Ok(m)
    }
}

/// Where the invalidation subscriber connects, tried in turn until one subscribes.
pub enum SubscribeTo {
    /// These servers, in order (one server; or a cluster's nodes: PUBLISH reaches every node).
    Nodes(Vec<redis::Client>),
    /// The Sentinel group's master of the moment.
    Sentinel(Box<SentinelClient>),
}

impl SubscribeTo {
    pub fn new(cfg: &RedisConfig) -> Result<Self, String> {
        let open = |u: &str| redis::Client::open(u).map_err(|e| e.to_string());
        match cfg.mode {
            RedisMode::Single => Ok(SubscribeTo::Nodes(vec![open(&cfg.url)?])),
            RedisMode::Cluster => Ok(SubscribeTo::Nodes(
                cfg.nodes
                    .iter()
                    .map(|n| open(n))
                    .collect::<Result<_, _>>()?,
            )),
            RedisMode::Sentinel => Ok(SubscribeTo::Sentinel(Box::new(sentinel_client(cfg)?))),
        }
    }

    /// The client to try for the `attempt`-th time (rotating through cluster nodes).
    pub async fn client(&mut self, attempt: usize) -> RedisResult<redis::Client> {
        match self {
            SubscribeTo::Nodes(nodes) => match nodes.get(attempt % nodes.len().max(1)) {
                Some(c) => Ok(c.clone()),
                None => Err(RedisError::from((
                    redis::ErrorKind::Client,
                    "no Redis node configured",
                ))),
            },
            SubscribeTo::Sentinel(s) => s.async_get_client().await,
        }
    }
}

impl SubscribeTo {
    /// Whether, with Sentinel, the master is now somewhere other than `addr` (never for
    /// plain nodes; a failed question to the Sentinels is not an answer).
    pub async fn moved_from(&mut self, addr: &redis::ConnectionAddr) -> bool {
        match self {
            SubscribeTo::Nodes(_) => false,
            SubscribeTo::Sentinel(s) => match s.async_get_client().await {
                Ok(c) => c.get_connection_info().addr() != addr,
                Err(_) => false,
            },
        }
    }
}
