"""What comet keeps in Redis, by name, and the two scripts that write and read it.

Shared by the broker (:mod:`comet.broker.redis`) and the backend API
(:mod:`comet.publish`), so that a message published from an application's
own process gets its id, its place in history and its delivery exactly as one
published over HTTP.

Keys (``prefix`` is ``comet`` unless configured; ``{id}`` is a hash tag, so
an id's stream and channel share a cluster slot):

``<prefix>:pos``
    a hash: ``epoch`` (drawn when the hash is created: a new one means the
    history behind every older id is gone), ``seq`` (the last message's
    offset), and the history bounds the servers were started with
    (``history``, ``ttl``), which a backend's publish follows too.
``<prefix>:{<id>}:h``
    the id's stream: entries ``<seq>-0`` with field ``d`` (the message),
    capped at exactly ``history`` (the oldest deleted with XDEL, which
    records the newest id deleted: ``max-deleted-entry-id``) and expiring ``ttl`` seconds after
    its last message. ``<prefix>:{*}:h`` keeps broadcasts, once.
``<prefix>:{<id>}:c``
    the id's channel; ``<prefix>:{*}:c`` carries broadcasts. A message
    goes out on it as ``<epoch> <seq> <data>``.

Offsets are time: ``seq`` is the Redis server's clock in milliseconds times
1024, or the last ``seq`` plus one when that is not larger (more than 1024
messages in a millisecond, or a clock that stepped back). So offsets only
grow, one counter orders every id and every broadcast (a client's one last
id covers all its ids and the broadcasts), and an offset tells when its
message was published: a stream that is gone missed nothing after a client's
last id unless that id is older than ``ttl`` (a stream only expires after
``ttl`` seconds without a message).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence

#: the pseudo-id under which broadcasts are kept and sent (no real id has a ``*``)
BROADCAST = "*"

#: offsets per millisecond: seq = ms * SEQ_PER_MS (+ n when messages crowd a millisecond)
SEQ_PER_MS = 1024

#: history bounds a publish uses when no server has written its own yet
DEFAULT_HISTORY, DEFAULT_TTL = 100, 300


#: this process's part of every epoch it proposes, drawn once; a counter makes each unique
_PROPOSER = os.urandom(3).hex()
_PROPOSALS = itertools.count()


def epoch_candidate() -> str:
    """The epoch a script takes if Redis has none (it lost its history): never one seen before.

    Every script call carries one, and it is used only after a loss; a random part
    per process and a count make it unique without a random draw (a syscall) per call.
    """
    return f"{_PROPOSER}{next(_PROPOSALS):x}"


def publish_arguments(prefix: str, items: Sequence[tuple[str, bytes]]) -> tuple[list, list]:
    """KEYS and ARGV of :data:`PUBLISH` for ``(id, data)`` items (:data:`BROADCAST`: to all)."""
    keys: list = [position_key(prefix)]
    args: list = [epoch_candidate()]
    for id, data in items:
        keys.append(stream_key(prefix, id))
        args += (channel(prefix, id), data)
    return keys, args


def position_key(prefix: str) -> str:
    return f"{prefix}:pos"


def stream_key(prefix: str, id: str) -> str:
    return f"{prefix}:{{{id}}}:h"


def channel(prefix: str, id: str) -> str:
    return f"{prefix}:{{{id}}}:c"


#: the part both scripts begin with: the epoch (made if Redis lost it) and the bounds
_HEAD = f"""
local SEQ_PER_MS = {SEQ_PER_MS}
local DEFAULT_HISTORY, DEFAULT_TTL = {DEFAULT_HISTORY}, {DEFAULT_TTL}
""" + """
local pos = KEYS[1]
local head = redis.call('HMGET', pos, 'epoch', 'seq', 'history', 'ttl')
local epoch = head[1]
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', pos, 'epoch', epoch)
end
local last = tonumber(head[2] or '0')
local history = tonumber(head[3] or DEFAULT_HISTORY)
local ttl = tonumber(head[4] or DEFAULT_TTL)
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

#: KEYS: pos, then one stream per message; ARGV: a fresh epoch, then a channel and
#: a message for each stream. Gives each message the next offset, keeps it, publishes
#: it, in order; returns {epoch, seq1, seq2, ...}. One call for a whole batch (on one
#: Redis; a cluster's slots need one call per id).
PUBLISH = _HEAD + """
local out = {epoch}
for i = 2, #KEYS do
  local stream, chan, data = KEYS[i], ARGV[2 * i - 2], ARGV[2 * i - 1]
  last = math.max(last + 1, now_ms * SEQ_PER_MS)
  local s = string.format('%.0f', last)
  if history > 0 then
    redis.call('XADD', stream, s .. '-0', 'd', data)
    local excess = redis.call('XLEN', stream) - history
    if excess > 0 then
      -- XDEL, not MAXLEN: it records the newest id it removed (max-deleted-entry-id),
      -- which is how a replay tells a client that history no longer covers its gap
      local old = redis.call('XRANGE', stream, '-', '+', 'COUNT', excess)
      for _, entry in ipairs(old) do redis.call('XDEL', stream, entry[1]) end
    end
    redis.call('EXPIRE', stream, ttl)
  end
  redis.call('PUBLISH', chan, epoch .. ' ' .. s .. ' ' .. data)
  out[#out + 1] = s
end
redis.call('HSET', pos, 'seq', string.format('%.0f', last))
return out
"""

#: KEYS: pos, then the streams to read; ARGV: a fresh epoch, the client's epoch,
#: its offset ('0' for none). Returns {epoch, seq, missed, after, seq1, data1, ...}:
#: what the streams keep after the offset, oldest first, whether some is lost, and the
#: offset it replays after (0 when the client's was of another epoch).
REPLAY = _HEAD + """
local after = tonumber(ARGV[3])
local missed = 0
if ARGV[2] ~= epoch or after > last then
  missed = 1
  after = 0
end
local after_ms = math.floor(after / SEQ_PER_MS)
local found = {}
for i = 2, #KEYS do
  local key = KEYS[i]
  if history == 0 then
    if last > after then missed = 1 end
  elseif redis.call('EXISTS', key) == 0 then
    if after > 0 and now_ms - after_ms > ttl * 1000 then missed = 1 end
  else
    local info = redis.call('XINFO', 'STREAM', key)
    for j = 1, #info, 2 do
      if info[j] == 'max-deleted-entry-id' then
        local deleted = tonumber(string.match(info[j + 1], '^(%d+)'))
        if deleted > after then missed = 1 end
      elseif info[j] == 'first-entry' and info[j + 1] then
        local first = tonumber(string.match(info[j + 1][1], '^(%d+)'))
        local first_ms = math.floor(first / SEQ_PER_MS)
        if after > 0 and first > after and first_ms - after_ms > ttl * 1000 then
          missed = 1
        end
      end
    end
    local entries = redis.call('XRANGE', key, '(' .. string.format('%.0f', after) .. '-0', '+',
                               'COUNT', history)
    for _, entry in ipairs(entries) do
      found[#found + 1] = {tonumber(string.match(entry[1], '^(%d+)')), entry[2][2]}
    end
  end
end
table.sort(found, function(a, b) return a[1] < b[1] end)
local out = {epoch, string.format('%.0f', last), missed, string.format('%.0f', after)}
for _, m in ipairs(found) do
  out[#out + 1] = string.format('%.0f', m[1])
  out[#out + 1] = m[2]
end
return out
"""

#: KEYS: pos; ARGV: a fresh epoch, history, ttl. Records the bounds; returns {epoch, seq}.
SETUP = _HEAD + """
redis.call('HSET', pos, 'history', ARGV[2], 'ttl', ARGV[3])
return {epoch, string.format('%.0f', last)}
"""
