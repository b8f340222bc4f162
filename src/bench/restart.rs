//! The restart probe: stops a server on a kept store (SIGTERM and a
//! graceful shutdown, or SIGKILL while trades are in flight, as a crash),
//! starts `syncpay serve` again on the same folder and port, and times each
//! phase from the spawn: the port accepting TCP connections, the "serving
//! on" announcement (the store opened and recovered), the simulated
//! carrier's relay stream back (it reconnects by itself, with its own
//! backoff), and a shop's first new trade created and SETTLED. The shop
//! starts knocking at the spawn, retrying refused connections every few
//! milliseconds, with one idempotency key so a retried create is one trade.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use syncpay::client::{call_with_timeout, connect, request_with_timeout, with_token};
use syncpay::proto::register_service_client::RegisterServiceClient;
use syncpay::proto::{self, TradeState};
use syncpay::terminal_sim::CarrierSim;
use tokio::task::JoinSet;

use super::child::{Launch, Memory, Server, START_WAIT};
use super::rig::trade_request;
use super::serve_args;

/// Pause between a shop's refused connection attempts.
const RETRY: Duration = Duration::from_millis(5);
/// Longest wait for one CreateTrade or AwaitTrade answer.
const CALL_WAIT: Duration = Duration::from_secs(30);
/// Trades in flight when the server is killed, and for how long before.
const KILL_INFLIGHT: usize = 32;
const KILL_AFTER: Duration = Duration::from_millis(300);

/// How the running server is stopped before the restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: in-flight calls finish, the store is closed.
    Graceful,
    /// SIGKILL with trades in flight: sled recovers its log on open.
    Kill,
}

impl Stop {
    fn name(self) -> &'static str {
        match self {
            Stop::Graceful => "SIGTERM (graceful)",
            Stop::Kill => "SIGKILL (crash) with trades in flight",
        }
    }
}

/// What a probe needs: the server's folder and fixed port, the carrier
/// simulator that outlives the restart, and one shop's credentials, its
/// register and an approving handset's number.
pub struct Probe {
    pub data_dir: PathBuf,
    pub port: u16,
    pub durability: String,
    pub sim: Arc<CarrierSim>,
    pub shop_token: String,
    pub register_id: String,
    pub payer: String,
}

/// Seconds from the spawn to each phase.
#[derive(Debug, Default, Clone, Copy)]
pub struct Phases {
    pub listening: Option<Duration>,
    pub serving: Option<Duration>,
    pub carrier: Option<Duration>,
    pub created: Option<Duration>,
    pub settled: Option<Duration>,
}

pub struct Restarted {
    pub stop: Stop,
    /// SIGTERM to exit, for a graceful stop.
    pub stop_took: Option<Duration>,
    pub phases: Phases,
    pub final_state: String,
    pub memory: Option<Memory>,
}

impl Probe {
    pub fn serve_args(&self) -> Vec<String> {
        serve_args(&self.data_dir, &format!("127.0.0.1:{}", self.port), &self.durability)
    }

    /// Stops `server` as `stop` says, restarts it, and returns the new one
    /// with the figures.
    pub async fn restart(&self, mut server: Server, stop: Stop, n: u64) -> anyhow::Result<(Server, Restarted)> {
        let connections = self.sim.counters().connections;
        let stop_took = match stop {
            Stop::Graceful => {
                let (took, clean) = server.terminate().await?;
                if !clean {
                    bail!("the server did not exit cleanly after SIGTERM");
                }
                Some(took)
            }
            Stop::Kill => {
                let load = self.load(&server.url).await?;
                tokio::time::sleep(KILL_AFTER).await;
                server.kill();
                load.0.store(true, Ordering::Relaxed);
                let mut workers = load.1;
                workers.abort_all();
                while workers.join_next().await.is_some() {}
                None
            }
        };
        eprintln!("bench: restart {n} after {}", stop.name());
        let launch = Launch::spawn(&self.serve_args())?;
        let spawned = launch.spawned_at;
        let since = |at: Instant| at.saturating_duration_since(spawned);
        let url = format!("http://127.0.0.1:{}", self.port);
        let listening = async {
            loop {
                if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                    return since(Instant::now());
                }
                tokio::time::sleep(RETRY).await;
            }
        };
        let carrier = async {
            self.sim.wait_for_counters(START_WAIT, |c| c.connections > connections).await.ok()?;
            Some(since(Instant::now()))
        };
        let key = idempotency_key(n);
        let shop = self.first_trade(&url, &key);
        let (listening, carrier, shop, server) = tokio::join!(listening, carrier, shop, launch.ready());
        let server = server?;
        let (created, settled, final_state) = shop?;
        let phases = Phases {
            listening: Some(listening),
            serving: Some(since(server.announced_at)),
            carrier,
            created: Some(since(created)),
            settled: settled.map(since),
        };
        let memory = server.memory();
        Ok((server, Restarted { stop, stop_took, phases, final_state, memory }))
    }

    /// Creates a trade as soon as the server takes it and waits for its
    /// final state: (created at, settled at if it settled, final state).
    async fn first_trade(&self, url: &str, key: &str) -> anyhow::Result<(Instant, Option<Instant>, String)> {
        let started = Instant::now();
        let mut request = trade_request(&self.register_id, &self.payer, 0, 0);
        request.description = "restart probe".into();
        request.idempotency_key = key.to_owned();
        let (mut client, trade) = loop {
            if started.elapsed() > START_WAIT {
                bail!("no trade created within {START_WAIT:?} of the restart");
            }
            let Ok(channel) = connect(url).await else {
                tokio::time::sleep(RETRY).await;
                continue;
            };
            let mut client = RegisterServiceClient::new(with_token(channel, &self.shop_token)?);
            let call = client.create_trade(request_with_timeout(request.clone(), CALL_WAIT));
            match call_with_timeout(CALL_WAIT, call).await {
                Ok(trade) => break (client, trade),
                Err(_) => tokio::time::sleep(RETRY).await,
            }
        };
        let created = Instant::now();
        loop {
            let wait = proto::AwaitTradeRequest { trade_id: trade.trade_id.clone(), wait_ms: 0 };
            let call = client.await_trade(request_with_timeout(wait, CALL_WAIT + CALL_WAIT));
            let now = call_with_timeout(CALL_WAIT + CALL_WAIT, call)
                .await
                .map_err(|e| anyhow::anyhow!("awaiting the probe trade: {e:?}"))?;
            let state = TradeState::try_from(now.state).unwrap_or(TradeState::Unspecified);
            if matches!(state, TradeState::Pending | TradeState::Offered) {
                if created.elapsed() > START_WAIT {
                    bail!("the probe trade is still {} after {START_WAIT:?}", state.as_str_name());
                }
                continue;
            }
            let settled = (state == TradeState::Settled).then(Instant::now);
            return Ok((created, settled, state.as_str_name().to_owned()));
        }
    }

    /// Trades kept in flight on the probe's shop until the flag is set
    /// (for a kill under load); their outcomes do not matter.
    async fn load(&self, url: &str) -> anyhow::Result<(Arc<AtomicBool>, JoinSet<()>)> {
        let channel = connect(url).await.context("connecting the load before the kill")?;
        let client = RegisterServiceClient::new(with_token(channel, &self.shop_token)?);
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = JoinSet::new();
        for _ in 0..KILL_INFLIGHT {
            let (mut client, stop) = (client.clone(), stop.clone());
            let request = trade_request(&self.register_id, &self.payer, 0, 0);
            workers.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(trade) = client.create_trade(request.clone()).await else { return };
                    let wait = proto::AwaitTradeRequest { trade_id: trade.into_inner().trade_id, wait_ms: 0 };
                    if client.await_trade(wait).await.is_err() {
                        return;
                    }
                }
            });
        }
        Ok((stop, workers))
    }
}

/// A key no earlier probe on the same store used.
fn idempotency_key(n: u64) -> String {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    format!("restart-probe-{}-{ms}-{n}", std::process::id())
}

impl Restarted {
    pub fn to_json(&self) -> Value {
        let s = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        json!({
            "stop": self.stop.name(),
            "stop_s": s(self.stop_took),
            "spawn_to_listening_s": s(self.phases.listening),
            "spawn_to_serving_s": s(self.phases.serving),
            "spawn_to_carrier_connected_s": s(self.phases.carrier),
            "spawn_to_trade_created_s": s(self.phases.created),
            "spawn_to_first_settled_s": s(self.phases.settled),
            "final_state": self.final_state,
            "memory_after": self.memory.map(Memory::to_json),
        })
    }

    pub fn print(&self) {
        let s = |d: Option<Duration>| d.map_or_else(|| "-".to_owned(), |d| format!("{:.3} s", d.as_secs_f64()));
        println!("  after {}:", self.stop.name());
        if let Some(took) = self.stop_took {
            println!("    stop took                 {:.3} s", took.as_secs_f64());
        }
        println!("    spawn → port listening    {}", s(self.phases.listening));
        println!("    spawn → serving           {}", s(self.phases.serving));
        println!("    spawn → carrier connected {}", s(self.phases.carrier));
        println!("    spawn → trade created     {}", s(self.phases.created));
        println!("    spawn → first SETTLED     {}  ({})", s(self.phases.settled), self.final_state);
        if let Some(m) = self.memory {
            println!("    server memory then        {m}");
        }
    }
}
