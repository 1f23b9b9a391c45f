"""The Lua scripts of `RedisSemaphore`: every change to a semaphore is one of them, atomic.

Keys of a semaphore named N (one hash slot, ``{N}``):

* ``holders`` -- sorted set: a permit's token -> when its lease expires (server ms);
* ``limit`` -- the number of permits;
* ``queue`` -- sorted set: a waiting token -> its arrival number (FIFO across clients);
* ``clients`` -- sorted set: a waiting process's id -> until when it is known alive (its
  waiters are skipped once that has passed);
* ``seq`` -- the arrival counter;
* ``gone`` -- sorted set: tokens given up or released -> until when that is remembered, so
  an acquire or release that reaches the server late (its caller timed out) does nothing;
* ``wake:<client>`` (not declared: one per waiting process) -- the tokens granted to that
  process, which it pops with ``BLPOP``.

A token is ``<client>-<lease ms>-<random>``. A release grants the freed permits to the first
live waiters at once (so nobody polls) and pushes their tokens to their process's wake list;
a granted permit's lease is at most `CONFIRM_MS` until the waiter's process renews it.
Every script extends the time to live of the keys it writes (and of ``limit``) to ``keep``
ms when less than half of it is left: state that nobody touches for longer than the longest
lease (plus a grace period) can no longer matter and expires.

ARGV of every script: limit, wake-list prefix, keep ms (0: leave the times to live, as most
heartbeats do), alive ms, then its own arguments.
Every reply is an array whose first item is a status; ``{-1, L}`` means the name exists with
limit L.
"""

from __future__ import annotations

from ._redis_link import Script

#: Milliseconds a permit granted to a waiter is held for it until its process confirms it
#: (renews it to its full lease): a waiter that died after its last heartbeat costs no more.
CONFIRM_MS = 5_000

_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local stored = redis.call('GET', KEYS[2])
if not stored then
    redis.call('SET', KEYS[2], ARGV[1])
elseif tonumber(stored) ~= limit then
    return {-1, tonumber(stored)}
end
local function purge()
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
end
local function lease_of(token)
    return tonumber(string.match(token, '^[^-]+-(%d+)-'))
end
local function client_of(token)
    return string.match(token, '^[^-]+')
end
local function grant()
    if redis.call('ZCARD', KEYS[3]) == 0 then return end
    local free = limit - redis.call('ZCARD', KEYS[1])
    while free > 0 do
        local head = redis.call('ZPOPMIN', KEYS[3])
        if #head == 0 then return end
        local token = head[1]
        local client = client_of(token)
        local alive = redis.call('ZSCORE', KEYS[4], client)
        if alive and tonumber(alive) >= now then
            -- a short lease until its process confirms it (it may have died meanwhile)
            redis.call('ZADD', KEYS[1], now + math.min(lease_of(token), CONFIRM_MS), token)
            local wake = ARGV[2] .. client
            redis.call('RPUSH', wake, token)
            redis.call('PEXPIRE', wake, ARGV[4])
            free = free - 1
        end
    end
end
-- extend the time to live of the keys written (by index) to keep ms, when it is below half
local function keep(...)
    local ms = tonumber(ARGV[3])
    if ms == 0 then return end
    for _, i in ipairs({2, ...}) do
        local ttl = redis.call('PTTL', KEYS[i])
        if ttl ~= -2 and ttl < ms / 2 then redis.call('PEXPIRE', KEYS[i], ms) end
    end
end
local function forget(token)
    redis.call('ZADD', KEYS[6], now + 60000, token)
end
""".replace("CONFIRM_MS", str(CONFIRM_MS))

# ARGV[5]: token, ARGV[6]: '1' to queue up when busy. Reply {1, free} taken, {0, free} queued,
# {2, free} busy (or already given up).
ACQUIRE = Script(_PRELUDE + """
local token = ARGV[5]
purge()
local result
if redis.call('ZSCORE', KEYS[6], token) then
    result = 2
elseif redis.call('ZSCORE', KEYS[1], token) then
    result = 1
elseif redis.call('ZSCORE', KEYS[3], token) then
    result = 0
else
    grant()
    if redis.call('ZCARD', KEYS[3]) == 0 and redis.call('ZCARD', KEYS[1]) < limit then
        redis.call('ZADD', KEYS[1], now + lease_of(token), token)
        result = 1
        keep(1)
    elseif ARGV[6] == '1' then
        redis.call('ZADD', KEYS[4], now + tonumber(ARGV[4]), client_of(token))
        redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[5]), token)
        result = 0
        keep(1, 3, 4, 5)
    else
        result = 2
        keep()
    end
end
return {result, limit - redis.call('ZCARD', KEYS[1])}
""")

# ARGV[5...]: tokens. Reply {0, lost, free}: lost counts the tokens whose lease had expired
# and been taken over (a token released before, whose reply was lost, is not lost).
RELEASE = Script(_PRELUDE + """
local lost = 0
for i = 5, #ARGV do
    if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
        forget(ARGV[i])
    elseif not redis.call('ZSCORE', KEYS[6], ARGV[i]) then
        lost = lost + 1
    end
end
purge()
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
grant()
keep(1, 6)
return {0, lost, limit - redis.call('ZCARD', KEYS[1])}
""")

# ARGV[5...]: tokens. Reply {0, lost tokens...}: renews the leases of the others (a token
# released or given up meanwhile is neither).
RENEW = Script(_PRELUDE + """
local reply = {0}
for i = 5, #ARGV do
    if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
        redis.call('ZADD', KEYS[1], 'XX', now + lease_of(ARGV[i]), ARGV[i])
    elseif not redis.call('ZSCORE', KEYS[6], ARGV[i]) then
        table.insert(reply, ARGV[i])
    end
end
purge()
grant()
keep(1, 3, 4, 5, 6)
return reply
""")

# ARGV[5]: token, ARGV[6]: '1' to keep a permit granted meanwhile. Reply {0} it was waiting
# (now it is not), {1} granted and kept, {2} unknown (never arrived, or gone), {3} granted and
# given back. Whatever the case, an acquire of this token arriving later does nothing.
CANCEL = Script(_PRELUDE + """
local token = ARGV[5]
local result = 2
local queued = redis.call('ZREM', KEYS[3], token) == 1
if redis.call('ZSCORE', KEYS[1], token) then
    if ARGV[6] == '1' then
        redis.call('ZADD', KEYS[1], 'XX', now + lease_of(token), token)  -- confirmed
        result = 1
    else
        redis.call('ZREM', KEYS[1], token)
        result = 3
    end
elseif queued then
    result = 0
end
if result ~= 1 then forget(token) end
purge()
grant()
keep(1, 6)
return {result}
""")

# ARGV[5]: client id, ARGV[6...]: its waiting tokens. Says the client is alive; if it had been
# taken for dead, queues its tokens again (those neither waiting, held nor given up). Grants
# permits whose leases expired; forgets dead clients and old tombstones. Reply {1 if it had
# been taken for dead, free}.
HEARTBEAT = Script(_PRELUDE + """
purge()
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
local fresh = redis.call('ZADD', KEYS[4], now + tonumber(ARGV[4]), ARGV[5])
if fresh == 1 then
    for i = 6, #ARGV do
        local token = ARGV[i]
        if not (redis.call('ZSCORE', KEYS[3], token) or redis.call('ZSCORE', KEYS[1], token)
                or redis.call('ZSCORE', KEYS[6], token)) then
            redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[5]), token)
        end
    end
end
grant()
keep(1, 3, 4, 5, 6)
return {fresh, limit - redis.call('ZCARD', KEYS[1])}
""")

# Reply {0, free}.
OPEN = Script(_PRELUDE + """
purge()
grant()
keep()
return {0, limit - redis.call('ZCARD', KEYS[1])}
""")
