"""Lua scripts: each runs atomically on the server and touches the keys of one hash slot only (but one).

Scripts that walk a scope's index build entry key names from its members (``entries .. quote(member)``)
rather than receiving them in KEYS: the names are not known before the script runs, and they share the
declared keys' hash tag, so Redis Cluster accepts them. ``quote`` must match ``layout.segment`` byte for
byte (Python's ``quote(s, safe="")``: unreserved characters kept, every other byte as uppercase ``%XX``).
Times are integer microseconds since the epoch; ``now`` is the caller's clock, as the port asks.
"""

from __future__ import annotations

PRELUDE = """
local function hex(c)
  return string.format('%%%02X', string.byte(c))
end

local function quote(s)
  return (string.gsub(s, '[^A-Za-z0-9_%.~%-]', hex))
end

-- A field another writer left in the layout (it is documented, and may be written by hand) is read as
-- ``layout.time_field`` and ``layout.version_field`` read it, never as a script error: a time is a whole
-- number of microseconds (else none: a malformed expiry never expires), a version a whole number from 1
-- to 2^53 - 1, which a double holds exactly (else 1).
local function whole(s)
  local digits = s and string.match(s, '^%-?(%d+)$')
  if digits and #digits <= 18 then return tonumber(s) end
  return nil
end

local function version_of(n)
  local x = whole(n)
  if x and x >= 1 and x <= 9007199254740991 then return x end
  return 1
end

local function live(expires, now)
  local e = whole(expires)
  return e == nil or e > now
end

-- Remove every entry of one scope and its indexes; return how many entries existed.
local function clear_scope(entries, index, expiry)
  local removed = 0
  local members = redis.call('ZRANGE', index, 0, -1)
  local batch = {}
  for _, m in ipairs(members) do
    batch[#batch + 1] = entries .. quote(m)
    if #batch == 512 then
      removed = removed + redis.call('DEL', unpack(batch))
      batch = {}
    end
  end
  if #batch > 0 then removed = removed + redis.call('DEL', unpack(batch)) end
  redis.call('DEL', index, expiry)
  return removed
end

-- Announce a change of ``member`` (empty: the whole scope) to watchers, with the scope's index key and
-- the member, so every writer (a server, a worker writing directly) announces (``CHANGED``).
local function changed(index, member)
  local prefix = string.match(index, '^(.*):[ta]i:{')
  redis.call('PUBLISH', prefix .. ':changes', index .. '\\n' .. member)
end

-- An emptied scope leaves its task's map-index set.
local function forget_map_index(index, maps, map_index)
  if maps and redis.call('EXISTS', index) == 0 then redis.call('SREM', maps, map_index) end
end
"""

# How PRELUDE announces: classic pub/sub on one channel per prefix, which every process SUBSCRIBEs to once
# (a single Redis server; ``changes.py``).
CHANGED = """local function changed(index, member)
  local prefix = string.match(index, '^(.*):[ta]i:{')
  redis.call('PUBLISH', prefix .. ':changes', index .. '\\n' .. member)
end
"""

# How a Redis Cluster's scripts announce: sharded pub/sub on a channel per task or asset that carries the
# scope's hash tag, ``<prefix>:changes:{dag:run:task}`` (``changes.channel_of``), so the hint stays on the
# shard that holds the scope (Redis refuses an SPUBLISH from a script to a channel of another slot).
SHARDED_CHANGED = """local function changed(index, member)
  local prefix, tag = string.match(index, '^(.*):[ta]i:({[^}]*})')
  redis.call('SPUBLISH', prefix .. ':changes:' .. tag, index .. '\\n' .. member)
end
"""


def for_cluster(script: str) -> str:
    """``script`` as it runs on a Redis Cluster: its announcements sharded (a script that announces
    nothing is returned as it is)."""
    return script.replace(CHANGED, SHARDED_CHANGED)


# KEYS: entries (any number, any scopes); ARGV: none.
# Returns the fields v, u, e, n of each entry in KEYS order, flat (nil for a missing entry's fields).
# The one script that spans scopes, hence slots: it serves the read batches of ``batching.py``, where one
# command and one reply cost a third of a pipeline of HMGETs in redis-py (docs/benchmarks.md, session 7).
# Under Redis Cluster a batch would have to be split by slot first.
READ_ENTRIES = """
local out = {}
for _, key in ipairs(KEYS) do
  local fields = redis.call('HMGET', key, 'v', 'u', 'e', 'n')
  for i = 1, 4 do out[#out + 1] = fields[i] end
end
return out
"""

# One put. k: entry, index, expiry, [maps]
# a: member, value, now, expires_at or '', pexpireat ms or '', if_version or '', map_index
# Returns {ok (1/0), version, expiry index created (1/0)}; on a mismatch ok = 0 and nothing changed.
PUT_FUNCTION = """
local function put(k, a)
  local now = tonumber(a[3])
  local current = redis.call('HMGET', k[1], 'e', 'n', 'v')
  local version = 0
  if current[2] and current[3] and live(current[1], now) then version = version_of(current[2]) end
  if a[6] ~= '' and tonumber(a[6]) ~= version then return {0, version, 0} end
  version = version + 1
  redis.call('HSET', k[1], 'v', a[2], 'u', a[3], 'e', a[4], 'n', version)
  local created = 0
  if a[4] == '' then
    redis.call('PERSIST', k[1])
    redis.call('ZREM', k[3], a[1])
  else
    created = 1 - redis.call('EXISTS', k[3])
    redis.call('ZADD', k[3], a[4], a[1])
    redis.call('PEXPIREAT', k[1], a[5])
  end
  redis.call('ZADD', k[2], 0, a[1])
  if k[4] then redis.call('SADD', k[4], a[7]) end
  changed(k[2], a[1])
  return {1, version, created}
end
"""

# KEYS and ARGV: one put's k and a (above).
PUT = PRELUDE + PUT_FUNCTION + "return put(KEYS, ARGV)\n"

# KEYS: the puts' keys, one put's after another's; ARGV: for each put, how many keys it has, then its a.
# Returns one reply per put, in order: PUT's, or {-1, message, 0} for a put Redis refused (WRONGTYPE, OOM),
# which fails that put alone, as its own script call would have. Like READ_ENTRIES it spans slots: it
# serves the write batches of ``batching.py`` (under Redis Cluster a batch would be split by slot first).
PUT_MANY = (
    PRELUDE
    + PUT_FUNCTION
    + """
local out = {}
local k, a = 1, 1
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  local keys, args = {}, {}
  for i = 1, n do keys[i] = KEYS[k + i - 1] end
  for i = 1, 7 do args[i] = ARGV[a + i] end
  local ok, reply = pcall(put, keys, args)
  if ok then
    out[#out + 1] = reply
  else
    out[#out + 1] = {-1, type(reply) == 'table' and reply.err or tostring(reply), 0}
  end
  k, a = k + n, a + 8
end
return out
"""
)

# KEYS: entry, index, expiry, [maps]; ARGV: member, now, map_index, if_version or ''.
# Returns 1 if a live entry was removed, 0 if none was, -1 if the live version is not ``if_version`` (0 is
# "absent": then nothing is removed, not even an expired leftover); on -1 nothing changed.
DELETE = (
    PRELUDE
    + """
local current = redis.call('HMGET', KEYS[1], 'e', 'n', 'v')
local removed = 0
if current[2] and current[3] and live(current[1], tonumber(ARGV[2])) then removed = 1 end
if ARGV[4] ~= '' then
  local version = 0
  if removed == 1 then version = version_of(current[2]) end
  if tonumber(ARGV[4]) ~= version then return -1 end
  if version == 0 then return 0 end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
forget_map_index(KEYS[2], KEYS[4], ARGV[3])
if removed == 1 then changed(KEYS[2], ARGV[1]) end
return removed
"""
)

# KEYS: index, expiry, [maps]; ARGV: entries prefix, map_index. Returns how many entries existed.
CLEAR = (
    PRELUDE
    + """
local removed = clear_scope(ARGV[1], KEYS[1], KEYS[2])
if KEYS[3] then redis.call('SREM', KEYS[3], ARGV[2]) end
if removed > 0 then changed(KEYS[1], '') end
return removed
"""
)

# KEYS: maps; ARGV: entries, index and expiry prefixes of the task (a map index completes each).
# Reaches every map index through the task's map-index set, so never KEYS or SCAN.
CLEAR_TASK = (
    PRELUDE
    + """
local removed = 0
for _, mi in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local cleared = clear_scope(ARGV[1] .. mi .. ':', ARGV[2] .. mi, ARGV[3] .. mi)
  if cleared > 0 then changed(ARGV[2] .. mi, '') end
  removed = removed + cleared
end
redis.call('DEL', KEYS[1])
return removed
"""
)

# KEYS: index, expiry, [maps]; ARGV: entries prefix, now, offset, limit, map_index.
# Returns {total, key1, v1, u1, e1, n1, key2, ...}. First drops index members whose entry Redis has
# already expired by its own clock, so the total counts only entries that exist and are live at ``now``.
LIST = (
    PRELUDE
    + """
local now = tonumber(ARGV[2])
local offset = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local t = redis.call('TIME')
local server_now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', server_now)) do
  if redis.call('EXISTS', ARGV[1] .. quote(m)) == 0 then
    redis.call('ZREM', KEYS[1], m)
    redis.call('ZREM', KEYS[2], m)
  end
end
forget_map_index(KEYS[1], KEYS[3], ARGV[5])
local expired = redis.call('ZCOUNT', KEYS[2], '-inf', now)
local total = redis.call('ZCARD', KEYS[1]) - expired
local page = {}
if limit > 0 and expired == 0 then
  -- Every score in the index is 0, so rank order is key order.
  page = redis.call('ZRANGE', KEYS[1], offset, offset + limit - 1)
elseif limit > 0 then
  local rank, skipped = 0, 0
  while #page < limit do
    local chunk = redis.call('ZRANGE', KEYS[1], rank, rank + 255)
    if #chunk == 0 then break end
    rank = rank + #chunk
    for _, m in ipairs(chunk) do
      local score = redis.call('ZSCORE', KEYS[2], m)
      if #page < limit and (not score or tonumber(score) > now) then
        if skipped < offset then skipped = skipped + 1 else page[#page + 1] = m end
      end
    end
  end
end
local out = {total}
for _, m in ipairs(page) do
  local h = redis.call('HMGET', ARGV[1] .. quote(m), 'v', 'u', 'e', 'n')
  if h[1] and h[4] then
    out[#out + 1] = m
    out[#out + 1] = h[1]
    out[#out + 1] = h[2]
    out[#out + 1] = h[3]
    out[#out + 1] = h[4]
  end
end
return out
"""
)

# KEYS: index; ARGV: entries prefix, now, min, max, limit, keys_only (1/0), max_bytes.
# ``min`` and ``max`` are ZRANGEBYLEX bounds ("[lo" or "(after"; "(end" or "+"): the index's scores are all
# 0, so its lexical order is the keys' byte order. Walks the range in chunks and keeps live entries (by
# ``now``; one Redis has already dropped reads as absent) until ``limit`` + 1 are found, or until the values
# kept reach ``max_bytes`` (the port's ``scan``), which ends the page with more to come.
# Returns {more (1/0), key1, v1 ('' with keys_only), u1, e1, n1, key2, ...} for up to ``limit`` entries.
SCAN = (
    PRELUDE
    + """
local now = tonumber(ARGV[2])
local min, max = ARGV[3], ARGV[4]
local limit = tonumber(ARGV[5])
local keys_only = ARGV[6] == '1'
local max_bytes = tonumber(ARGV[7])
local out = {0}
local found = 0
local held = 0
while true do
  local chunk = redis.call('ZRANGEBYLEX', KEYS[1], min, max, 'LIMIT', 0, limit + 1)
  if #chunk == 0 then break end
  for _, m in ipairs(chunk) do
    local h
    if keys_only then
      h = redis.call('HMGET', ARGV[1] .. quote(m), 'u', 'e', 'n')
      -- An entry without its value is none, keys only or not (it was listed here and nowhere else).
      table.insert(h, 1, redis.call('HEXISTS', ARGV[1] .. quote(m), 'v') == 1 and '' or false)
    else
      h = redis.call('HMGET', ARGV[1] .. quote(m), 'v', 'u', 'e', 'n')
    end
    if h[1] and h[4] and live(h[3], now) then
      if found == limit or held >= max_bytes then
        out[1] = 1
        return out
      end
      found = found + 1
      if not keys_only then held = held + #h[1] end
      out[#out + 1] = m
      out[#out + 1] = h[1]
      out[#out + 1] = h[2]
      out[#out + 1] = h[3]
      out[#out + 1] = h[4]
    end
  end
  min = '(' .. chunk[#chunk]
end
return out
"""
)

# KEYS: index, expiry, [maps]; ARGV: entries prefix, now, limit, map_index.
# Deletes up to ``limit`` entries expired at ``now`` (Redis may have dropped them already; their index
# members are what is left). Returns {deleted, whether the expiry index still exists}.
PURGE = (
    PRELUDE
    + """
local deleted = 0
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])) do
  redis.call('DEL', ARGV[1] .. quote(m))
  redis.call('ZREM', KEYS[1], m)
  redis.call('ZREM', KEYS[2], m)
  deleted = deleted + 1
end
forget_map_index(KEYS[1], KEYS[3], ARGV[4])
return {deleted, redis.call('EXISTS', KEYS[2])}
"""
)

# A batch of one scope, all or nothing. KEYS: index, expiry, [maps]; ARGV: entries prefix, now, map_index,
# then six per operation: kind ('g', 'p' or 'd'), member, if_version or '', value, expires_at or '',
# pexpireat ms or '' (the last three '' but for a put).
# The operations run in order over a view of the scope (each entry read once, then the batch's own
# writes), checking each precondition; at the first that fails it returns {0, index, live version} having
# written nothing. Then each changed entry is written once, as PUT and DELETE write it, and announced as
# they announce (PUBLISH, see ``changed``). Returns
# {1, expiry index created (1/0), results}: a get's {v, u, e, n} ({} when absent), a put's version, a
# delete's 1/0 (whether a live entry went). One script, so no other command runs in between.
BATCH = (
    PRELUDE
    + """
local now = tonumber(ARGV[2])
local view, writes, order, announce = {}, {}, {}, {}
local function current(m)
  if view[m] == nil then
    local h = redis.call('HMGET', ARGV[1] .. quote(m), 'v', 'u', 'e', 'n')
    if h[1] and h[4] then view[m] = h else view[m] = false end
  end
  local h = view[m]
  if h and live(h[3], now) then return h end
  return false
end
local function write(m, e)
  if writes[m] == nil then order[#order + 1] = m end
  view[m] = e
  writes[m] = e
end
local results = {}
for b = 4, #ARGV, 6 do
  local kind, m, want = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  local h = current(m)
  local version = 0
  if h then version = version_of(h[4]) end
  if want ~= '' and tonumber(want) ~= version then return {0, (b - 4) / 6, version} end
  if kind == 'g' then
    if h then results[#results + 1] = {h[1], h[2], h[3], h[4]} else results[#results + 1] = {} end
  elseif kind == 'p' then
    write(m, {ARGV[b + 3], ARGV[2], ARGV[b + 4], tostring(version + 1), ARGV[b + 5]})
    announce[m] = true
    results[#results + 1] = version + 1
  else
    -- "Must be absent" only checks; any other delete removes the entry, even an expired leftover.
    if want ~= '0' then write(m, false) end
    if h then
      announce[m] = true
      results[#results + 1] = 1
    else
      results[#results + 1] = 0
    end
  end
end
local created = 0
for _, m in ipairs(order) do
  local key, e = ARGV[1] .. quote(m), writes[m]
  if e then
    redis.call('HSET', key, 'v', e[1], 'u', e[2], 'e', e[3], 'n', e[4])
    if e[3] == '' then
      redis.call('PERSIST', key)
      redis.call('ZREM', KEYS[2], m)
    else
      if redis.call('EXISTS', KEYS[2]) == 0 then created = 1 end
      redis.call('ZADD', KEYS[2], e[3], m)
      redis.call('PEXPIREAT', key, e[5])
    end
    redis.call('ZADD', KEYS[1], 0, m)
    if KEYS[3] then redis.call('SADD', KEYS[3], ARGV[3]) end
  else
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[1], m)
    redis.call('ZREM', KEYS[2], m)
  end
  -- As PUT and DELETE announce: every put, and a delete that removed a live entry.
  if announce[m] then changed(KEYS[1], m) end
end
forget_map_index(KEYS[1], KEYS[3], ARGV[3])
return {1, created, results}
"""
)
