"""Several cloud replicas as one master: a torch.distributed group and its sync rounds.

docs/REPLICAS.md is the design; shared/training/replica_sync.py is the arithmetic. This
module moves the bytes: rendezvous as torchrun does (``MASTER_ADDR``, ``MASTER_PORT``,
``RANK``, ``WORLD_SIZE``; in a StatefulSet ``RANK`` is the pod ordinal), a gloo (CPU) or
NCCL (GPU) process group, and one thread that runs the rounds. The compute thread never
waits on a collective: it only takes the snapshot and applies the merge, both short.

Membership by generations. A collective with a dead member fails (gloo notices a closed
connection at once, a silent peer after ``replica_timeout_s``) and leaves the group unusable,
so a failure ends the *generation*: every survivor builds a new process group, generation
g + 1, from whoever joins within ``replica_join_window_s`` through the rendezvous store
(a ``TCPStore`` that rank 0 hosts). A replica that starts later — a restarted pod — joins
the next generation the same way: members see it waiting at their next round and re-form.
A new generation starts with the most advanced member's agreed model, which every member
rebases onto, keeping its own un-synchronised updates. This needs no coordinator in the
data path and no collective that outlives a failure; its cost is one join window of
standalone training per membership change. Should rank 0 itself die, its store goes with
it: survivors train standalone and reconnect once the StatefulSet has restarted it.

Readiness: a replica that cannot reach its group (it has not joined one yet, or the
rendezvous store does not answer) is not ready (:attr:`ReplicaGroup.problem`, which the
cloud's ``/readyz`` returns), and logs so once, not at every retry.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import PrefixStore, Store, TCPStore

from simultrain.shared.contracts import ReplicaGroupStatus
from simultrain.shared.errors import ConfigError
from simultrain.shared.training.master import CloudMaster
from simultrain.shared.training.replica_sync import (
    Merge,
    Reference,
    SyncLedger,
    decode_watermarks,
    encode_watermarks,
)
from simultrain.shared.training.runtime import CloudSessionState

__all__ = ["Rendezvous", "ReplicaGroup"]

log = logging.getLogger("simultrain.cloud.replicas")
T = TypeVar("T")

OnCompute = Callable[[Callable[[], T]], T]


@dataclass(frozen=True, slots=True)
class Rendezvous:
    """Where the replicas meet, read from the environment as torchrun sets it."""

    master_addr: str
    master_port: int
    rank: int | None  # None: a client of the store only (compose's --scale gives no ordinal)
    world_size: int | None  # replicas expected at start; None: whoever joins in the window

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Rendezvous | None:
        """The rendezvous, or None for a single cloud: ``MASTER_ADDR`` unset, or
        ``WORLD_SIZE=1`` (so one StatefulSet serves both; a single cloud keeps checkpoints)."""
        env = os.environ if env is None else env
        addr = env.get("MASTER_ADDR")
        if not addr or env.get("WORLD_SIZE") == "1":
            return None
        try:
            port = int(env.get("MASTER_PORT", "29500"))
            rank = _rank(env)
            world = int(env["WORLD_SIZE"]) if env.get("WORLD_SIZE") else None
        except ValueError as exc:
            raise ConfigError(f"replica rendezvous: {exc}") from exc
        if not 0 < port < 65536:
            raise ConfigError(f"MASTER_PORT must be a TCP port, got {port}")
        if world is not None and world < 1:
            raise ConfigError(f"WORLD_SIZE must be at least 1, got {world}")
        if rank is not None and (rank < 0 or (world is not None and rank >= world)):
            raise ConfigError(f"RANK {rank} is outside WORLD_SIZE {world}")
        return cls(addr, port, rank, world)


def _rank(env: Mapping[str, str]) -> int | None:
    """``RANK``; the StatefulSet sets it from the pod's ordinal (k8s/base/cloud.yaml)."""
    return int(env["RANK"]) if env.get("RANK") else None


class _Broken(Exception):
    """The generation is over (a collective or the store failed)."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable  # the store itself did not answer


class ReplicaGroup:
    """This replica's membership and the thread that runs the sync rounds."""

    def __init__(
        self,
        rendezvous: Rendezvous,
        master: CloudMaster,
        sessions: dict[str, CloudSessionState],
        on_compute: OnCompute[Any],
        *,
        sync_every: int,
        sync_interval_s: float,
        timeout_s: float,
        join_window_s: float,
        backend: str = "auto",
        merge: Merge = "mean",
    ) -> None:
        self.rendezvous = rendezvous
        self.master = master
        self.sessions = sessions
        self.on_compute = on_compute
        self.sync_every = sync_every
        self.sync_interval_s = sync_interval_s
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.join_window_s = join_window_s
        if backend == "auto":
            backend = "nccl" if master.device.type == "cuda" else "gloo"
        if backend not in ("gloo", "nccl"):
            raise ConfigError(f"replica backend must be gloo, nccl or auto, got {backend!r}")
        if backend == "nccl" and master.device.type != "cuda":
            raise ConfigError("the nccl backend needs the master on a CUDA device")
        self.backend = backend
        self.ledger = SyncLedger(master, merge=merge)
        self.generation = -1  # the last generation this replica was a member of
        self.rank: int | None = None  # in the current generation
        self.size = 0
        self.failures = 0
        # Why this replica is not (yet) a member of its group; None while it is.
        self.problem: str | None = f"joining the replica group at {self._where()}"
        self._store: Store | None = None
        self._pg: Any = None
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._round_done = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="replica-sync", daemon=True)

    # --- control from the service ---------------------------------------------------------

    def start(self) -> None:
        if self.rendezvous.rank == 0:
            # The store lives as long as this process: create it now, before peers look.
            try:
                self._store = self._connect(is_master=True)
            except (RuntimeError, OSError) as exc:
                raise ConfigError(
                    f"cannot host the rendezvous store on port {self.rendezvous.master_port}: {exc}"
                ) from exc
        self._thread.start()

    def stop(self) -> None:
        """Leave the group. Dropping the process group closes its connections, so the other
        replicas' next collective fails at once (a new generation) instead of timing out."""
        self._stop.set()
        self._kick.set()
        self._thread.join(timeout=5.0)  # a round in flight ends when its peers answer
        self._pg = None

    def updated(self) -> None:
        """The master applied an update: a round may be due (called after each step)."""
        if self.ledger.local_updates(self.master) >= self.sync_every:
            self._kick.set()

    def wait_round(self, timeout_s: float) -> bool:
        """Block until the next round completes (or ``timeout_s``): what the service waits
        on before an edge that says BYE may forget its batches."""
        with self._round_done:
            target = self.ledger.rounds + 1
            return self._round_done.wait_for(
                lambda: self.ledger.rounds >= target or self._stop.is_set(), timeout=timeout_s
            )

    def adopt(self, edge_id: str, reconcile_offset: int) -> None:
        """Before a session opens (compute thread): start from what the rounds carried."""
        self.ledger.adopt(self.sessions, edge_id, reconcile_offset=reconcile_offset)

    def status(self) -> ReplicaGroupStatus:
        return ReplicaGroupStatus(
            backend=self.backend,
            problem=self.problem,
            merge=self.ledger.merge_kind,
            configured_rank=self.rendezvous.rank,
            generation=self.generation,
            rank=self.rank,
            size=self.size if self._pg is not None else 0,
            rounds=self.ledger.rounds,
            global_version=self.ledger.mark_version,
            failures=self.failures,
            committed_edges={
                edge: {"applied_seq": m.applied_seq, "samples": m.samples}
                for edge, m in sorted(self.ledger.committed.items())
            },
        )

    # --- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._pg is None:
                    self._join()
                    continue
                self._kick.wait(self.sync_interval_s)
                self._kick.clear()
                if self._stop.is_set():
                    break
                self._round()
            except _Broken as exc:
                self.failures += 1
                self._pg = None
                if exc.unreachable:
                    self._unreachable(str(exc))
                else:
                    log.warning("replica group generation %d ended: %s", self.generation, exc)
                self._stop.wait(0.2)

    def _where(self) -> str:
        return f"tcp://{self.rendezvous.master_addr}:{self.rendezvous.master_port}"

    def _unreachable(self, reason: str) -> None:
        """Not ready, and one line saying why; the retries that follow stay quiet."""
        first = self.problem is None or self.problem.startswith("joining")
        self.problem = f"cannot reach the replica group at {self._where()}: {reason}"
        if first:
            log.error("%s; not ready until it can (retrying)", self.problem)
        else:
            log.debug("%s", self.problem)

    def _connect(self, *, is_master: bool) -> Store:
        return TCPStore(
            self.rendezvous.master_addr,
            self.rendezvous.master_port,
            is_master=is_master,
            wait_for_workers=False,
            timeout=self.timeout,
        )

    def _store_or_broken(self) -> Store:
        if self._store is None:
            try:
                self._store = self._connect(is_master=False)
            except (RuntimeError, OSError) as exc:
                raise _Broken(_first_line(exc), unreachable=True) from exc
            # A store we (re)connect to may be a new one (rank 0 restarted): its generations
            # count from 0 again, and the reference rebase merges us in whatever we held.
            self.generation = -1
        return self._store

    def _join(self) -> None:
        """Join the next generation: a rank from the store, the group, the reference model."""
        store = self._store_or_broken()
        try:
            formed = int(store.get("formed")) if store.check(["formed"]) else -1
            generation = max(self.generation + 1, formed + 1)
            rank = int(store.add(f"g{generation}/joined", 1)) - 1
            if rank == 0:
                self._lead(store, generation)
            store.wait([f"g{generation}/size"], self.timeout)
            size = int(store.get(f"g{generation}/size"))
        except (RuntimeError, ValueError) as exc:
            if self.rendezvous.rank != 0:
                self._store = None  # reconnect: rank 0 may have restarted with a new store
            raise _Broken(f"rendezvous failed: {_first_line(exc)}", unreachable=True) from exc
        self.generation = generation
        if rank >= size:
            log.info("generation %d formed without us; joining the next one", generation)
            return
        try:
            prefix = PrefixStore(f"g{generation}/pg", store)
            pg: Any
            if self.backend == "nccl":
                options = dist.ProcessGroupNCCL.Options()
                options._timeout = self.timeout
                pg = dist.ProcessGroupNCCL(prefix, rank, size, options)
            else:
                pg = dist.ProcessGroupGloo(prefix, rank, size, self.timeout)
            self._pg, self.rank, self.size = pg, rank, size
            self._rebase()
        except (RuntimeError, ValueError) as exc:
            self._pg = None
            raise _Broken(f"forming generation {generation} failed: {exc}") from exc
        if self.problem is not None and not self.problem.startswith("joining"):
            log.info("replica group at %s reachable again", self._where())
        self.problem = None
        log.info(
            "replica group generation %d: rank %d of %d (%s), global version %d",
            generation,
            rank,
            size,
            self.backend,
            self.ledger.mark_version,
        )

    def _lead(self, store: Store, generation: int) -> None:
        """The first to join closes the generation: once everyone expected is in, or when the
        window ends (at start, replicas load data at different speeds: a longer window)."""
        expected = self.rendezvous.world_size or 0
        window = self.join_window_s * (10 if generation == 0 else 1)
        deadline = time.monotonic() + window
        key = f"g{generation}/joined"
        while time.monotonic() < deadline and int(store.add(key, 0)) < expected:
            if self._stop.wait(0.05):
                break
        store.set(f"g{generation}/size", str(int(store.add(key, 0))))
        store.set("formed", str(generation))

    def _rebase(self) -> None:
        """Start the generation from its most advanced member's agreed model."""
        device = self._comm_device()
        rounds = torch.zeros(self.size, dtype=torch.float64, device=device)
        assert self.rank is not None
        rounds[self.rank] = float(self.ledger.rounds) + 1e-3 * (self.size - self.rank)
        self._wait(self._pg.allreduce([rounds]))
        source = int(torch.argmax(rounds).item())
        ledger = self.ledger
        mine = ledger.reference()
        header = torch.tensor(
            [mine.mark_version, mine.mark_edge_updates, mine.rounds],
            dtype=torch.float64,
            device=device,
        )
        base = mine.base.to(device).clone()
        self._wait(self._pg.broadcast(header, source))
        self._wait(self._pg.broadcast(base, source))
        committed = self._broadcast_bytes(encode_watermarks(mine.committed), source)
        version, edge_updates, rounds_at = (round(float(x)) for x in header)
        ref = Reference(base, version, edge_updates, rounds_at, decode_watermarks(committed))
        self.on_compute(lambda: ledger.rebase(self.master, ref, self.sessions))

    def _round(self) -> None:
        ledger = self.ledger
        own = self.on_compute(lambda: ledger.snapshot(self.master, self.sessions))
        device = self._comm_device()
        joiners = self._joiners_waiting()
        gathered = self._all_gather_bytes(encode_watermarks(own.watermarks))
        total = own.packed(joiners=joiners).to(device)
        self._wait(self._pg.allreduce([total]))
        tables = [decode_watermarks(b) for b in gathered]
        self.on_compute(lambda: ledger.merge(self.master, total, tables, self.sessions))
        with self._round_done:
            self._round_done.notify_all()
        if float(total[-1]) > 0:
            log.info("a replica waits to join: re-forming the group")
            self._pg = None  # the next _join makes generation + 1, with it

    def _joiners_waiting(self) -> int:
        if self.rank != 0 or self._store is None:
            return 0
        try:
            return int(self._store.add(f"g{self.generation + 1}/joined", 0))
        except RuntimeError as exc:
            raise _Broken(f"rendezvous store: {exc}") from exc

    # --- collectives ------------------------------------------------------------------------

    def _comm_device(self) -> torch.device:
        return self.master.device if self.backend == "nccl" else torch.device("cpu")

    def _wait(self, work: Any) -> None:
        try:
            work.wait()
        except RuntimeError as exc:  # gloo: peer closed / timeout; DistError derives from it
            raise _Broken(str(exc).splitlines()[0]) from exc

    def _all_gather_bytes(self, data: bytes) -> list[bytes]:
        device = self._comm_device()
        sizes = torch.zeros(self.size, dtype=torch.int64, device=device)
        sizes[self.rank] = len(data)
        self._wait(self._pg.allreduce([sizes]))
        longest = int(sizes.max())
        mine = torch.zeros(longest, dtype=torch.uint8, device=device)
        mine[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        outs = [torch.zeros(longest, dtype=torch.uint8, device=device) for _ in range(self.size)]
        self._wait(self._pg.allgather([outs], [mine]))
        return [bytes(o[: int(n)].cpu().numpy()) for o, n in zip(outs, sizes, strict=True)]

    def _broadcast_bytes(self, data: bytes, source: int) -> bytes:
        device = self._comm_device()
        size = torch.tensor([len(data)], dtype=torch.int64, device=device)
        self._wait(self._pg.broadcast(size, source))
        buf = torch.zeros(int(size), dtype=torch.uint8, device=device)
        if self.rank == source:
            buf[:] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        self._wait(self._pg.broadcast(buf, source))
        return bytes(buf.cpu().numpy())


def _first_line(exc: BaseException) -> str:
    """torch's errors carry a C++ stack trace after the first line."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def serve_store(port: int, *, host: str = "0.0.0.0") -> None:
    """Host the rendezvous store alone, for replicas that have no rank 0 to host it (compose's
    ``--scale`` gives containers no ordinal): ``python -m simultrain.cloud.replicas PORT``
    (0: any free port; the LISTENING line names the one bound).
    The store outlives any replica, so every replica can die and rejoin."""
    # Held for the life of the process: a TCPStore serves only while the object lives.
    store = TCPStore(host, port, is_master=True, wait_for_workers=False)
    print(f"LISTENING tcp://{host}:{store.port}", flush=True)
    threading.Event().wait()  # until the process is stopped


if __name__ == "__main__":
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve_store(int(sys.argv[1]) if len(sys.argv) > 1 else 29500)
