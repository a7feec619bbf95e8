//! The Redis backend: stores shared by the gateways of a site. Keys are namespaced
//! `outpost:<app>:<label>:<key>` (app names are `[a-z0-9-]` and labels `[A-Za-z0-9_]`, so the
//! prefix is unambiguous and free of `SCAN` pattern characters); each app's usage is a hash
//! `outpost:<app>:usage` (`keys`, `bytes`) that the write scripts keep, so the quota holds
//! across every node sharing the server.
//!
//! Durability is the server's (its `appendonly`/`save` settings): a write has returned once
//! Redis acknowledged it. One multiplexed connection per URL, connected on first use and again
//! after a failure; an operation that cannot reach the server fails (the guest sees `other`)
//! within the timeouts below rather than holding its request.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Backend, KvError, KvFuture, Quota};
use crate::store::kv::Usage;

/// How long one connection attempt and one command may take: a site's Redis is on the local
/// network, so anything slower is an outage, and the guest's own timeout is seconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// KEYS: data key, usage hash. ARGV: value, key length, max keys, max bytes.
/// Returns {status (0 ok, 1 too many keys, 2 too many bytes), keys, bytes}.
static SET: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local existed = redis.call('EXISTS', KEYS[1])
local klen = tonumber(ARGV[2])
local old = 0
if existed == 1 then old = redis.call('STRLEN', KEYS[1]) + klen end
local keys = tonumber(redis.call('HGET', KEYS[2], 'keys') or '0')
local bytes = tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0')
local nkeys = keys + 1 - existed
local nbytes = bytes - old + string.len(ARGV[1]) + klen
if nkeys > keys and nkeys > tonumber(ARGV[3]) then return {1, keys, bytes} end
if nbytes > bytes and nbytes > tonumber(ARGV[4]) then return {2, keys, bytes} end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'keys', nkeys, 'bytes', nbytes)
return {0, nkeys, nbytes}
",
    )
});

/// KEYS: data key, usage hash. ARGV: key length. Returns {0, keys, bytes}.
static DELETE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local keys = tonumber(redis.call('HGET', KEYS[2], 'keys') or '0')
local bytes = tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0')
if redis.call('EXISTS', KEYS[1]) == 1 then
  local old = redis.call('STRLEN', KEYS[1]) + tonumber(ARGV[1])
  redis.call('DEL', KEYS[1])
  keys = keys - 1
  bytes = bytes - old
  redis.call('HSET', KEYS[2], 'keys', keys, 'bytes', bytes)
end
return {0, keys, bytes}
",
    )
});

/// KEYS: data key, usage hash. ARGV: delta (at most i64::MAX), key length, max keys.
/// Returns {status (0 ok, 1 too many keys, 3 not a number or overflow), keys, bytes, value}.
static INCREMENT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local existed = redis.call('EXISTS', KEYS[1])
local klen = tonumber(ARGV[2])
local old = 0
if existed == 1 then old = redis.call('STRLEN', KEYS[1]) + klen end
local keys = tonumber(redis.call('HGET', KEYS[2], 'keys') or '0')
local bytes = tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0')
if existed == 0 and keys + 1 > tonumber(ARGV[3]) then return {1, keys, bytes, '0'} end
local ok = pcall(redis.call, 'INCRBY', KEYS[1], ARGV[1])
if not ok then return {3, keys, bytes, '0'} end
local value = redis.call('GET', KEYS[1])
keys = keys + 1 - existed
bytes = bytes - old + string.len(value) + klen
redis.call('HSET', KEYS[2], 'keys', keys, 'bytes', bytes)
return {0, keys, bytes, value}
",
    )
});

/// See the module docs.
pub struct RedisBackend {
    conn: ConnectionManager,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.write_str("RedisBackend")
    }
}

fn redis_err(e: redis::RedisError) -> KvError {
    KvError::Backend(format!("redis: {e}"))
}

fn data_key(app: &str, store: &str, key: &str) -> String {
    format!("outpost:{app}:{store}:{key}")
}

fn usage_key(app: &str) -> String {
    format!("outpost:{app}:usage")
}

fn usage(keys: i64, bytes: i64) -> Usage {
    Usage {
        keys: u64::try_from(keys).unwrap_or(0),
        bytes: u64::try_from(bytes).unwrap_or(0),
    }
}

impl RedisBackend {
    /// A backend for `url` (checked by the config parser). Connects on first use; must be
    /// called inside the node's async runtime, which then drives the connection.
    pub fn new(url: &str) -> Result<Self, KvError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(KvError::Backend(
                "the Redis backend needs an async runtime".into(),
            ));
        }
        let client = redis::Client::open(url).map_err(redis_err)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(redis_err)?;
        Ok(Self { conn })
    }
}

impl Backend for RedisBackend {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn get<'a>(
        &'a self,
        app: &'a str,
        store: &'a str,
        key: &'a str,
    ) -> KvFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            redis::cmd("GET")
                .arg(data_key(app, store, key))
                .query_async(&mut c)
                .await
                .map_err(redis_err)
        })
    }

    fn set<'a>(
        &'a self,
        app: &'a str,
        store: &'a str,
        key: &'a str,
        value: &'a [u8],
        quota: Quota,
    ) -> KvFuture<'a, Usage> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            let (status, keys, bytes): (i64, i64, i64) = SET
                .key(data_key(app, store, key))
                .key(usage_key(app))
                .arg(value)
                .arg(key.len())
                .arg(quota.max_keys)
                .arg(quota.max_bytes)
                .invoke_async(&mut c)
                .await
                .map_err(redis_err)?;
            match status {
                0 => Ok(usage(keys, bytes)),
                1 => Err(quota.keys_exceeded()),
                _ => Err(quota.bytes_exceeded()),
            }
        })
    }

    fn delete<'a>(&'a self, app: &'a str, store: &'a str, key: &'a str) -> KvFuture<'a, Usage> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            let (_, keys, bytes): (i64, i64, i64) = DELETE
                .key(data_key(app, store, key))
                .key(usage_key(app))
                .arg(key.len())
                .invoke_async(&mut c)
                .await
                .map_err(redis_err)?;
            Ok(usage(keys, bytes))
        })
    }

    fn exists<'a>(&'a self, app: &'a str, store: &'a str, key: &'a str) -> KvFuture<'a, bool> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            redis::cmd("EXISTS")
                .arg(data_key(app, store, key))
                .query_async(&mut c)
                .await
                .map_err(redis_err)
        })
    }

    fn keys<'a>(&'a self, app: &'a str, store: &'a str) -> KvFuture<'a, Vec<String>> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            let prefix = data_key(app, store, "");
            let pattern = format!("{prefix}*");
            let mut out = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut c)
                    .await
                    .map_err(redis_err)?;
                out.extend(
                    batch
                        .into_iter()
                        .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned)),
                );
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            // SCAN may return a key twice.
            out.sort();
            out.dedup();
            Ok(out)
        })
    }

    fn increment<'a>(
        &'a self,
        app: &'a str,
        store: &'a str,
        key: &'a str,
        delta: u64,
        quota: Quota,
    ) -> KvFuture<'a, (u64, Usage)> {
        Box::pin(async move {
            // Redis counts in i64.
            let delta = i64::try_from(delta)
                .map_err(|_| KvError::Invalid("the increment overflows".into()))?;
            let mut c = self.conn.clone();
            let (status, keys, bytes, value): (i64, i64, i64, String) = INCREMENT
                .key(data_key(app, store, key))
                .key(usage_key(app))
                .arg(delta)
                .arg(key.len())
                .arg(quota.max_keys)
                .invoke_async(&mut c)
                .await
                .map_err(redis_err)?;
            match status {
                0 => {
                    let n = value.parse::<u64>().map_err(|_| {
                        KvError::Invalid("the value is not a decimal number".into())
                    })?;
                    Ok((n, usage(keys, bytes)))
                }
                1 => Err(quota.keys_exceeded()),
                _ => Err(KvError::Invalid(
                    "the value is not a decimal number, or the increment overflows".into(),
                )),
            }
        })
    }
}
