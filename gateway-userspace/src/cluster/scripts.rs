//! The Lua scripts the store runs in Redis. Each check is one script, so it is atomic (Redis
//! runs a script to the end before anything else) and costs one round trip; each reads the
//! clock with `TIME`, so every gateway judges against the same clock whatever its own says.
//!
//! Scripts are sent by SHA-1 (`EVALSHA`); when Redis answers `NOSCRIPT` (after a restart, a
//! failover or `SCRIPT FLUSH`) the same call is sent once more as `EVAL`, which also caches it.
//!
//! Some scripts build key names from their `KEYS` (a quota's period, the ban expiry index):
//! fine on a single Redis or a primary with replicas, not on a sharded Redis Cluster.

/// A script and its SHA-1, computed once.
pub(crate) struct Script {
    pub source: &'static str,
    pub sha1: String,
}

impl Script {
    pub(crate) fn new(source: &'static str) -> Self {
        let digest =
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, source.as_bytes());
        let sha1 = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Self { source, sha1 }
    }
}

/// GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp) over several
/// limits at once, all or nothing: the request is admitted only if every limit admits it, and
/// only then is every limit charged, so a request refused by one limit costs the others nothing.
///
/// KEYS[i]: the state of limit i (its theoretical arrival time in microseconds).
/// ARGV, three per limit: emission interval in microseconds (period / rate), burst (how many
/// requests a full bucket admits at once), cost of this request.
/// Returns { admitted (0|1), { {allowed, remaining, retry_after_us, reset_after_us}, ... } }.
pub(crate) const RATE: &str = r#"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local admitted = 1
local tats, new_tats, oks = {}, {}, {}
for i = 1, n do
  local interval = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '') or now
  if tat < now then tat = now end
  local new_tat = tat + cost * interval
  tats[i] = tat
  new_tats[i] = new_tat
  oks[i] = (new_tat - now) <= burst * interval
  if not oks[i] then admitted = 0 end
end
local results = {}
for i = 1, n do
  local interval = tonumber(ARGV[3 * i - 2])
  local capacity = tonumber(ARGV[3 * i - 1]) * interval
  -- What is left after this request if it was admitted, else what is left now.
  local level = tats[i]
  if admitted == 1 then level = new_tats[i] end
  local remaining = math.floor((capacity - (level - now)) / interval + 1e-9)
  if remaining < 0 then remaining = 0 end
  local retry_after = 0
  if not oks[i] then retry_after = math.ceil(new_tats[i] - now - capacity) end
  results[i] = { oks[i] and 1 or 0, remaining, retry_after, math.ceil(level - now) }
end
if admitted == 1 then
  for i = 1, n do
    -- The state matters only until the bucket is full again; then it may go.
    local ttl = math.ceil((new_tats[i] - now) / 1000) + 1
    redis.call('SET', KEYS[i], string.format('%.0f', new_tats[i]), 'PX', ttl)
  end
end
return { admitted, results }
"#;

/// Quota counters per period, several at once. Each quota counts calls and bytes in a hash
/// named after its key and the start of the current period (by server time, in UTC), which
/// expires a minute after the period ends.
///
/// KEYS[i]: the base key of quota i.
/// ARGV[1]: 1 to refuse a use that would go over any limit (nothing is then counted
/// anywhere), 0 to count it whatever the outcome (usage measured after the fact).
/// ARGV, then six per quota: period (0 fixed window, 1 hour, 2 day, 3 month), window length in
/// seconds (fixed windows, aligned on the epoch), calls to add, bytes to add, most calls and
/// most bytes (-1: no limit).
/// Returns { admitted, { {calls, bytes, over (0|1), period_start_s, period_end_s}, ... } }.
pub(crate) const QUOTA: &str = r#"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end
local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return y, m
end
local t = redis.call('TIME')
local now = tonumber(t[1])
local refuse = ARGV[1] == '1'
local n = #KEYS
local admitted = 1
local rows = {}
for i = 1, n do
  local base = 1 + 6 * (i - 1)
  local kind = tonumber(ARGV[base + 1])
  local start, finish
  if kind == 1 then
    start = now - now % 3600
    finish = start + 3600
  elseif kind == 2 then
    start = now - now % 86400
    finish = start + 86400
  elseif kind == 3 then
    local y, m = civil_from_days(math.floor(now / 86400))
    start = days_from_civil(y, m, 1) * 86400
    if m == 12 then y, m = y + 1, 1 else m = m + 1 end
    finish = days_from_civil(y, m, 1) * 86400
  else
    local len = tonumber(ARGV[base + 2])
    start = now - now % len
    finish = start + len
  end
  local key = KEYS[i] .. ':' .. string.format('%.0f', start)
  local have = redis.call('HMGET', key, 'calls', 'bytes')
  local calls = tonumber(have[1] or '') or 0
  local bytes = tonumber(have[2] or '') or 0
  local add_calls = tonumber(ARGV[base + 3])
  local add_bytes = tonumber(ARGV[base + 4])
  local max_calls = tonumber(ARGV[base + 5])
  local max_bytes = tonumber(ARGV[base + 6])
  local over = (max_calls >= 0 and calls + add_calls > max_calls)
    or (max_bytes >= 0 and bytes + add_bytes > max_bytes)
  if over then admitted = 0 end
  rows[i] = { key = key, calls = calls, bytes = bytes, add_calls = add_calls,
    add_bytes = add_bytes, over = over, start = start, finish = finish }
end
local results = {}
for i = 1, n do
  local r = rows[i]
  local calls, bytes = r.calls, r.bytes
  if admitted == 1 or not refuse then
    if r.add_calls > 0 then calls = redis.call('HINCRBY', r.key, 'calls', r.add_calls) end
    if r.add_bytes > 0 then bytes = redis.call('HINCRBY', r.key, 'bytes', r.add_bytes) end
    if r.add_calls > 0 or r.add_bytes > 0 then
      redis.call('EXPIREAT', r.key, string.format('%.0f', r.finish + 60))
    end
  end
  results[i] = { calls, bytes, r.over and 1 or 0, r.start, r.finish }
end
if refuse and admitted == 0 then return { 0, results } end
return { admitted, results }
"#;

/// Stores a ban and tells every gateway, atomically: a gateway that lists the bans after this
/// script sees it, and one subscribed before it gets the message.
///
/// KEYS[1]: the hash prefix -> entry; KEYS[2]: the sorted set prefix -> expiry (ms).
/// ARGV: channel, prefix, time to live in ms, the ban's JSON body.
/// The entry is `{"created_ms":N,"expires_ms":N,"ban":<body>}`; the message is
/// `{"op":"ban","entry":<entry>}`. Returns { now_ms, entry }.
pub(crate) const BAN: &str = r#"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Sweep a bounded number of expired bans so the set cannot grow without end.
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)
for _, p in ipairs(old) do
  redis.call('HDEL', KEYS[1], p)
  redis.call('ZREM', KEYS[2], p)
end
local expires = now + tonumber(ARGV[3])
local entry = '{"created_ms":' .. string.format('%.0f', now) .. ',"expires_ms":'
  .. string.format('%.0f', expires) .. ',"ban":' .. ARGV[4] .. '}'
redis.call('HSET', KEYS[1], ARGV[2], entry)
redis.call('ZADD', KEYS[2], string.format('%.0f', expires), ARGV[2])
redis.call('PUBLISH', ARGV[1], '{"op":"ban","entry":' .. entry .. '}')
return { now, entry }
"#;

/// Removes a ban and tells every gateway. KEYS as for [`BAN`]; ARGV: channel, prefix, the
/// message. Returns 1 if there was such a ban.
pub(crate) const UNBAN: &str = r#"
local existed = redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[1], ARGV[3])
return existed
"#;

/// The current bans, after removing the expired ones. KEYS as for [`BAN`].
/// Returns { now_ms, { prefix, entry, prefix, entry, ... } }.
pub(crate) const LIST: &str = r#"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
for _, p in ipairs(old) do
  redis.call('HDEL', KEYS[1], p)
  redis.call('ZREM', KEYS[2], p)
end
return { now, redis.call('HGETALL', KEYS[1]) }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_matches_redis() {
        // `redis-cli SCRIPT LOAD "return 1"` answers this digest.
        assert_eq!(
            Script::new("return 1").sha1,
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        );
    }
}
