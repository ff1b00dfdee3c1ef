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


def published_at(seq: int) -> float:
    """When the message of offset ``seq`` was published, in epoch seconds by Redis's
    clock (to the millisecond; later when messages crowded a millisecond)."""
    return seq / (SEQ_PER_MS * 1000)


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


# -- Redis Cluster: one stream per script call, positions per stream ------------------
#
# A script may only touch keys of one slot, so in a cluster there is no ``pos`` hash:
# each id's stream carries its own epoch, in an entry ``0-1`` that opens it (field
# ``e``), and its own offsets (``max(its last + 1, ms * 1024)``, by the clock of the
# node that holds it). A client's position is then one ``<epoch>-<offset>`` per
# stream it reads (:mod:`comet.broker.cursor`), not one for all.

def bounds_key(prefix: str) -> str:
    """A cluster's hash of the servers' history bounds (``history``, ``ttl``), for a
    backend's publish (:mod:`comet.publish`); the servers pass theirs to each call."""
    return f"{prefix}:bounds"

_SHARD_HEAD = f"""
local SEQ_PER_MS = {SEQ_PER_MS}
""" + """
local stream = KEYS[1]
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function offset_of(id) return tonumber(string.match(id, '^(%d+)')) end
local function text(n) return string.format('%.0f', n) end
local function epoch_of(key)
  local head = redis.call('XRANGE', key, '0-1', '0-1')
  if head[1] then return head[1][2][2] end
  return nil
end
"""

#: KEYS: the stream; ARGV: a fresh epoch, the channel, the message, history, ttl.
#: Gives the message the stream's next offset, keeps it (the newest ``history``),
#: SPUBLISHes ``<epoch> <seq> <data>``; returns {epoch, seq}.
SHARD_PUBLISH = _SHARD_HEAD + """
local chan, data = ARGV[2], ARGV[3]
local history, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local epoch = epoch_of(stream)
local last = 0
if epoch then
  local tail = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  last = offset_of(tail[1][1])
  if last == 0 then
    local info = redis.call('XINFO', 'STREAM', stream)
    for j = 1, #info, 2 do
      if info[j] == 'last-generated-id' then last = offset_of(info[j + 1]) end
    end
  end
else
  epoch = ARGV[1]
  redis.call('XADD', stream, '0-1', 'e', epoch)
end
local seq = math.max(last + 1, now_ms * SEQ_PER_MS)
local s = text(seq)
redis.call('XADD', stream, s .. '-0', 'd', data)
local excess = redis.call('XLEN', stream) - 1 - history
if excess > 0 then
  -- XDEL, not MAXLEN: it keeps the epoch entry and records max-deleted-entry-id
  local old = redis.call('XRANGE', stream, '(0-1', '+', 'COUNT', excess)
  for _, entry in ipairs(old) do redis.call('XDEL', stream, entry[1]) end
end
redis.call('EXPIRE', stream, ttl)
redis.call('SPUBLISH', chan, epoch .. ' ' .. s .. ' ' .. data)
return {epoch, s}
"""

#: KEYS: the stream; ARGV: the client's epoch for it ('' for "as of" a time), its
#: offset, '1' if the client has a position in it ('0': it starts now), history, ttl.
#: Returns {epoch, last, missed, after, seq1, data1, ...}: what the stream keeps after
#: the position, whether some is lost, and the position the replay starts after
#: (epoch '' and an offset of now when the stream does not exist).
SHARD_REPLAY = _SHARD_HEAD + """
local their_epoch, after, has = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
local history, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local epoch = epoch_of(stream)
if not epoch then
  -- nothing kept: lost unless the client's position is "as of" a time; a message
  -- published from now on gets an offset above the one returned
  local missed = 0
  if has and their_epoch ~= '' then missed = 1 end
  return {'', text(now_ms * SEQ_PER_MS - 1), missed, text(now_ms * SEQ_PER_MS - 1)}
end
local tail = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
local last = offset_of(tail[1][1])
local info = redis.call('XINFO', 'STREAM', stream)
local deleted = 0
for j = 1, #info, 2 do
  if info[j] == 'max-deleted-entry-id' then deleted = offset_of(info[j + 1]) end
  if info[j] == 'last-generated-id' then last = offset_of(info[j + 1]) end
end
if not has then
  return {epoch, text(last), 0, text(last)}
end
local missed = 0
if their_epoch == '' then
  -- "as of" a time: this stream began after it; what it kept all came later, unless
  -- it was created more than ttl after that time (another stream may have come and gone)
  local first = redis.call('XRANGE', stream, '(0-1', '+', 'COUNT', 1)
  if first[1] and math.floor(offset_of(first[1][1]) / SEQ_PER_MS)
      - math.floor(after / SEQ_PER_MS) > ttl * 1000 then
    missed = 1
  end
  if deleted > after then missed = 1 end
elseif their_epoch ~= epoch or after > last then
  missed = 1
  after = 0
elseif deleted > after then
  missed = 1
end
local start = '(' .. text(after) .. '-0'
if after == 0 then start = '(0-1' end
local out = {epoch, text(last), missed, text(after)}
for _, entry in ipairs(redis.call('XRANGE', stream, start, '+', 'COUNT', history)) do
  out[#out + 1] = text(offset_of(entry[1]))
  out[#out + 1] = entry[2][2]
end
return out
"""
