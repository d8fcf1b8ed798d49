//! The background task that keeps leases filled from Redis, hands unused
//! ones back, and watches the connection.
//!
//! It is the only code that talks to Redis; the request path only reads
//! the mode flag and sends kicks. While Redis is unreachable the mode is
//! `Fallback` (requests decide on local limits of `limit / replicas`), kicks
//! are dropped, and the task reconnects with exponential backoff. Spending
//! done meanwhile is still subtracted from the leases' balances, so after
//! reconnecting the first grant records it in Redis as debt and the window
//! stays accurate.

use super::lease::{GiveBack, Lease, TakeRequest};
use super::{Mode, Shared};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, Script};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const TIMEOUT: Duration = Duration::from_secs(1);
/// How often unused grants are returned, debts recorded and the link pinged.
const SWEEP: Duration = Duration::from_millis(250);

/// Take a grant: record the caller's debt, then grant up to `want` but
/// never more than what is left, and, when little is left, no more than a
/// fair slice (`left / (2 × replicas)`, at least `min_grant`) so the last
/// units are not stranded in one replica's lease.
/// KEYS[1] window counter; ARGV limit, want, min_grant, debt, replicas, ttl_ms.
/// Returns {grant, count after}.
const TAKE_LUA: &str = r"
local used = tonumber(redis.call('GET', KEYS[1]) or '0') + tonumber(ARGV[4])
local avail = tonumber(ARGV[1]) - used
if avail < 0 then avail = 0 end
local fair = math.floor(avail / (2 * tonumber(ARGV[5])))
if fair < tonumber(ARGV[3]) then fair = tonumber(ARGV[3]) end
local grant = tonumber(ARGV[2])
if grant > fair then grant = fair end
if grant > avail then grant = avail end
local add = tonumber(ARGV[4]) + grant
if add > 0 then
  redis.call('INCRBY', KEYS[1], add)
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
end
return {grant, used + grant}
";

/// Hand back unused units. KEYS[1] window counter; ARGV amount.
const GIVE_BACK_LUA: &str = r"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local n = tonumber(ARGV[1])
if n > used then n = used end
if n > 0 then redis.call('DECRBY', KEYS[1], n) end
return used - n
";

struct Scripts {
    take: Script,
    give_back: Script,
}

/// Run until the limiter is dropped.
pub(crate) async fn run(shared: Weak<Shared>, mut rx: UnboundedReceiver<Arc<Lease>>) {
    let scripts = Arc::new(Scripts {
        take: Script::new(TAKE_LUA),
        give_back: Script::new(GIVE_BACK_LUA),
    });
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some(sh) = shared.upgrade() else { return };
        let Some(url) = sh.redis_url() else {
            // Redis is not (or no longer) configured: nothing to do but
            // drop kicks until a reload configures it.
            sh.set_mode(Mode::LocalOnly);
            drop(sh);
            if idle(&mut rx, Duration::from_secs(1)).await.is_none() {
                return;
            }
            continue;
        };
        match connect(&url).await {
            Ok(conn) => {
                backoff = MIN_BACKOFF;
                sh.set_mode(Mode::Global);
                let weak = Arc::downgrade(&sh);
                drop(sh);
                match serve(weak.clone(), conn, &scripts, &url, &mut rx).await {
                    Ended::Shutdown => return,
                    Ended::Reconfigured => continue,
                    Ended::Failed(e) => {
                        let Some(sh) = weak.upgrade() else { return };
                        sh.metrics.redis_errors.inc();
                        sh.set_mode_fallback(&e.to_string());
                    }
                }
            }
            Err(e) => {
                sh.metrics.redis_errors.inc();
                sh.set_mode_fallback(&e.to_string());
                drop(sh);
                if idle(&mut rx, backoff).await.is_none() {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

enum Ended {
    Shutdown,
    Reconfigured,
    Failed(RedisError),
}

async fn connect(url: &str) -> Result<MultiplexedConnection, RedisError> {
    let client = redis::Client::open(url)?;
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await?;
    redis::cmd("PING").query_async::<()>(&mut conn).await?;
    Ok(conn)
}

/// Drop kicks for `d` (Redis unusable). `None` when the limiter is gone.
async fn idle(rx: &mut UnboundedReceiver<Arc<Lease>>, d: Duration) -> Option<()> {
    let deadline = tokio::time::sleep(d);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => return Some(()),
            kick = rx.recv() => kick?.clear_pending(),
        }
    }
}

async fn serve(
    shared: Weak<Shared>,
    conn: MultiplexedConnection,
    scripts: &Arc<Scripts>,
    url: &str,
    rx: &mut UnboundedReceiver<Arc<Lease>>,
) -> Ended {
    let mut ops: JoinSet<Result<(), RedisError>> = JoinSet::new();
    let mut tick = tokio::time::interval(SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let failed = loop {
        tokio::select! {
            kick = rx.recv() => {
                let Some(lease) = kick else { return Ended::Shutdown };
                let Some(sh) = shared.upgrade() else { return Ended::Shutdown };
                ops.spawn(take(sh, conn.clone(), Arc::clone(scripts), lease));
            }
            _ = tick.tick() => {
                let Some(sh) = shared.upgrade() else { return Ended::Shutdown };
                if sh.redis_url().as_deref() != Some(url) {
                    ops.abort_all();
                    sh.clear_all_pending();
                    return Ended::Reconfigured;
                }
                sweep(&sh, &conn, scripts, &mut ops);
            }
            Some(done) = ops.join_next() => {
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break e,
                    // A panicked or aborted op: its lease is unblocked below
                    // on failure; here nothing else depends on it.
                    Err(_) => {}
                }
            }
        }
    };
    ops.abort_all();
    if let Some(sh) = shared.upgrade() {
        sh.clear_all_pending();
    }
    Ended::Failed(failed)
}

/// Return idle balances, record debts left from an outage, and ping.
fn sweep(
    sh: &Arc<Shared>,
    conn: &MultiplexedConnection,
    scripts: &Arc<Scripts>,
    ops: &mut JoinSet<Result<(), RedisError>>,
) {
    let (unix, mono) = (sh.clock.unix(), sh.clock.mono());
    let mut any = false;
    for lease in sh.leases() {
        if let Some(gb) = lease.give_back(unix, mono) {
            any = true;
            ops.spawn(give_back(
                Arc::clone(sh),
                conn.clone(),
                Arc::clone(scripts),
                lease.key.clone(),
                gb,
            ));
        } else if lease.in_debt(unix) {
            any = true;
            lease.kick_if_low(mono, &sh.tx);
        }
    }
    if !any {
        // Keep the link honest while idle, so the fallback gauge is right
        // even when no request needs Redis.
        let mut conn = conn.clone();
        let sh = Arc::clone(sh);
        ops.spawn(async move {
            let t = tokio::time::Instant::now();
            let r = redis::cmd("PING").query_async::<()>(&mut conn).await;
            sh.metrics.redis_latency.observe(t.elapsed().as_secs_f64());
            r
        });
    }
}

async fn take(
    sh: Arc<Shared>,
    mut conn: MultiplexedConnection,
    scripts: Arc<Scripts>,
    lease: Arc<Lease>,
) -> Result<(), RedisError> {
    let Some(req): Option<TakeRequest> = lease.take_request(sh.clock.unix(), sh.clock.mono())
    else {
        lease.clear_pending();
        return Ok(());
    };
    let (prefix, replicas) = sh.redis_prefix_and_replicas();
    let key = format!("{prefix}{}:{}", lease.key, req.window);
    let t = tokio::time::Instant::now();
    let res: Result<(u64, u64), RedisError> = scripts
        .take
        .key(key)
        .arg(req.limit)
        .arg(req.want)
        .arg(req.min_grant)
        .arg(req.debt)
        .arg(replicas)
        .arg(u64::try_from(req.ttl.as_millis()).unwrap_or(u64::MAX))
        .invoke_async(&mut conn)
        .await;
    sh.metrics.redis_latency.observe(t.elapsed().as_secs_f64());
    match res {
        Ok((grant, used)) => {
            lease.apply_take(sh.clock.unix(), &req, grant, used);
            Ok(())
        }
        Err(e) => {
            lease.clear_pending();
            Err(e)
        }
    }
}

async fn give_back(
    sh: Arc<Shared>,
    mut conn: MultiplexedConnection,
    scripts: Arc<Scripts>,
    key: Box<str>,
    gb: GiveBack,
) -> Result<(), RedisError> {
    let (prefix, _) = sh.redis_prefix_and_replicas();
    let t = tokio::time::Instant::now();
    let res: Result<u64, RedisError> = scripts
        .give_back
        .key(format!("{prefix}{key}:{}", gb.window))
        .arg(gb.amount)
        .invoke_async(&mut conn)
        .await;
    sh.metrics.redis_latency.observe(t.elapsed().as_secs_f64());
    res.map(drop)
}
