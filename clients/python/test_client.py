"""Checks raftkit_client.py, and the protocol it was written from, against a
real running cluster:

    python3 test_client.py [--cluster NAME] ADDR [ADDR ...]
    RAFTKIT_ADDRS=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 RAFTKIT_CLUSTER=demo python3 test_client.py

ADDR are the nodes' client addresses; NAME is `[cluster] name` (default
"demo"). Without addresses only the tests that need no cluster run. Other
arguments go to unittest (-v, -k PATTERN). The tests write keys under
"pyclient/" and leave every node without faults.
"""

import os
import sys
import time
import unittest

from raftkit_client import (BadRequest, Client, Connection, FaultSpec, NotLeader,
                            SessionExpired, Timeout, Unreachable, crc32c, decode_command,
                            encode_frame, get_op, kv_request, put_op)

ADDRS = [a for a in os.environ.get("RAFTKIT_ADDRS", "").split(",") if a]
CLUSTER = os.environ.get("RAFTKIT_CLUSTER", "demo")
MIB = 1 << 20


class WithoutCluster(unittest.TestCase):
    def test_crc32c_check_value(self):
        self.assertEqual(crc32c(b"123456789"), 0xE3069283)
        self.assertEqual(crc32c(b""), 0)

    def test_example_put_frame_matches_the_protocol_doc(self):
        body = bytes([0, 0, 0, 0, 0, 0, 0, 1]) + kv_request(put_op("k", "v"), 1, 1)
        frame = encode_frame(20, body)
        self.assertEqual(frame[:12].hex(" "), "52 4b 01 14 00 00 00 25 e0 9e 23 b2")
        self.assertEqual(len(body), 37)


class AgainstCluster(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not ADDRS:
            raise unittest.SkipTest("no cluster addresses (RAFTKIT_ADDRS or arguments)")

    def setUp(self):
        self.c = self.client()
        self.leader = self.c.find_leader(timeout=60)

    def tearDown(self):
        self.c.close()

    def client(self, **kw):
        c = Client(ADDRS, CLUSTER, timeout=30, **kw)
        self.addCleanup(c.close)
        return c

    def key(self, name):
        return f"pyclient/{self.id().rsplit('.', 1)[-1]}/{name}"

    def followers(self):
        return [a for a in ADDRS if a != self.c.find_leader(timeout=60)]

    def test_put_get_delete(self):
        k = self.key("a")
        put = self.c.put(k, b"1")
        self.assertEqual(put.kind, "Done")
        got = self.c.get(k)
        self.assertEqual((got.kind, got.value), ("Value", b"1"))
        self.assertGreaterEqual(got.index, put.index, "a read sees the write")
        d = self.c.delete(k)
        self.assertEqual((d.kind, d.existed), ("Deleted", True))
        self.assertGreater(d.index, put.index)
        self.assertIsNone(self.c.get(k).value)
        self.assertEqual(self.c.delete(k).existed, False)

    def test_cas(self):
        k = self.key("n")
        self.assertEqual(self.c.cas(k, None, b"0").kind, "CasOk", "absent: set")
        m = self.c.cas(k, None, b"x")
        self.assertEqual((m.kind, m.value), ("CasMismatch", b"0"))
        self.assertEqual(self.c.cas(k, b"0", b"1").kind, "CasOk")
        m = self.c.cas(k, b"0", b"2")
        self.assertEqual((m.kind, m.value), ("CasMismatch", b"1"))
        self.assertEqual(self.c.get(k).value, b"1")

    def test_append_is_logged_as_a_command(self):
        a = self.c.append(b"raw bytes \x00\xff")
        self.assertEqual(a.kind, "Done")
        page = self.c.log(self.leader, a.index, a.index)
        self.assertEqual([e.index for e in page.entries], [a.index])
        cmd = decode_command(page.entries[0].data)
        self.assertEqual(page.entries[0].kind, 1)
        self.assertEqual((cmd.client_id, cmd.seq), (self.c.client_id, self.c.seq))
        self.assertEqual(cmd.op, ("append", b"raw bytes \x00\xff"))

    def test_stale_read_at_every_node(self):
        k = self.key("s")
        put = self.c.put(k, b"everywhere")
        for addr in ADDRS:
            deadline = time.monotonic() + 30
            while True:
                got = self.c.get(k, stale=True, node=addr)
                if got.value == b"everywhere":
                    self.assertGreaterEqual(got.index, put.index)
                    break
                self.assertLess(time.monotonic(), deadline, f"{addr} never applied {k}")
                time.sleep(0.05)

    def test_write_to_a_follower_is_redirected(self):
        follower = self.followers()[0]
        with self.assertRaises(NotLeader) as e:
            self.c.call(follower, kv_request(put_op(self.key("r"), b"x"), self.c.client_id, 1))
        self.assertEqual(e.exception.leader_addr, self.leader)
        self.assertIsNotNone(e.exception.leader_id)
        with self.assertRaises(NotLeader):
            self.c.call(follower, kv_request(get_op(self.key("r")), 0, 0))
        c = self.client()
        c.leader = follower
        self.assertEqual(c.put(self.key("r"), b"y").kind, "Done")
        self.assertEqual(c.leader, self.leader, "the client follows the redirect")

    def test_retry_answers_the_first_index(self):
        """Awaits the server change: a retry is answered with its first index."""
        k = self.key("k")
        first = self.c.put(k, b"1")
        self.client().put(self.key("other"), b"2")  # the log moves on
        again = self.c.put(k, b"1", seq=self.c.seq)
        self.assertEqual((again.kind, again.index), ("Done", first.index))
        # A retry at a follower that applied it: the same answer, not NotLeader.
        follower = self.followers()[0]
        deadline = time.monotonic() + 30
        while self.c.status(follower).last_applied < again.index:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.05)
        r = self.c.call(follower, kv_request(put_op(k, b"1"), self.c.client_id, self.c.seq))
        self.assertEqual((r.kind, r.index), ("Done", first.index))

    def test_write_older_than_the_last_applied_is_refused(self):
        self.c.put(self.key("o"), b"1")
        self.c.put(self.key("o"), b"2")
        with self.assertRaises(BadRequest) as e:
            self.c.put(self.key("o"), b"3", seq=self.c.seq - 1)
        self.assertIn("older than the last one applied", e.exception.message)
        self.assertEqual(self.c.get(self.key("o")).value, b"2")

    def test_value_over_the_limit_is_refused(self):
        """Awaits the server change: limits checked before proposing."""
        k = self.key("big")
        with self.assertRaises(BadRequest) as e:
            self.c.put(k, bytes(4 * MIB + 1))
        self.assertIn("VALUE_BYTES_MAX", e.exception.message)
        with self.assertRaises(BadRequest) as e:
            self.c.put("k" * (64 * 1024 + 1), b"v")
        self.assertIn("KEY_BYTES_MAX", e.exception.message)
        self.assertIsNone(self.c.get(k).value, "nothing was applied")
        self.assertEqual(self.c.seq, 0, "a refused write gives its seq back")
        self.assertEqual(self.c.put(k, b"small").kind, "Done", "the connection stays usable")

    def test_values_at_the_limit_round_trip(self):
        k, value = self.key("max"), bytes(range(256)) * (4 * MIB // 256)
        self.assertEqual(len(value), 4 * MIB)
        self.assertEqual(self.c.put(k, value).kind, "Done")
        self.assertEqual(self.c.get(k).value, value)
        self.assertEqual(self.c.put("k" * (64 * 1024), b"v").kind, "Done")

    def test_fresh_client_past_seq_1_is_session_expired(self):
        """Awaits the server change: SessionExpired (code 8)."""
        c = self.client()
        k = self.key("e")
        with self.assertRaises(SessionExpired) as e:
            c.put(k, b"x", seq=5)
        self.assertEqual(e.exception.code, 8)
        self.assertIsNone(c.get(k).value, "never applied")
        fresh = self.client()
        self.assertEqual(fresh.put(k, b"y").kind, "Done", "a new session starts at seq 1")

    def test_status_of_every_node(self):
        statuses = [self.c.status(a) for a in ADDRS]
        ids = [s.id for s in statuses]
        self.assertEqual(len(set(ids)), len(ADDRS), "distinct ids")
        self.assertEqual([s.addr for s in statuses], ADDRS)
        leaders = [s for s in statuses if s.role == "leader"]
        self.assertEqual(len(leaders), 1)
        self.assertEqual(len(leaders[0].peers), len(ADDRS) - 1)
        for s in statuses:
            self.assertIn(s.role, ("leader", "follower"))
            self.assertEqual(s.fault, FaultSpec())
            self.assertLessEqual(s.last_applied, s.commit_index)
            self.assertLessEqual(s.commit_index, s.last_index)
            self.assertGreater(s.uptime_ms, 0)
            self.assertEqual(sorted(s.membership.voters), sorted(ids))
            self.assertEqual(s.membership.outgoing, [])
            self.assertFalse(s.membership_changing)

    def test_members_at_the_leader(self):
        leader = self.c.find_leader()
        m = self.c.members(leader)
        self.assertEqual(m.leader, m.node)
        self.assertEqual(len(m.membership.voters), len(ADDRS))
        self.assertEqual(set(m.matched), set(m.membership.voters))
        self.assertFalse(m.changing)

    def test_log_pages(self):
        for i in range(7):
            self.c.put(self.key(str(i)), str(i))
        last = self.c.status(self.leader).last_index
        page = self.c.log(self.leader, 1, last, entries_max=3)
        self.assertLessEqual(len(page.entries), 3)
        self.assertEqual(len(page.entries), 3, "a small entries_max gives full pages")
        entries = list(self.c.log_range(self.leader, 0, last, entries_max=3))
        start = max(1, page.first_index)
        self.assertEqual([e.index for e in entries], list(range(start, last + 1)))
        ops = [decode_command(e.data).op for e in entries if e.kind == 1]
        self.assertIn(("put", self.key("6").encode(), b"6"), ops)
        for e in entries:
            if e.kind == 0:
                self.assertEqual(e.data, b"", "a no-op holds no data")
        self.assertEqual(len(self.c.log(self.leader, 1, last, entries_max=0).entries), 1,
                         "entries_max 0 is treated as 1")
        self.assertEqual(self.c.log(self.leader, last + 1, 0).entries, [])

    def test_fault_is_set_shown_and_healed(self):
        node = self.followers()[0]
        self.c.fault(node, FaultSpec(drop_rate_ppm=1, delay_ms=1, jitter_ms=1))
        self.assertEqual(self.c.status(node).fault, FaultSpec([], 1, 1, 1))
        other = self.c.status(self.leader).id
        spec = FaultSpec(duplicate_rate_ppm=2, block_to=[other], disk_fault=1, disk_stall_ms=3)
        self.c.fault(node, spec)
        self.assertEqual(self.c.status(node).fault, spec)
        self.c.fault(node, FaultSpec())
        self.assertEqual(self.c.status(node).fault, FaultSpec())

    def test_bad_fault_spec_is_refused(self):
        """Awaits the server change: fault specs validated."""
        node = self.followers()[0]
        ids = [self.c.status(a).id for a in ADDRS]
        unknown = max(ids) + 100
        bad = [FaultSpec(drop_rate_ppm=2_000_000), FaultSpec(delay_ms=60_001),
               FaultSpec(jitter_ms=60_001), FaultSpec(partition=[[ids[0]], [unknown]]),
               FaultSpec(partition=[[ids[0]], [ids[0]]]), FaultSpec(partition=[[ids[0]], []]),
               FaultSpec(duplicate_rate_ppm=2_000_000), FaultSpec(block_to=[unknown]),
               FaultSpec(disk_fault=1, disk_stall_ms=0)]
        try:
            for spec in bad:
                with self.assertRaises(BadRequest, msg=str(spec)):
                    self.c.fault(node, spec)
                self.assertEqual(self.c.status(node).fault, FaultSpec(), "nothing changed")
        finally:
            self.c.fault(node, FaultSpec())

    def test_pipelined_answers_are_matched_by_request_id(self):
        conn = Connection(self.leader, CLUSTER)
        self.addCleanup(conn.close)
        base = self.c.client_id ^ 0x5A5A
        sent = {}
        for i in range(20):
            sent[conn.send(kv_request(put_op(self.key(str(i)), str(i)), base + i, 1))] = ("kv", i)
            sent[conn.send(bytes([2]))] = ("status", i)
        deadline = time.monotonic() + 30
        for request_id in reversed(list(sent)):
            r = conn.answer(request_id, deadline)
            self.assertEqual(r.u8(), 1 if sent[request_id][0] == "kv" else 4)

    def test_unreachable_node_and_client_timeout(self):
        c = Client(["127.0.0.1:1"], CLUSTER, timeout=0.5)
        with self.assertRaises(Unreachable):
            c.status("127.0.0.1:1")
        with self.assertRaises(Timeout):
            c.put(self.key("t"), b"x")


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--cluster" in args:
        i = args.index("--cluster")
        CLUSTER = args[i + 1]
        del args[i:i + 2]
    addrs = [a for a in args if not a.startswith("-") and ":" in a]
    if addrs:
        ADDRS[:] = addrs
    unittest.main(argv=[sys.argv[0]] + [a for a in args if a not in addrs])
