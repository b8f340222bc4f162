//! Cross-node wake-ups by LISTEN/NOTIFY: after a commit a node announces
//! what changed (a shop's events, a trade's final state, a carrier's
//! outbox) on channel [`CHANNEL`], and every node listening wakes its
//! `WatchTrades` streams, `AwaitTrade` calls and relay streams at once
//! instead of at their next poll. An announcement only says when to read
//! again; readers still poll (`store.poll_ms`), so a lost one costs
//! latency, never correctness.
//!
//! Sending ([`run_notifier`]): commits queue notes without waiting (a full
//! queue drops them); one task per node sends what has queued as few
//! notifications as fit, each in its own transaction on its own connection
//! with `synchronous_commit = off`, never inside a money transaction:
//! PostgreSQL holds a database-wide lock from a notifying transaction's
//! pre-commit through its commit (`PreCommit_Notify`, to keep the queue
//! in commit order), which inside the money transactions would hold it
//! through their WAL flush and standby wait and serialise every commit.
//!
//! Receiving ([`run_listener`]): a dedicated connection `LISTEN`s (never a
//! pooled one, which would be handed to a transaction); it reconnects with
//! the node's URL (so after a failover it finds the new primary: `LISTEN`
//! needs a read-write server) and announces [`RemoteChange::Resync`] each
//! time it (re)connects, since notifications sent meanwhile are lost. A
//! connection that went silent is found by a periodic `SELECT 1`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch, Notify};
use tokio_postgres::{AsyncMessage, NoTls};

use super::{pool, PgError};
use crate::domain::{CarrierId, ShopId, TradeId};
use crate::store::RemoteChange;

/// The channel every node notifies and listens on (one database, one
/// service).
pub const CHANNEL: &str = "syncpay";
/// Notes queued for the notifier at most; beyond, commits drop theirs
/// (the readers' polls catch up).
pub const NOTE_QUEUE: usize = 4096;
/// Bytes of one notification's payload at most: PostgreSQL refuses 8000
/// and more.
const MAX_PAYLOAD: usize = 7_000;
/// Changes buffered for slow subscribers (a relay stream busy pushing); a
/// subscriber that falls further behind reads everything again.
pub const CHANGE_BUFFER: usize = 1024;
/// Pause before reconnecting the listener or the notifier after a failure,
/// doubled up to [`MAX_BACKOFF`]: short, so wake-ups resume soon after a
/// failover; bounded, so a database that is down is not hammered.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often the listener checks that its connection still answers, and
/// how long it waits for the answer: a primary that vanished without a
/// reset (a network partition) would otherwise leave it listening to
/// nothing until TCP keepalive gives up, hours later.
const LISTENER_CHECK: Duration = Duration::from_secs(10);
const LISTENER_CHECK_WAIT: Duration = Duration::from_secs(5);
/// Notifications received but not yet handled, at most; the connection's
/// reader waits when it is full.
const RECEIVED_QUEUE: usize = 256;

/// What a commit announces.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Note {
    /// The shop's event head moved.
    Shop(ShopId),
    TradeFinal(TradeId),
    Outbox(CarrierId),
}

impl Note {
    fn line(&self) -> String {
        match self {
            Note::Shop(s) => format!("s {}", s.as_str()),
            Note::TradeFinal(t) => format!("t {t}"),
            Note::Outbox(c) => format!("o {}", c.as_str()),
        }
    }

    fn parse(line: &str) -> Option<Note> {
        let (kind, value) = line.split_once(' ')?;
        match kind {
            "s" => ShopId::parse(value).ok().map(Note::Shop),
            "t" => TradeId::parse(value).ok().map(Note::TradeFinal),
            "o" => CarrierId::parse(value).ok().map(Note::Outbox),
            _ => None,
        }
    }
}

/// The payloads for `notes`, each a first line naming the sending node
/// (so it ignores its own) and then one note per line, each under
/// [`MAX_PAYLOAD`].
fn payloads(node: &str, notes: &BTreeSet<Note>) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for note in notes {
        let line = note.line();
        if !current.is_empty() && current.len() + 1 + line.len() > MAX_PAYLOAD {
            out.push(std::mem::take(&mut current));
        }
        if current.is_empty() {
            current.push_str(node);
        }
        current.push('\n');
        current.push_str(&line);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// A payload's notes, unless this node sent it.
fn parse_payload<'a>(me: &str, payload: &'a str) -> Option<impl Iterator<Item = Note> + 'a> {
    let mut lines = payload.lines();
    let from = lines.next()?;
    (from != me).then(|| lines.filter_map(Note::parse))
}

/// A random name for this node's notifications.
pub fn node_name() -> String {
    // On failure any name will do: it only filters out our own echoes.
    TradeId::generate().map_or_else(|_| format!("pid-{}", std::process::id()), |t| t.to_string())
}

type Connection = tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>;

async fn connect(url: &str) -> Result<(tokio_postgres::Client, Connection), PgError> {
    let mut pg = pool::parse_url(url).map_err(PgError::Config)?;
    pool::configure(&mut pg);
    Ok(pg.connect(NoTls).await?)
}

/// Sends the queued notes until the queue closes (the store is gone).
pub async fn run_notifier(url: String, node: String, mut notes: mpsc::Receiver<Note>) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut backoff = FIRST_BACKOFF;
    while let Some(first) = notes.recv().await {
        let mut batch = BTreeSet::from([first]);
        while let Ok(more) = notes.try_recv() {
            batch.insert(more);
        }
        if client.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            client = match connect(&url).await {
                Ok((c, conn)) => {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    // Announcements are not money: not worth a WAL flush
                    // (or a standby's wait) each.
                    match c.batch_execute("SET synchronous_commit = off").await {
                        Ok(()) => Some(c),
                        Err(e) => {
                            tracing::debug!(error = %e, "notifier: setting up its connection");
                            None
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "notifier: connecting");
                    None
                }
            };
        }
        let Some(c) = &client else {
            // These notes are lost; the readers' polls cover them.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        };
        backoff = FIRST_BACKOFF;
        for payload in payloads(&node, &batch) {
            if let Err(e) = c.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload]).await {
                tracing::debug!(error = %e, "notifier: sending");
                client = None;
                break;
            }
        }
    }
}

/// What the listener needs of its store.
pub struct Listening {
    pub url: String,
    pub node: String,
    /// Where remote changes go (the engine's subscribers).
    pub changes: broadcast::Sender<RemoteChange>,
    /// Wakes the store's read of the event heads of the shops it follows.
    pub heads: Arc<Notify>,
    /// Turns true once the store is gone.
    pub closed: watch::Receiver<bool>,
}

/// Listens until the store is gone, reconnecting after any failure.
pub async fn run_listener(l: Listening) {
    let mut closed = l.closed.clone();
    let mut backoff = FIRST_BACKOFF;
    loop {
        if *closed.borrow() {
            return;
        }
        match listen_once(&l, &mut closed).await {
            Ok(Ended::Closed) => return,
            Ok(Ended::Lost) => backoff = FIRST_BACKOFF,
            Err(e) => {
                tracing::debug!(error = %e, "listener: connecting");
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = closed.changed() => return,
        }
    }
}

enum Ended {
    /// The store is gone.
    Closed,
    /// The connection was lost after it listened.
    Lost,
}

async fn listen_once(l: &Listening, closed: &mut watch::Receiver<bool>) -> Result<Ended, PgError> {
    let (client, mut conn) = connect(&l.url).await?;
    let (tx, mut received) = mpsc::channel::<String>(RECEIVED_QUEUE);
    // The connection's reader: notifications out, everything else dropped;
    // it ends with the connection.
    let reader = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(n)) if n.channel() == CHANNEL => {
                    if tx.send(n.payload().to_owned()).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let listened = client.batch_execute(&format!("LISTEN {CHANNEL}")).await;
    if let Err(e) = listened {
        reader.abort();
        return Err(e.into());
    }
    tracing::info!("listening for other nodes' commits");
    // Whatever was announced while this node was not listening is lost.
    l.heads.notify_one();
    let _ = l.changes.send(RemoteChange::Resync);
    let mut check = tokio::time::interval(LISTENER_CHECK);
    check.tick().await;
    let ended = loop {
        tokio::select! {
            payload = received.recv() => {
                let Some(payload) = payload else { break Ended::Lost };
                let Some(notes) = parse_payload(&l.node, &payload) else { continue };
                let mut heads = false;
                for note in notes {
                    match note {
                        Note::Shop(_) => heads = true,
                        Note::TradeFinal(t) => { let _ = l.changes.send(RemoteChange::TradeFinal(t)); }
                        Note::Outbox(c) => { let _ = l.changes.send(RemoteChange::Outbox(c)); }
                    }
                }
                if heads {
                    l.heads.notify_one();
                }
            }
            _ = check.tick() => {
                let alive = tokio::time::timeout(LISTENER_CHECK_WAIT, client.simple_query("SELECT 1")).await;
                if !matches!(alive, Ok(Ok(_))) {
                    tracing::info!("listener: the connection stopped answering; reconnecting");
                    break Ended::Lost;
                }
            }
            _ = closed.changed() => break Ended::Closed,
        }
    };
    reader.abort();
    Ok(ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shop(s: &str) -> Note {
        Note::Shop(ShopId::parse(s).expect("shop"))
    }

    #[test]
    fn notes_round_trip_and_own_payloads_are_ignored() {
        let trade = TradeId::generate().expect("id");
        let notes = BTreeSet::from([
            shop("acme"),
            Note::TradeFinal(trade),
            Note::Outbox(CarrierId::parse("docomo").expect("carrier")),
        ]);
        let sent = payloads("node-a", &notes);
        assert_eq!(sent.len(), 1);
        let got: BTreeSet<Note> = parse_payload("node-b", &sent[0]).expect("from another node").collect();
        assert_eq!(got, notes);
        assert!(parse_payload("node-a", &sent[0]).is_none(), "a node ignores its own notifications");
        assert_eq!(parse_payload("node-b", "node-a\nx nonsense\ns").map(Iterator::count), Some(0));
    }

    #[test]
    fn many_notes_are_split_under_the_payload_limit() {
        let notes: BTreeSet<Note> = (0..2_000).map(|i| shop(&format!("shop-{i}"))).collect();
        let sent = payloads("n", &notes);
        assert!(sent.len() > 1);
        assert!(sent.iter().all(|p| p.len() <= MAX_PAYLOAD && p.starts_with("n\n")));
        let got: BTreeSet<Note> = sent.iter().flat_map(|p| parse_payload("m", p).expect("other")).collect();
        assert_eq!(got, notes);
    }
}
