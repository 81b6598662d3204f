"""Message kinds spoken between carme processes (first item of every message tuple).

driver/worker -> node daemon (requests carry a request id; the daemon answers REPLY):
    HELLO, LEASE, RETURN_LEASE, ALLOC, EXPORT, INCREF, DECREF, GET_OBJECT, FN_PUT, FN_GET,
    CREATE_ACTOR, ACTOR_INFO, KILL_ACTOR, KILL_WORKER, BLOCKED, UNBLOCKED, EVENTS, STATE,
    PG_CREATE, PG_REMOVE, PG_INFO, PG_WAIT, STORE_STATS, NAMED_ACTORS
daemon -> worker (its control socketpair): RUN_ACTOR, EXIT
worker -> daemon: WORKER_READY, ACTOR_READY, ACTOR_FAILED
submitter -> worker: PUSH, ACTOR_CALL, CANCEL
worker -> submitter: RESULT, ITEM (streaming generator value), LOG
daemon -> driver: LOG (output written straight to a worker's file descriptors), ACTOR_DIED
"""

REPLY = 0
HELLO = 1
LEASE = 2
RETURN_LEASE = 3
ALLOC = 4
EXPORT = 5
INCREF = 6
DECREF = 7
GET_OBJECT = 8
FN_PUT = 9
FN_GET = 10
CREATE_ACTOR = 11
ACTOR_INFO = 12
KILL_ACTOR = 13
KILL_WORKER = 14
BLOCKED = 15
UNBLOCKED = 16
EVENTS = 17
STATE = 18
PG_CREATE = 19
PG_REMOVE = 20
PG_INFO = 21
PG_WAIT = 22
STORE_STATS = 23
NAMED_ACTORS = 24
GET_REMOTE = 25   # a local copy of an object whose primary is on another node
NODE_ADDRESS = 26

RUN_ACTOR = 40
EXIT = 41
WORKER_READY = 42
ACTOR_READY = 43
ACTOR_FAILED = 44

PUSH = 60
ACTOR_CALL = 61
CANCEL = 62
RESULT = 63
ITEM = 64
LOG = 65
ACTOR_DIED = 66
PEER = 67  # submitter -> worker, first message: who is calling (its worker id)

# Object payloads: ("i", pickled_bytes, [out-of-band buffers as bytes]) inline, or
# ("s", offset, size) in the node's shared-memory store. An error is a payload whose
# value is a carme.exceptions error, flagged by the third element of a result triple.
INLINE = "i"
SHARED = "s"
