"""The Redis store's Lua scripts: each state change of a job, atomic on the server.

Every key a script touches is passed in KEYS, except where a comment says otherwise.
"""

# Finishing a job, shared by the scripts below. KEYS: job hash, active hash, done zset,
# finished zset, end stream, callback outbox zset. ARGV: id, status, returncode, error,
# stdout_truncated, stderr_truncated, finished_at (Unix seconds). A job with a callback
# enters the outbox, due now, in the same step.
_FINISH = """
local function finish(k1, k2, k3, k4, k5, k6, a)
    redis.call('HSET', k1, 'status', a[2], 'stdout_truncated', a[5],
               'stderr_truncated', a[6], 'finished_at', a[7])
    if a[3] ~= '' then redis.call('HSET', k1, 'returncode', a[3]) end
    if a[4] ~= '' then redis.call('HSET', k1, 'error', a[4]) end
    redis.call('HDEL', k2, a[1])
    redis.call('ZADD', k3, redis.call('HGET', k1, 'seq'), a[1])
    redis.call('ZADD', k4, a[7], a[1])
    redis.call('XADD', k5, 'MAXLEN', '1', '*', 'status', a[2])
    if redis.call('HEXISTS', k1, 'callback_url') == 1 then redis.call('ZADD', k6, a[7], a[1]) end
end
"""

# KEYS: job, active, done, finished, end, outbox. ARGV as _FINISH, then the expected status
# ("active" for queued or running). Returns 1 when it finished the job.
FINISH_SCRIPT = (
    _FINISH
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'running' then return 0 end
if ARGV[8] ~= 'active' and status ~= ARGV[8] then return 0 end
finish(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV)
return 1
"""
)

# KEYS: job, active, done, finished, end, outbox. ARGV as _FINISH (status cancelled).
# Returns 2 when a queued job was cancelled, 1 when a running one was flagged, else 0.
CANCEL_SCRIPT = (
    _FINISH
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' then
    finish(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV)
    return 2
elseif status == 'running' then
    redis.call('HSET', KEYS[1], 'cancel', '1')
    return 1
end
return 0
"""
)

# KEYS: job, jobs zset, active hash, seq counter, idempotency key (or ""), created zset,
# the command's created zset. ARGV: id, active entry (owner US command), job key prefix,
# created_at, then field/value pairs. Returns the id of the stored job: the existing one when the
# idempotency key is taken by a job that still exists.
CREATE_SCRIPT = """
if KEYS[5] ~= '' then
    local existing = redis.call('GET', KEYS[5])
    if existing and redis.call('EXISTS', ARGV[3] .. existing) == 1 then
        return existing
    end
end
local seq = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[1], 'seq', seq, unpack(ARGV, 5))
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[6], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[7], ARGV[4], ARGV[1])
-- creations are kept a day for rate limits, whatever happens to the jobs
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', ARGV[4] - 86400)
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', ARGV[4] - 86400)
if KEYS[5] ~= '' then redis.call('SET', KEYS[5], ARGV[1]) end
return ARGV[1]
"""

# KEYS: callback outbox zset. ARGV: now, end of the lease, limit, job key prefix. Leases
# the due callbacks, counting their attempt, and returns their ids; drops those whose job
# is gone or has no pending callback.
CLAIM_CALLBACKS_SCRIPT = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local claimed = {}
for _, id in ipairs(ids) do
    local key = ARGV[4] .. id
    local raw = redis.call('HGET', key, 'callback')
    local state = raw and cjson.decode(raw)
    if type(state) == 'table' and state['status'] == 'pending' then
        state['attempts'] = (tonumber(state['attempts']) or 0) + 1
        redis.call('HSET', key, 'callback', cjson.encode(state))
        redis.call('ZADD', KEYS[1], ARGV[2], id)
        claimed[#claimed + 1] = id
    else
        redis.call('ZREM', KEYS[1], id)
    end
end
return claimed
"""

# KEYS: job, callback outbox. ARGV: id, state (JSON), attempt, retry_at ("": none).
# Records an attempt while the stored attempt count is still ARGV[3]; 1 if it did.
SET_CALLBACK_SCRIPT = """
local raw = redis.call('HGET', KEYS[1], 'callback')
if not raw then return 0 end
local state = cjson.decode(raw)
if type(state) ~= 'table' or tonumber(state['attempts']) ~= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 'callback', ARGV[2])
if ARGV[4] == '' then
    redis.call('ZREM', KEYS[2], ARGV[1])
else
    redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
end
return 1
"""

# KEYS: job, jobs, done, finished, output stream, end. ARGV: id, idempotency key prefix,
# created zset, created zset prefix of commands (kept: rate limits count deleted jobs).
# Deletes a finished job; returns 1, or 0 when it is still active or absent.
DELETE_SCRIPT = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'queued' or status == 'running' then return 0 end
local scope = redis.call('HGET', KEYS[1], 'scope')
if scope then
    local key = ARGV[2] .. scope
    if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end
end
redis.call('DEL', KEYS[1], KEYS[5], KEYS[6])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
return 1
"""

# KEYS: job, active hash. ARGV: started_at, id, new owner (or ""). Returns the job's fields
# (HGETALL) when it went from queued to running, else 0.
START_SCRIPT = """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1])
if ARGV[3] ~= '' then
    redis.call('HSET', KEYS[1], 'owner', ARGV[3])
    local command = redis.call('HGET', KEYS[1], 'command') or ''
    redis.call('HSET', KEYS[2], ARGV[2], ARGV[3] .. '\\31' .. command)
end
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: job, active hash, output stream. ARGV: id, owner, spec with the retry flag cleared.
# Puts a running or queued job of ``owner`` back in the queue; returns 1 if it did.
REQUEUE_SCRIPT = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'running' then return 0 end
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'spec', ARGV[3])
redis.call('HDEL', KEYS[1], 'owner', 'started_at', 'cancel', 'process')
redis.call('DEL', KEYS[3])
local command = redis.call('HGET', KEYS[1], 'command') or ''
redis.call('HSET', KEYS[2], ARGV[1], '\\31' .. command)
return 1
"""


# KEYS: job, active hash. ARGV: id, owner. Makes a queued job the owner's; 1 if it did.
CLAIM_SCRIPT = """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[2])
local command = redis.call('HGET', KEYS[1], 'command') or ''
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. '\\31' .. command)
return 1
"""

# KEYS: job. ARGV: process tag. Records it while the job runs.
RECORD_PROCESS_SCRIPT = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'process', ARGV[1])
return 1
"""

# KEYS: job. ARGV: id, idempotency key prefix. The job lets its idempotency key go (the
# key is deleted only while it still names this job); returns 1 if the job held one.
RELEASE_KEY_SCRIPT = """
local scope = redis.call('HGET', KEYS[1], 'scope')
if not scope then return 0 end
redis.call('HDEL', KEYS[1], 'scope')
local key = ARGV[2] .. scope
if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
    return 1
end
return 0
"""
