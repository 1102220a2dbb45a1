"""The Lua scripts of cluster mode, and the keys they use.

Per user, one hash (hash-tagged, so that one user's keys share a Redis
Cluster slot and each script touches one slot only), ``{u:ID}:h``:

  - field ``v``: the user's global state, ``"VERSION|PRESENT|STATUS|SESSIONS|
    LAST_SEEN|LISTED|TEXT"`` (LISTED: the ids as decimal strings, sorted as
    strings, joined by ","), the event published for that version without
    its leading ``ID|``.  While the user is absent the hash holds only this
    field, a tombstone ``"VERSION|0|offline|0|LAST_SEEN||"``, and expires
    after TOMBSTONE_TTL seconds.
  - field ``a``: when the status was last written (a node's clock), while
    present.
  - one field per node incarnation holding a share of the user (an
    incarnation always holds a "/"): ``"SESSIONS|ENDED_AT|SINCE|LISTED|SA|
    STATUS|HAS_TEXT|TEXT"`` (SINCE: when the node's share began; SA,
    STATUS, HAS_TEXT, TEXT: the status its sessions last wrote, used only to
    settle a gap found after an outage).
  - channel ``{u:ID}``: one event per new version,
    ``"ID|VERSION|PRESENT|STATUS|SESSIONS|LAST_SEEN|LISTED|TEXT"``.

One hash rather than a hash of shares and a hash of the state: a change is
then one HGETALL, one HSET and one PUBLISH in Redis, and its state one
string to read, write and publish (docs/cluster.rst, "What it costs").

Per cluster (one slot):

  - ``{cluster}:nodes`` zset: live node incarnation -> Redis time (seconds) of
    its last refresh.
  - ``{cluster}:dead`` hash: declared dead incarnation -> ``"LAST_ALIVE|LEASE"``;
    a survivor holds the lease (Redis time) while it removes the shares.
  - ``{cluster}:names`` hash: node id -> its current incarnation.
  - channel ``{cluster}:control``: ``"disconnect|ID"``, every node ends the
    user's sessions.

Per node incarnation (its own slot): ``{n:INCARNATION}:users``, the set of
user ids it may hold a share of (a superset: added before the share, removed
after it).  A survivor reads it to clean up after a dead node, many users per
script (L{REAP_MANY}), or one per user on Redis Cluster.

Versions grow by one while a user is present, and start again from at least
Redis's time in microseconds after an absence: they grow across a user's
absences (the tombstone covers a clock that steps back by less than its TTL)
and stay exact in Lua's doubles (below 2**53) until the year 2255.
"""

from __future__ import annotations

import hashlib

TOMBSTONE_TTL = 3600
STATE = "v"  # the field of a user's hash holding its state
NODES = "{cluster}:nodes"
DEAD = "{cluster}:dead"
NAMES = "{cluster}:names"
CONTROL = "{cluster}:control"  # channel: "disconnect|ID" (the admin API)


def user_key(uid: int) -> str:
    return f"{{u:{uid}}}:h"


def channel(uid: int) -> str:
    return f"{{u:{uid}}}"


def users_key(incarnation: str) -> str:
    return f"{{n:{incarnation}}}:users"


class Script:
    """A Lua script and its SHA1 (what EVALSHA names it by)."""

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


# The function every script that changes a user runs (L{APPLY}, L{APPLY_MANY},
# L{REAP_MANY}): HK, the user's hash; UID; ME, the incarnation; MODE (set |
# status | assert | del | undo | reap); SHARE; KEPT, with mode status, the
# length of SHARE's first four fields (SESSIONS|ENDED_AT|SINCE|LISTED|);
# CST, a status written ("" = unchanged);
# HAS_TEXT (a boolean) and CTEXT, a text written; AT, when (the node's
# clock); CAT, when the status was written; TTL, the tombstone's.
#   set:    this node's share is now SHARE; a status write applies.
#   status: as set, from a node whose share is unchanged but for its status
#           write (KEPT): when Redis holds that share, live, and the user is
#           present, nothing but the status and text can change, so the
#           other shares are not read (a status change is the commonest call).
#   assert: the same after a reconnect; the remembered status write applies
#           only if newer (CAT) than the one stored.
#   del:    this node holds no share any more (a no-op if it held none).
#   undo:   as del, sent after an outage for a share dropped during it (at
#           AT): if every remaining share began after AT and no status was
#           written after AT, the user was absent in between, so its status
#           was forgotten: it becomes the last one written by the remaining
#           shares' sessions, or "online".
#   reap:   as undo, for a dead incarnation last alive at AT: a ghost's user
#           was last seen when its last session ended, if that is earlier.
# Returns 1 when it published a new version, else 0.
# Mirrors presence.core.bus.MemoryHub._apply and _settle.
_APPLY_FUNCTION = r"""
local function apply(hk, uid, me, mode, share, kept, cst, has_text, ctext, at, cat,
    ttl)
local has_change = cst ~= '' or has_text
if mode == 'status' then
  local got = redis.call('HMGET', hk, 'v', 'a', me)
  local stored, osa, held = got[1], got[2], got[3]
  if stored and held and string.sub(held, 1, 2) ~= '0|' and
      string.sub(held, 1, kept) == string.sub(share, 1, kept) then
    local over, p, ostatus, n, ols, listed, otext = string.match(stored,
      '^(%d+)|(%d)|([^|]*)|(%d*)|([^|]*)|([^|]*)|(.*)$')
    if p == '1' then
      local status, text, sa = ostatus, otext, cat
      if cst ~= '' then status = cst end
      if has_text then text = ctext end
      if not has_change then sa = osa or '0' end
      local last_seen = ols
      if ostatus ~= 'invisible' and status == 'invisible' then last_seen = at end
      local news = status ~= ostatus or text ~= otext
      local v = over
      if news then v = string.format('%d', tonumber(over) + 1) end
      local body = v .. '|1|' .. status .. '|' .. n .. '|' .. last_seen .. '|' ..
        listed .. '|' .. text
      redis.call('HSET', hk, me, share, 'v', body, 'a', sa)
      if not news then return 0 end
      redis.call('PUBLISH', '{u:' .. uid .. '}', uid .. '|' .. body)
      return 1
    end
  end
  mode = 'set'  -- not as the node thought: the whole computation
end
local all = redis.call('HGETALL', hk)
local shares, stored, osa = {}, nil, '0'
for i = 1, #all, 2 do
  local f = all[i]
  if f == 'v' then stored = all[i + 1]
  elseif f == 'a' then osa = all[i + 1]
  else shares[f] = all[i + 1] end
end
local oldp, over, ostatus, otext, olisted, ols = false, '0', 'offline', '', '', at
if stored then
  local v, p, st, ls, l, tx = string.match(stored,
    '^(%d+)|(%d)|([^|]*)|%d*|([^|]*)|([^|]*)|(.*)$')
  over = v
  if p == '1' then
    oldp = true
    ostatus, otext, olisted, ols = st, tx, l, ls
  end
end
if not oldp then osa = '0' end
-- (Tables only where needed: each costs as much as a pattern match.)
local dels, mine = nil, nil
if mode == 'del' or mode == 'undo' or mode == 'reap' then
  local held = shares[me]
  if not held then return 0 end
  if mode == 'reap' then
    local ended = string.match(held, '^0|([^|]*)|')
    if ended and tonumber(ended) > 0 and tonumber(ended) < tonumber(at) then
      at = ended
    end
  end
  dels = {me}
  shares[me] = nil
  has_change = false
else
  if not oldp then
    -- absent until now: the first session's login sets the status
    ostatus = (cst ~= '' and cst) or 'online'
    otext = (has_text and ctext) or ''
    olisted, ols = '', at
    osa = (has_change and cat) or '0'
    has_change = false
  end
  -- A ghost stands only for a user with no session anywhere: live sessions
  -- replace other nodes' ghosts, and no ghost is kept beside live sessions.
  if string.sub(share, 1, 2) ~= '0|' then
    for node, held in pairs(shares) do
      if node ~= me and string.sub(held, 1, 2) == '0|' then
        dels = dels or {}
        dels[#dels + 1] = node
        shares[node] = nil
      end
    end
    mine = share
    shares[me] = share
  else
    local live = false
    for node, held in pairs(shares) do
      if node ~= me and string.sub(held, 1, 2) ~= '0|' then live = true end
    end
    if live then
      if shares[me] then
        dels = {me}
        shares[me] = nil
      end
    else
      mine = share
      shares[me] = share
    end
  end
end
local present = next(shares) ~= nil
local status, text, sa = ostatus, otext, osa
if present and has_change and (mode ~= 'assert' or tonumber(cat) > tonumber(osa)) then
  if cst ~= '' then status = cst end
  if has_text then text = ctext end
  sa = cat
end
if (mode == 'undo' or mode == 'reap') and present then
  local first, best, bsa = nil, nil, -1
  for _, held in pairs(shares) do
    local since, wsa, wst, wtf, wtx = string.match(held,
      '^%d+|[^|]*|([^|]*)|[^|]*|([^|]*)|([^|]*)|([^|]*)|(.*)$')
    since, wsa = tonumber(since), tonumber(wsa)
    if first == nil or since < first then first = since end
    if wsa > bsa then bsa, best = wsa, {wst, wtf, wtx} end
  end
  if first > tonumber(at) and tonumber(osa) <= tonumber(at) then
    status = (best[1] ~= '' and best[1]) or 'online'
    text = (best[2] == '1' and best[3]) or ''
    sa = string.format('%.6f', bsa)
  end
end
-- (Counted as strings where one share is all there is, the usual case:
-- formatting a number costs more than the rest of a share's parsing.)
local sessions, count, listed, lists = '0', 0, '', nil
for _, held in pairs(shares) do
  local n, l = string.match(held, '^(%d+)|[^|]*|[^|]*|([^|]*)|')
  count = count + 1
  if count == 1 then sessions = n
  else sessions = string.format('%d', tonumber(sessions) + tonumber(n)) end
  if l ~= '' then
    if listed == '' then listed = l
    else lists = lists or {listed}; lists[#lists + 1] = l end
  end
end
if lists then
  local seen, ids = {}, {}
  for _, l in ipairs(lists) do
    for id in string.gmatch(l, '[^,]+') do
      if not seen[id] then seen[id] = true; ids[#ids + 1] = id end
    end
  end
  table.sort(ids)
  listed = table.concat(ids, ',')
end
if not present then status, text, listed = 'offline', '', '' end
local visible = present and status ~= 'invisible'
local ovisible = oldp and ostatus ~= 'invisible'
local last_seen = ols or at
if ovisible and not visible then last_seen = at end
if dels then redis.call('HDEL', hk, unpack(dels)) end
local news = not (present == oldp and status == ostatus and text == otext
  and listed == olisted)
local v = over
if news then
  local version = tonumber(over) + 1
  if not oldp then
    -- after an absence (the tombstone may be gone): at least Redis's clock
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    if now > version then version = now end
  end
  v = string.format('%d', version)
end
local body = v .. '|' .. (present and '1' or '0') .. '|' .. status .. '|' ..
  sessions .. '|' .. last_seen .. '|' .. listed .. '|' .. text
if present then
  if mine then
    redis.call('HSET', hk, me, mine, 'v', body, 'a', sa)
  else
    redis.call('HSET', hk, 'v', body, 'a', sa)
  end
end
if not news then
  -- Nothing a watcher sees changed: the session count and when the status
  -- was written are stored (above), under the same version.
  return 0
end
if present then
  if not oldp then redis.call('PERSIST', hk) end
else
  redis.call('DEL', hk)
  redis.call('HSET', hk, 'v', body)
  redis.call('EXPIRE', hk, ttl)
end
redis.call('PUBLISH', '{u:' .. uid .. '}', uid .. '|' .. body)
return 1
end
"""

# KEYS: the user's hash.  ARGV: uid, incarnation, mode, share, kept ("" but
# with mode status), status ("" = unchanged), has_text ("1"/"0"), text, at,
# status_at, tombstone ttl.
APPLY = Script("apply", _APPLY_FUNCTION + r"""
return apply(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]),
  ARGV[6], ARGV[7] == '1', ARGV[8], ARGV[9], ARGV[10], ARGV[11])
""")

# KEYS: each user's hash in turn.  ARGV: the incarnation, the tombstone ttl,
# then for each user: uid, mode, share, kept, status, has_text, text, at,
# status_at.  Many of one node's changes in one call, in order: what a node
# publishes in one reactor turn costs Redis one command, not one per change.
# Refused on Redis Cluster (keys of several slots, CROSSSLOT): the bus sends
# APPLY there.  Returns how many changes published a new version.
APPLY_MANY = Script("apply_many", _APPLY_FUNCTION + r"""
local me, ttl, changed, j = ARGV[1], ARGV[2], 0, 3
for i = 1, #KEYS do
  changed = changed + apply(KEYS[i], ARGV[j], me, ARGV[j + 1], ARGV[j + 2],
    tonumber(ARGV[j + 3]), ARGV[j + 4], ARGV[j + 5] == '1', ARGV[j + 6],
    ARGV[j + 7], ARGV[j + 8], ttl)
  j = j + 9
end
return changed
""")

# KEYS: nodes, dead, names.  ARGV: incarnation, ttl, mode, node id, judge.
#   beat:     refresh; {'gone'} if this incarnation is not live any more
#             (declared dead, or Redis lost its data).
#   register: join as a live incarnation; a previous incarnation of the same
#             node id is declared dead at once (the process was restarted).
#   leave:    declare this incarnation dead now (a clean stop).
# Then (beat, register): if JUDGE is "1", declare dead every incarnation
# silent for more than ttl seconds (a node judges only once it has itself been
# connected for ttl seconds: after a Redis outage the others get that long to
# come back); and claim the lease of dead incarnations nobody is cleaning up.
# Returns {'ok', NOW, INCARNATION, LAST_ALIVE, ...} for the claimed ones.
HEARTBEAT = Script("heartbeat", r"""
local nodes, dead, names = KEYS[1], KEYS[2], KEYS[3]
local me, ttl, mode, name = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local fmt = function(x) return string.format('%.6f', x) end
if mode == 'leave' then
  if redis.call('ZREM', nodes, me) == 1 then
    redis.call('HSET', dead, me, fmt(now) .. '|0')
  end
  return {'ok', fmt(now)}
end
if mode == 'register' then
  local prev = redis.call('HGET', names, name)
  if prev and prev ~= me then
    local score = redis.call('ZSCORE', nodes, prev)
    if score then
      redis.call('ZREM', nodes, prev)
      redis.call('HSET', dead, prev, score .. '|0')
    end
  end
  redis.call('HSET', names, name, me)
elseif not redis.call('ZSCORE', nodes, me) then
  return {'gone', fmt(now)}
end
redis.call('ZADD', nodes, fmt(now), me)
if ARGV[5] == '1' then
  local expired = redis.call('ZRANGEBYSCORE', nodes, '-inf',
    '(' .. fmt(now - ttl), 'WITHSCORES')
  for i = 1, #expired, 2 do
    redis.call('ZREM', nodes, expired[i])
    redis.call('HSET', dead, expired[i], expired[i + 1] .. '|0')
  end
end
local result = {'ok', fmt(now)}
local d = redis.call('HGETALL', dead)
for i = 1, #d, 2 do
  local last, lease = string.match(d[i + 1], '^([^|]*)|(.*)$')
  if tonumber(lease) < now then
    redis.call('HSET', dead, d[i], last .. '|' .. fmt(now + ttl))
    result[#result + 1] = d[i]
    result[#result + 1] = last
  end
end
return result
""")

# KEYS: dead, names, the dead incarnation's users set.  ARGV: incarnation.
# The cleanup is over: forget the incarnation (if its set is empty by now).
REAPED = Script("reaped", r"""
if redis.call('SCARD', KEYS[3]) > 0 then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
local name = string.match(ARGV[1], '^(.*)/[^/]*$')
if name and redis.call('HGET', KEYS[2], name) == ARGV[1] then
  redis.call('HDEL', KEYS[2], name)
end
return 1
""")

# KEYS: each user's hash in turn.  ARGV: the dead incarnation, when it was
# last alive, the tombstone ttl, then the users' ids.  APPLY's "reap" (with no
# status write) for many users in one call, so that the cleanup after a dead
# node of tens of thousands of users costs Redis and the survivor one command
# per batch, not per user.  The keys are still each user's own (hash-tagged):
# Redis Cluster refuses a call whose keys span slots (CROSSSLOT), and the bus
# then falls back to one APPLY per user.  Returns how many users changed.
REAP_MANY = Script("reap_many", _APPLY_FUNCTION + r"""
local changed = 0
for i = 4, #ARGV do
  changed = changed + apply(KEYS[i - 3], ARGV[i], ARGV[1], 'reap', '', nil, '',
    false, '', ARGV[2], ARGV[2], ARGV[3])
end
return changed
""")

SCRIPTS = (APPLY, APPLY_MANY, HEARTBEAT, REAPED, REAP_MANY)
