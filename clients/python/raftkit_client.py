"""A raftkit client in Python 3 (standard library only), written from
docs/PROTOCOL.md: frames with CRC-32C, the client handshake, every client
request, leader discovery through NotLeader, and retries that reuse the
write's (client_id, seq) so that a retried write applies once.

    c = Client(["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"], "demo")
    c.put(b"k", b"v")           # -> KvResult(index=.., kind='Done', ..)
    c.get(b"k").value           # -> b"v" (linearizable; stale=True: any node)
    c.status("127.0.0.1:7002")  # -> Status(..) of that node

Answers that are not results raise: a node's Error as the subclass of
NodeError for its code (BadRequest, SessionExpired, ...), NotLeader from
`call` (the `Client` methods follow it), Unreachable when no connection
can be made, ProtocolError for a bad frame.
"""

import random
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

# ---- CRC-32C (Castagnoli): reflected 0x82F63B78, init and xorout 0xFFFFFFFF


def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc, table = 0xFFFFFFFF, _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# ---- frames

MAGIC = 0x524B
VERSION = 1
HEADER = struct.Struct(">HBBII")  # magic, version, type, length, crc
FRAME_BYTES_MAX = 64 << 20
HELLO, HELLO_OK, HELLO_REJECT, REQUEST, RESPONSE = 1, 2, 3, 20, 21
KNOWN_TYPES = {1, 2, 3, 10, 11, 20, 21}
ROLES = {1: "follower", 2: "precandidate", 3: "candidate", 4: "leader"}
KEY_BYTES_MAX = 64 << 10
VALUE_BYTES_MAX = 4 << 20


def encode_frame(frame_type: int, body: bytes) -> bytes:
    return HEADER.pack(MAGIC, VERSION, frame_type, len(body), crc32c(body)) + body


# ---- errors


class RaftkitError(Exception):
    """Anything that went wrong talking to raftkit."""


class ProtocolError(RaftkitError):
    """A frame that breaks docs/PROTOCOL.md, or an answer that makes no sense."""


class Unreachable(RaftkitError):
    """No connection to a node, or it closed the connection."""


class NotLeader(RaftkitError):
    """The node is not the leader; it names the one it knows, if any."""

    def __init__(self, leader_id: Optional[int], leader_addr: str):
        super().__init__(f"not the leader (leader: {leader_id}, {leader_addr or 'unknown'})")
        self.leader_id = leader_id
        self.leader_addr = leader_addr


class NodeError(RaftkitError):
    """An Error response (or HelloReject); `code` as in docs/PROTOCOL.md."""

    code = 7

    def __init__(self, message: str, code: Optional[int] = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self):
        return f"{type(self).__name__} ({self.code}): {self.message}"


class BadRequest(NodeError):
    code = 1


class WrongCluster(NodeError):
    code = 2


class UnknownPeer(NodeError):
    code = 3


class Unavailable(NodeError):
    code = 4


class Timeout(NodeError):
    """Code 5: nodes do not send it; this client raises it when its own deadline passes."""

    code = 5


class TooBusy(NodeError):
    code = 6


class Internal(NodeError):
    code = 7


class SessionExpired(NodeError):
    code = 8


class DiskFull(NodeError):
    """Code 10: the node's disk is full and it did not propose the write; a copy
    sent earlier elsewhere may still apply, so `kv` retries it with the same seq."""

    code = 10


class Forbidden(NodeError):
    """Code 11: the connection's certificate does not allow it (a TLS cluster)."""

    code = 11


ERRORS = {c.code: c for c in (BadRequest, WrongCluster, UnknownPeer, Unavailable,
                              Timeout, TooBusy, Internal, SessionExpired, DiskFull,
                              Forbidden)}


def node_error(code: int, message: str) -> NodeError:
    """The exception for an error code; unknown codes are Internal."""
    return ERRORS.get(code, Internal)(message, code)


# ---- field encodings


class Writer:
    def __init__(self):
        self.b = bytearray()

    def u8(self, v):
        self.b += struct.pack(">B", v)
        return self

    def u32(self, v):
        self.b += struct.pack(">I", v)
        return self

    def u64(self, v):
        self.b += struct.pack(">Q", v)
        return self

    def bytes(self, v):
        self.u32(len(v))
        self.b += v
        return self

    def opt_bytes(self, v):
        return self.u8(0) if v is None else self.u8(1).bytes(v)


class Reader:
    def __init__(self, b: bytes):
        self.b, self.pos = memoryview(b), 0

    def take(self, n):
        if self.pos + n > len(self.b):
            raise ProtocolError(f"truncated body: needs {n} bytes at {self.pos}, has {len(self.b)}")
        s = self.b[self.pos:self.pos + n]
        self.pos += n
        return s

    def u8(self):
        return self.take(1)[0]

    def bool(self):
        v = self.u8()
        if v > 1:
            raise ProtocolError(f"bool byte {v}")
        return v == 1

    def u16(self):
        return struct.unpack(">H", self.take(2))[0]

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def u64(self):
        return struct.unpack(">Q", self.take(8))[0]

    def bytes(self):
        return bytes(self.take(self.u32()))

    def string(self):
        return self.bytes().decode("utf-8")

    def opt_bytes(self):
        return self.bytes() if self.bool() else None

    def opt_u64(self):
        return self.u64() if self.bool() else None

    def finish(self):
        if self.pos != len(self.b):
            raise ProtocolError(f"{len(self.b) - self.pos} trailing bytes")


# ---- what the nodes answer


@dataclass
class KvResult:
    """A Kv answer: `kind` is Done, Value, Deleted, CasOk or CasMismatch;
    `value` the value (Value) or current value (CasMismatch); `existed` for Deleted."""
    index: int
    kind: str
    value: Optional[bytes] = None
    existed: Optional[bool] = None


@dataclass
class Peer:
    id: int
    match_index: int
    next_index: int
    state: int
    inflight: int


@dataclass
class FaultSpec:
    partition: List[List[int]] = field(default_factory=list)
    drop_rate_ppm: int = 0
    delay_ms: int = 0
    jitter_ms: int = 0
    duplicate_rate_ppm: int = 0
    block_to: List[int] = field(default_factory=list)
    # 0 none, 1 stall (disk_stall_ms), 2 EIO on the next fsync, 3 full
    disk_fault: int = 0
    disk_stall_ms: int = 0


@dataclass
class Membership:
    """Voters (the new ones while joint), the old voters while joint,
    learners, and each member's address."""
    voters: List[int]
    outgoing: List[int]
    learners: List[int]
    addrs: dict


def decode_membership(data: bytes) -> Membership:
    """A membership entry's data (format 1), as in docs/PROTOCOL.md."""
    r = Reader(data)
    if r.u8() != 1:
        raise ProtocolError("unknown membership format")
    sets = [[r.u64() for _ in range(r.u32())] for _ in range(3)]
    addrs = {}
    for _ in range(r.u32()):
        node = r.u64()
        addrs[node] = r.string()
    if r.bool():
        raise ProtocolError("membership extension this client does not know")
    r.finish()
    return Membership(sets[0], sets[1], sets[2], addrs)


@dataclass
class Members:
    node: int
    leader: Optional[int]
    membership: Membership
    membership_index: int
    changing: bool
    commit_index: int
    last_index: int
    matched: dict


@dataclass
class Status:
    id: int
    role: str
    term: int
    voted_for: Optional[int]
    leader: Optional[int]
    commit_index: int
    last_applied: int
    first_index: int
    last_index: int
    peers: List[Peer]
    addr: str
    fault: FaultSpec
    uptime_ms: int
    membership: Membership
    membership_index: int
    membership_changing: bool
    transferring_to: Optional[int]


@dataclass
class Entry:
    index: int
    term: int
    kind: int  # 0 no-op, 1 command
    data: bytes


@dataclass
class LogPage:
    commit_index: int
    first_index: int
    last_index: int
    entries: List[Entry]


@dataclass
class Command:
    """A command entry's data: client_id, seq, and the op as (name, fields...)."""
    client_id: int
    seq: int
    op: tuple


def _b(v) -> bytes:
    return v.encode("utf-8") if isinstance(v, str) else bytes(v)


def _op(r: Reader) -> tuple:
    tag = r.u8()
    if tag == 1:
        return ("put", r.bytes(), r.bytes())
    if tag in (2, 3):
        return ("get" if tag == 2 else "delete", r.bytes())
    if tag == 4:
        return ("cas", r.bytes(), r.opt_bytes(), r.bytes())
    if tag == 5:
        return ("append", r.bytes())
    raise ProtocolError(f"unknown op tag {tag}")


def decode_command(data: bytes) -> Command:
    """Decodes a command entry's data (format 1, client_id, seq, op)."""
    r = Reader(data)
    if r.u8() != 1:
        raise ProtocolError("unknown command format")
    c = Command(r.u64(), r.u64(), _op(r))
    r.finish()
    return c


def _fault(w: Writer, f: FaultSpec):
    w.u32(len(f.partition))
    for g in f.partition:
        w.u32(len(g))
        for node in g:
            w.u64(node)
    w.u32(f.drop_rate_ppm).u32(f.delay_ms).u32(f.jitter_ms)
    w.u32(f.duplicate_rate_ppm).u32(len(f.block_to))
    for node in f.block_to:
        w.u64(node)
    w.u8(f.disk_fault).u32(f.disk_stall_ms)


def _read_fault(r: Reader) -> FaultSpec:
    groups = [[r.u64() for _ in range(r.u32())] for _ in range(r.u32())]
    drop, delay, jitter, dup = r.u32(), r.u32(), r.u32(), r.u32()
    block_to = [r.u64() for _ in range(r.u32())]
    return FaultSpec(groups, drop, delay, jitter, dup, block_to, r.u8(), r.u32())


def decode_response(r: Reader):
    """The answer of one Response body after its request_id; raises for
    NotLeader and Error."""
    kind = r.u8()
    if kind == 1:
        index, tag = r.u64(), r.u8()
        if tag in (1, 4):
            return KvResult(index, "Done" if tag == 1 else "CasOk")
        if tag in (2, 5):
            return KvResult(index, "Value" if tag == 2 else "CasMismatch", value=r.opt_bytes())
        if tag == 3:
            return KvResult(index, "Deleted", existed=r.bool())
        raise ProtocolError(f"unknown result tag {tag}")
    if kind == 2:
        raise NotLeader(r.opt_u64(), r.string())
    if kind == 3:
        raise node_error(r.u16(), r.string())
    if kind == 4:
        head = [r.u64(), ROLES.get(r.u8(), "unknown"), r.u64(), r.opt_u64(), r.opt_u64(),
                r.u64(), r.u64(), r.u64(), r.u64()]
        peers = [Peer(r.u64(), r.u64(), r.u64(), r.u8(), r.u32()) for _ in range(r.u32())]
        addr, fault, uptime = r.string(), _read_fault(r), r.u64()
        membership = decode_membership(r.bytes())
        return Status(*head, peers, addr, fault, uptime, membership, r.u64(), r.bool(),
                      r.opt_u64())
    if kind == 5:
        commit_index, first_index, last_index = r.u64(), r.u64(), r.u64()
        entries = [Entry(r.u64(), r.u64(), r.u8(), r.bytes()) for _ in range(r.u32())]
        return LogPage(commit_index, first_index, last_index, entries)
    if kind == 6:
        return None  # FaultOk
    if kind == 7:
        node, leader = r.u64(), r.opt_u64()
        membership = decode_membership(r.bytes())
        index, changing, commit_index, last_index = r.u64(), r.bool(), r.u64(), r.u64()
        matched = {}
        for _ in range(r.u32()):
            member = r.u64()
            matched[member] = r.u64()
        return Members(node, leader, membership, index, changing, commit_index, last_index,
                       matched)
    if kind == 8:
        return ("transfer_started", r.u64())
    raise ProtocolError(f"unknown response type {kind}")


# ---- one connection


class Connection:
    """A client connection to one node. Requests may be pipelined: answers
    can come out of order, so each is matched to its request by request_id."""

    def __init__(self, addr: str, cluster: str, timeout: float = 5.0):
        host, port = addr.rsplit(":", 1)
        self.addr = addr
        try:
            self.sock = socket.create_connection((host, int(port)), timeout=timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.sendall(encode_frame(HELLO, Writer().bytes(_b(cluster)).u8(2).b))
            frame_type, body = self.read_frame(time.monotonic() + timeout)
        except OSError as e:
            self.close()
            raise Unreachable(f"{addr}: {e}") from e
        except RaftkitError:
            self.close()
            raise
        r = Reader(body)
        if frame_type == HELLO_REJECT:
            self.close()
            raise node_error(r.u16(), r.string())
        if frame_type != HELLO_OK:
            self.close()
            raise ProtocolError(f"{addr} answered Hello with frame type {frame_type}")
        self.node_id = r.u64()
        self.next_request_id = 1
        self.answers = {}  # request_id -> response body, read while waiting for another

    def close(self):
        if getattr(self, "sock", None) is not None:
            self.sock.close()
            self.sock = None

    def _read_exactly(self, n: int, deadline: float) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("timed out")
            self.sock.settimeout(left)
            chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                raise Unreachable(f"{self.addr} closed the connection")
            buf += chunk
        return bytes(buf)

    def read_frame(self, deadline: float) -> Tuple[int, bytes]:
        magic, version, frame_type, length, crc = HEADER.unpack(self._read_exactly(HEADER.size, deadline))
        if magic != MAGIC or version != VERSION or frame_type not in KNOWN_TYPES:
            raise ProtocolError(f"bad header: magic {magic:#x}, version {version}, type {frame_type}")
        if length > FRAME_BYTES_MAX:
            raise ProtocolError(f"frame body of {length} bytes is over {FRAME_BYTES_MAX}")
        body = self._read_exactly(length, deadline)
        if crc32c(body) != crc:
            raise ProtocolError(f"CRC mismatch from {self.addr}")
        return frame_type, body

    def send(self, request: bytes) -> int:
        """Sends one request (its type and fields); returns its request_id."""
        request_id = self.next_request_id
        self.next_request_id += 1
        self.sock.sendall(encode_frame(REQUEST, struct.pack(">Q", request_id) + request))
        return request_id

    def answer(self, request_id: int, deadline: float) -> Reader:
        """The body of the answer to `request_id`, after its request_id."""
        while request_id not in self.answers:
            frame_type, body = self.read_frame(deadline)
            if frame_type != RESPONSE:
                raise ProtocolError(f"frame type {frame_type} on a client connection")
            r = Reader(body)
            self.answers[r.u64()] = r
        return self.answers.pop(request_id)

    def call(self, request: bytes, timeout: float):
        request_id = self.send(request)
        r = self.answer(request_id, time.monotonic() + timeout)
        answer = decode_response(r)
        r.finish()
        return answer


# ---- requests


def kv_request(op: bytes, client_id: int, seq: int, stale_read: bool = False) -> bytes:
    return Writer().u8(1).u8(stale_read).u64(client_id).u64(seq).b + op


def put_op(key, value) -> bytes:
    return bytes(Writer().u8(1).bytes(_b(key)).bytes(_b(value)).b)


def get_op(key) -> bytes:
    return bytes(Writer().u8(2).bytes(_b(key)).b)


def delete_op(key) -> bytes:
    return bytes(Writer().u8(3).bytes(_b(key)).b)


def cas_op(key, expected, new) -> bytes:
    expected = None if expected is None else _b(expected)
    return bytes(Writer().u8(4).bytes(_b(key)).opt_bytes(expected).bytes(_b(new)).b)


def append_op(data) -> bytes:
    return bytes(Writer().u8(5).bytes(_b(data)).b)


# ---- the client


class Client:
    """Finds the leader, follows redirects and retries writes with the same
    (client_id, seq) until an answer or `timeout` seconds. One write in
    flight at a time (the protocol's session rule); use one Client per thread."""

    attempt_timeout = 5.0  # longest wait for one node's answer before trying another

    def __init__(self, addrs: List[str], cluster: str, timeout: float = 10.0,
                 client_id: Optional[int] = None):
        self.addrs = list(addrs)
        self.cluster = cluster
        self.timeout = timeout
        # Random per client process, never reused: see "Sessions" in PROTOCOL.md.
        self.client_id = client_id or random.SystemRandom().getrandbits(64) or 1
        self.seq = 0  # seq of the last write sent
        self.leader = self.addrs[0]  # the node tried first
        self.conns = {}

    def close(self):
        for c in self.conns.values():
            c.close()
        self.conns.clear()

    def call(self, addr: str, request: bytes, timeout: Optional[float] = None):
        """One request to one node, no retry: the answer, or an exception."""
        timeout = self.timeout if timeout is None else timeout
        try:
            if addr not in self.conns:
                self.conns[addr] = Connection(addr, self.cluster, min(timeout, self.attempt_timeout))
            return self.conns[addr].call(request, timeout)
        except (OSError, Unreachable, ProtocolError) as e:
            conn = self.conns.pop(addr, None)
            if conn:
                conn.close()
            if isinstance(e, RaftkitError):
                raise
            if isinstance(e, socket.timeout):
                raise Timeout(f"{addr} did not answer within {timeout:.1f} s") from e
            raise Unreachable(f"{addr}: {e}") from e

    def _next(self, addr: str) -> str:
        i = self.addrs.index(addr) if addr in self.addrs else -1
        return self.addrs[(i + 1) % len(self.addrs)]

    def kv(self, op: bytes, stale_read: bool = False, seq: Optional[int] = None,
           node: Optional[str] = None, timeout: Optional[float] = None) -> KvResult:
        """Sends `op` until a node answers it. A write takes the next seq
        (or `seq`, to retry); a read sends the current one, which nodes
        ignore. A stale read goes to `node` (default: the last leader) only."""
        fresh = seq is None and op[0] != 2  # a new write, not a retry or a Get
        if fresh:
            self.seq += 1
        seq = self.seq if seq is None else seq
        request = kv_request(op, self.client_id, seq, stale_read)
        target = node or self.leader
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        last, pause = "nothing tried", 0.02
        while time.monotonic() < deadline:
            left = deadline - time.monotonic()
            try:
                answer = self.call(target, request, min(left, self.attempt_timeout))
                if not isinstance(answer, KvResult):
                    raise ProtocolError(f"{target} answered a Kv request with {answer!r}")
                if not stale_read:
                    self.leader = target
                return answer
            except BadRequest:
                # Not applied, no session opened: the seq may be used again
                # (a first write refused leaves the next one at seq 1).
                if fresh and seq == self.seq:
                    self.seq -= 1
                raise
            except NotLeader as e:
                last = f"{target}: {e}"
                if e.leader_addr and e.leader_addr != target:
                    if e.leader_addr not in self.addrs:
                        self.addrs.append(e.leader_addr)
                    target = e.leader_addr
                    continue
                target = self._next(target)
            except (Unavailable, TooBusy, Timeout, Unreachable, DiskFull) as e:
                last = f"{target}: {e}"
                if stale_read:
                    if isinstance(e, Unreachable):
                        raise
                elif isinstance(e, (Unreachable, Timeout)):
                    target = self._next(target)
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.5)
        raise Timeout(f"no answer within the deadline (last: {last})")

    def put(self, key, value, **kw) -> KvResult:
        return self.kv(put_op(key, value), **kw)

    def get(self, key, stale=False, **kw) -> KvResult:
        return self.kv(get_op(key), stale_read=stale, **kw)

    def delete(self, key, **kw) -> KvResult:
        return self.kv(delete_op(key), **kw)

    def cas(self, key, expected, new, **kw) -> KvResult:
        return self.kv(cas_op(key, expected, new), **kw)

    def append(self, data, **kw) -> KvResult:
        return self.kv(append_op(data), **kw)

    def status(self, addr: str, timeout: Optional[float] = None) -> Status:
        return self.call(addr, bytes([2]), timeout)

    def log(self, addr: str, frm: int = 1, to: int = 0, entries_max: int = 10_000,
            timeout: Optional[float] = None) -> LogPage:
        return self.call(addr, Writer().u8(3).u64(frm).u64(to).u32(entries_max).b, timeout)

    def log_range(self, addr: str, frm: int = 1, to: int = 0, entries_max: int = 10_000):
        """Every entry of `addr`'s log from `frm` to `to` (0: the last), page by page."""
        while True:
            page = self.log(addr, frm, to, entries_max)
            yield from page.entries
            end = to or page.last_index
            if not page.entries or page.entries[-1].index >= end:
                return
            frm = page.entries[-1].index + 1

    def fault(self, addr: str, spec: FaultSpec, timeout: Optional[float] = None):
        w = Writer().u8(4)
        _fault(w, spec)
        return self.call(addr, w.b, timeout)

    def members(self, addr: str, timeout: Optional[float] = None) -> Members:
        """The membership as `addr` sees it (raises NotLeader at a follower
        that knows the leader)."""
        return self.call(addr, Writer().u8(5).u8(1).b, timeout)

    def find_leader(self, timeout: Optional[float] = None) -> str:
        """The address of the node that says it leads, asking each in turn."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while time.monotonic() < deadline:
            for addr in self.addrs:
                try:
                    if self.status(addr, self.attempt_timeout).role == "leader":
                        self.leader = addr
                        return addr
                except (Unreachable, Timeout, ProtocolError):
                    pass  # down or restarting: ask the others
            time.sleep(0.1)
        raise Timeout("no node says it leads")
