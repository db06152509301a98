//! The Redis adapter (ElastiCache in AWS): sessions and fixed-window counters. Sessions are keys
//! that expire with their token; a counter is a hash whose window arithmetic runs in one Lua
//! script, so parallel hits are atomic. Redis expires both by itself: nothing to sweep. An
//! unreachable Redis is [`StoreError::Unavailable`] within a bounded time, and the connection
//! manager reconnects by itself when Redis is back. Key layouts are private to this module.

use std::future::Future;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{AsyncCommands as _, RedisError, Script};
use anyhow::Context as _;
use async_trait::async_trait;
use ifs_domain::{SessionId, Timestamp, UserId};
use secrecy::{ExposeSecret as _, SecretString};

use crate::{Counter, Counters, Session, SessionStore, StoreError, StoreResult, Window};

/// Every key this adapter writes starts with this, so that a shared Redis stays readable.
const PREFIX: &str = "ifs-guide";
/// How long establishing a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one command may take on a connection.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one operation may take in all, reconnecting included: a request never hangs on Redis.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(3);

/// Counts hits in a fixed window, atomically. `KEYS[1]` the counter; `ARGV` now (ms), the
/// window's end if a new one opens (ms), its length from now (ms), the hits to count. The
/// window's end is kept in the hash rather than read from the TTL so that it is exact, and so that
/// it follows the caller's clock.
const HIT: &str = r"
local resets = redis.call('HGET', KEYS[1], 'resets_at')
if resets and tonumber(resets) > tonumber(ARGV[1]) then
  return {redis.call('HINCRBY', KEYS[1], 'hits', ARGV[4]), tonumber(resets)}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'hits', ARGV[4], 'resets_at', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {tonumber(ARGV[4]), tonumber(ARGV[2])}
";

/// Takes or renews a lease, atomically. `KEYS[1]` the leases, a sorted set of holders scored by
/// expiry; `ARGV` now (ms), the lease's expiry (ms), the holder, the most leases, the lease's
/// length (ms). The set expires with its newest lease.
const LEASE: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return 1
end
return 0
";

/// Files a session under its user, atomically: `KEYS[1]` the user's set of session ids; `ARGV`
/// the session id and its lifetime (ms). The set lives as long as its longest-lived session.
const FILE_SESSION: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
";

/// Sessions and counters in Redis.
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    endpoint: String,
    hit: Script,
    lease: Script,
    file_session: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on `url` (`redis://…` or, with TLS as ElastiCache Serverless requires,
    /// `rediss://…`). Connects lazily: start-up does not wait for Redis, and a Redis that is
    /// down at start-up is only unavailable until it comes up.
    pub fn new(url: &SecretString) -> anyhow::Result<Self> {
        let client = ::redis::Client::open(url.expose_secret())
            .context("REDIS_URL is not a redis:// or rediss:// URL")?;
        Self::on(client)
    }

    /// A store on a `rediss://` `url` whose certificate is signed by the authority in `ca_pem`
    /// (PEM) rather than one the public roots vouch for: a self-hosted Redis with a private CA.
    pub fn with_ca(url: &SecretString, ca_pem: Vec<u8>) -> anyhow::Result<Self> {
        let certificates = ::redis::TlsCertificates { client_tls: None, root_cert: Some(ca_pem) };
        let client = ::redis::Client::build_with_tls(url.expose_secret(), certificates)
            .context("REDIS_CA_FILE needs a rediss:// REDIS_URL and a PEM certificate")?;
        Self::on(client)
    }

    fn on(client: ::redis::Client) -> anyhow::Result<Self> {
        let info = client.get_connection_info();
        let scheme = match info.addr() {
            ::redis::ConnectionAddr::TcpTls { .. } => "rediss",
            _ => "redis",
        };
        let endpoint = format!("{scheme}://{}", info.addr());
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .context("setting up the Redis connection")?;
        Ok(Self {
            connection,
            endpoint,
            hit: Script::new(HIT),
            lease: Script::new(LEASE),
            file_session: Script::new(FILE_SESSION),
        })
    }

    /// `redis://host:port` or `rediss://host:port`, for the start-up banner (never the password).
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Runs one operation within [`OPERATION_TIMEOUT`], telling an unreachable Redis apart from
    /// one that answered something we did not expect.
    async fn run<T>(
        &self,
        what: &str,
        operation: impl Future<Output = Result<T, RedisError>>,
    ) -> StoreResult<T> {
        match tokio::time::timeout(OPERATION_TIMEOUT, operation).await {
            Err(_) => Err(StoreError::Unavailable(anyhow::anyhow!("Redis did not answer {what} in time"))),
            Ok(Err(error)) if is_unreachable(&error) => {
                Err(StoreError::Unavailable(anyhow::Error::new(error).context(format!("Redis: {what}"))))
            }
            Ok(Err(error)) => Err(anyhow::Error::new(error).context(format!("Redis: {what}")).into()),
            Ok(Ok(value)) => Ok(value),
        }
    }
}

fn is_unreachable(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_unrecoverable_error()
}

fn session_key(id: SessionId) -> String {
    format!("{PREFIX}:session:{id}")
}

/// The set of a user's session ids. Kept apart from the sessions' own keys, and written by
/// single-key commands only, so that it works on a clustered Redis (ElastiCache Serverless).
fn user_sessions_key(user: UserId) -> String {
    format!("{PREFIX}:user-sessions:{user}")
}

fn counter_key(counter: Counter<'_>) -> String {
    format!("{PREFIX}:counter:{}", counter.key())
}

fn millis(at: Timestamp) -> i64 {
    at.timestamp_millis()
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn create_session(&self, session: &Session) -> StoreResult<()> {
        // The key lives as long as the token: its lifetime, from the session's creation.
        let lifetime = (session.expires_at - session.created_at).num_milliseconds();
        let lifetime =
            u64::try_from(lifetime).ok().filter(|ms| *ms > 0).context("a session that never lives")?;
        let value = serde_json::to_string(session).context("encoding a session")?;
        let mut connection = self.connection.clone();
        self.run(
            "storing a session",
            connection.pset_ex::<_, _, ()>(session_key(session.id), value, lifetime),
        )
        .await?;
        let mut invocation = self.file_session.key(user_sessions_key(session.user_id));
        invocation.arg(session.id.to_string()).arg(lifetime);
        self.run("filing a session under its user", invocation.invoke_async::<i64>(&mut connection)).await?;
        Ok(())
    }

    async fn session(&self, id: SessionId, now: Timestamp) -> StoreResult<Option<Session>> {
        let mut connection = self.connection.clone();
        let value: Option<String> = self.run("reading a session", connection.get(session_key(id))).await?;
        let Some(value) = value else { return Ok(None) };
        let session: Session = serde_json::from_str(&value).context("decoding a stored session")?;
        Ok((session.expires_at > now).then_some(session))
    }

    async fn revoke_session(&self, id: SessionId) -> StoreResult<()> {
        // Its id may stay in its user's set until the set expires: revoking it again is harmless.
        let mut connection = self.connection.clone();
        self.run("revoking a session", connection.del::<_, ()>(session_key(id))).await
    }

    async fn revoke_user_sessions(&self, user: UserId) -> StoreResult<u64> {
        let mut connection = self.connection.clone();
        let ids: Vec<String> =
            self.run("reading a user's sessions", connection.smembers(user_sessions_key(user))).await?;
        let mut revoked = 0;
        for id in &ids {
            let key = format!("{PREFIX}:session:{id}");
            revoked += self.run("revoking a session", connection.del::<_, u64>(key)).await?;
        }
        self.run("forgetting a user's sessions", connection.del::<_, ()>(user_sessions_key(user))).await?;
        Ok(revoked)
    }
}

#[async_trait]
impl Counters for RedisStore {
    async fn add(
        &self,
        counter: Counter<'_>,
        amount: u32,
        now: Timestamp,
        closes_at: Timestamp,
    ) -> StoreResult<Window> {
        let length = (millis(closes_at) - millis(now)).max(1);
        let mut connection = self.connection.clone();
        let mut invocation = self.hit.key(counter_key(counter));
        invocation.arg(millis(now)).arg(millis(closes_at)).arg(length).arg(amount);
        let (hits, resets_at): (u32, i64) =
            self.run("counting a hit", invocation.invoke_async(&mut connection)).await?;
        let resets_at = chrono::DateTime::from_timestamp_millis(resets_at).context("a window's end")?;
        Ok(Window { hits, resets_at })
    }

    async fn peek(&self, counter: Counter<'_>, now: Timestamp) -> StoreResult<Option<Window>> {
        let mut connection = self.connection.clone();
        let mut command = ::redis::cmd("HMGET");
        command.arg(counter_key(counter)).arg("hits").arg("resets_at");
        let (hits, resets_at): (Option<u32>, Option<i64>) =
            self.run("reading a counter", command.query_async(&mut connection)).await?;
        let (Some(hits), Some(resets_at)) = (hits, resets_at) else { return Ok(None) };
        if resets_at <= millis(now) {
            return Ok(None);
        }
        let resets_at = chrono::DateTime::from_timestamp_millis(resets_at).context("a window's end")?;
        Ok(Some(Window { hits, resets_at }))
    }

    async fn reset(&self, counter: Counter<'_>) -> StoreResult<()> {
        let mut connection = self.connection.clone();
        self.run("resetting a counter", connection.del::<_, ()>(counter_key(counter))).await
    }

    async fn lease(
        &self,
        counter: Counter<'_>,
        holder: &str,
        now: Timestamp,
        ttl: Duration,
        max: u32,
    ) -> StoreResult<bool> {
        let length = i64::try_from(ttl.as_millis()).context("lease length")?;
        let mut connection = self.connection.clone();
        let mut invocation = self.lease.key(counter_key(counter));
        invocation.arg(millis(now)).arg(millis(now) + length).arg(holder).arg(max).arg(length);
        let held: i64 = self.run("taking a lease", invocation.invoke_async(&mut connection)).await?;
        Ok(held == 1)
    }

    async fn release(&self, counter: Counter<'_>, holder: &str) -> StoreResult<()> {
        let mut connection = self.connection.clone();
        self.run("releasing a lease", connection.zrem::<_, _, ()>(counter_key(counter), holder)).await
    }
}
