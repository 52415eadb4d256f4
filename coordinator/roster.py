"""The roster of nodes: registration on pop, name and key ownership, the maintenance rules, and a
short-lived in-memory view of who is online (for `is_possible`, ETAs and `/status/models`)."""

import bisect
import math
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from coordinator.auth import Caller, require_account
from coordinator.capabilities import DEMAND_COLUMNS, declared
from coordinator.errors import HordeError
from coordinator.events import can_serve
from coordinator.services import Services
from coordinator.storage import NameTaken
from coordinator.storage.records import Account, QueueEntry, Worker, WorkerCaps
from coordinator.storage.slices import worker_slice
from protocol.errors import RC
from protocol.jobs import PopRequest

# What other components change in the workers table (maintenance, counters, deletions) shows here
# within this long. This process's pops show at once, and so do nodes registered (or changed) by
# another process's pops, which that process announces. Reading every worker costs O(nodes) (a
# second of CPU per 10,000 on a loaded machine), so it is read whole once, then a slice at a time.
ROSTER_RELOAD_SECONDS = 30.0
# After the first whole read, the table is read again a slice per sweep, so every worker once per
# ROSTER_RELOAD_SECONDS. A slice runs inside whichever request asks first, which waits for it: at 10,000
# nodes one whole read held the event loop for a second or more, a slice every quarter second (84 rows) for
# 5-15 ms, a request's p99 by itself; a slice every 50 ms (17 rows) holds it for about 1.
ROSTER_SWEEP_SECONDS = 0.05
ROSTER_SLICE_MIN = 5
# How often every known node is looked at for what changes with time alone: a node quiet for
# `worker_online_seconds` leaves the online list, one whose automatic maintenance ran out joins it. What
# an event changes (a pop, a slice, another process's word) moves a node in or out at once (`_seen`).
# The look is taken a share at a time, by whichever request asks: all 10,000 at once held one for 10-18 ms.
ONLINE_RECHECK_SECONDS = 5.0
ABLE_CACHED = 4096  # answers of `Roster.able` kept while the online nodes stay the same
# A pop refreshes `last_seen` here at once; the stored one is written at most this often, not on every
# re-poll of a parked node (one every 20 s). Other processes read it within ROSTER_RELOAD_SECONDS more:
# 75 s at most, inside the forecast's 90 s (outlook.PLANNING_SEEN_SECONDS).
LAST_SEEN_WRITE_INTERVAL = 45.0
# Far above any request (3072×3072), and within a 32-bit database integer, whatever a node claims.
MAX_NODE_PIXELS = 2**31 - 1
# Workers an account may register (AI Horde's numbers): each is stored and listed in /v2/workers,
# so this bounds what one account adds to that answer. Deleting a worker frees its place.
WORKERS_PER_ACCOUNT = 3
WORKERS_PER_TRUSTED_ACCOUNT = 20


def worker_limit(account: Account) -> int:
    return WORKERS_PER_TRUSTED_ACCOUNT if account.trusted else WORKERS_PER_ACCOUNT


def too_many_workers(account: Account, limit: int) -> HordeError:
    kind = "a trusted" if account.trusted else "an untrusted"
    return HordeError(
        403,
        RC.FORBIDDEN,
        f"To avoid abuse, {kind} account can run at most {limit} workers, and {account.display_name} already has "
        f"{limit}. Pop with one of their names, or delete one (DELETE /v2/workers/{{id}}) to add another.",
    )


# Automatic maintenance. A node that misses `max_missed_deadlines` (3) deadlines in a row, with no
# delivered image between them, gets no jobs for MAINTENANCE_CLEAN_SECONDS after the last miss; then
# it is back with a clean count. A node gets no jobs while in maintenance, so it cannot prove itself
# with successes: a clean period is the only way back that needs nobody. The owner's maintenance
# (PUT /v2/workers) never lifts by itself.
MAINTENANCE_CLEAN_SECONDS = 600.0


def count_missed_deadline(worker: Worker, assigned_at: float | None, now: float, threshold: int) -> bool:
    """Count one missed deadline against `worker`; False when it adds nothing. A job the node took
    before its last counted miss is part of that miss: a crash drops every job the node held, whose
    deadlines pass one after another (a batch's are staggered) or together, and that is one miss."""
    if assigned_at is not None and assigned_at <= worker.last_missed_at:
        return False
    worker.missed_deadlines += 1
    worker.last_missed_at = now
    owners = worker.maintenance and worker.maintenance_until is None
    if worker.missed_deadlines >= threshold and not owners:
        worker.maintenance, worker.maintenance_until = True, now + MAINTENANCE_CLEAN_SECONDS
        worker.maintenance_msg = f"missed {worker.missed_deadlines} job deadlines in a row"
    return True


def maintenance_over(worker: Worker, now: float) -> bool:
    """Whether the worker's automatic maintenance has run its clean period."""
    return worker.maintenance and worker.maintenance_until is not None and now >= worker.maintenance_until


def in_maintenance(worker: Worker, now: float) -> bool:
    return worker.maintenance and not maintenance_over(worker, now)


def lift_maintenance(worker: Worker) -> None:
    worker.maintenance, worker.maintenance_until, worker.maintenance_msg = False, None, None
    worker.missed_deadlines = 0


def maintenance_refusal(worker: Worker) -> HordeError:
    """AI Horde's answer to a pop from a node in maintenance (403 WorkerMaintenance): why, and what to do."""
    lift_now = f'PUT /v2/workers/{worker.id} {{"maintenance": false}}'
    if worker.maintenance_until is None:
        reason = worker.maintenance_msg or "no reason given"
        message = (
            f"Worker {worker.name} is in maintenance, set by its owner ({reason}), and gets no jobs until "
            f"the owner lifts it: {lift_now}."
        )
    else:
        until = datetime.fromtimestamp(worker.maintenance_until, UTC).strftime("%H:%M:%S UTC")
        message = (
            f"Worker {worker.name} is in maintenance: it {worker.maintenance_msg} (it crashed, or its jobs ran "
            f"longer than their time limit). It lifts by itself at {until}, {MAINTENANCE_CLEAN_SECONDS / 60:.0f} "
            f"minutes after the last miss. Meanwhile make sure the node finishes its jobs in time (on a slow "
            f"machine: lower max_pixels, max_batch or queue_size); its owner can lift it now: {lift_now}."
        )
    return HordeError(403, RC.WORKER_MAINTENANCE, message)


def wrong_credentials(message: str) -> HordeError:
    return HordeError(403, RC.WRONG_CREDENTIALS, message)


class Roster:
    """Also this process's view of who is online, kept up to date as nodes pop: a pop (a node's
    last-seen time) updates its one entry, never the list. The workers table is read whole once
    (`loads`), then a slice each sweep, so each worker again every ROSTER_RELOAD_SECONDS, for what
    other processes and other components changed. Online lists and the per-model index are rebuilt
    only when who is online, or what one of them can do, changed."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.loads = 0  # whole reads of the workers table (one, at the first question)
        self.slices = 0  # slices of it read since (`_read_slice`)
        self._slice_after = ""  # the id the next slice starts after
        self._known: dict[str, Worker] = {}  # every worker, as last seen by this process
        self._known_ids: list[str] | None = None  # `_known`'s ids in order (None: to sort again; `_gone_from`)
        self._online_ids: set[str] = set()
        self._view: OnlineView | None = None  # None: membership or capabilities changed since built
        self._loaded_at = float("-inf")
        self._swept_at = float("-inf")
        self._rechecked_at = float("-inf")
        self._recheck_from = 0  # where in `_known_ids` the next share of the look at every node starts

    async def register(self, caller: Caller, pop: PopRequest) -> Worker:
        """The worker behind this pop, created or updated from what the pop says it can do."""
        account = require_account(caller, RC.ANON_FORBIDDEN_WORKER)
        try:
            return await self._register(caller, account, pop)
        except NameTaken:
            # A concurrent first pop of the same new node may have just registered it: look again.
            try:
                return await self._register(caller, account, pop)
            except NameTaken as error:
                raise HordeError(403, RC.WORKER_NAME_EXISTS, f"Worker name {pop.name} is taken.") from error

    async def _register(self, caller: Caller, account: Account, pop: PopRequest) -> Worker:
        now = self.services.clock()
        account_id = account.id
        existing = caller.worker  # a signed node: just read by its key
        if existing is None or existing.name.lower() != pop.name.lower():
            async with self.services.database.reader() as tx:
                existing = await tx.worker_by("name", pop.name)
        if existing is not None:
            self._check_ownership(existing, caller, account_id)
        elif caller.worker is not None:
            raise wrong_credentials(f"This key belongs to worker {caller.worker.name}, not to {pop.name}.")
        worker = self._updated(existing, caller, account_id, pop, now)
        if existing is None or worker != replace(existing, last_seen=worker.last_seen):
            await self._save(worker, None if existing else account)
        elif now - existing.last_seen > LAST_SEEN_WRITE_INTERVAL:
            # Only its last-seen time is due: its name and key are as stored, so there is nothing to check.
            async with self.services.database.transaction() as tx:
                await tx.save_worker_state(worker)
            self._seen(worker)
        else:
            self._seen(worker)
        return worker

    @staticmethod
    def _check_ownership(worker: Worker, caller: Caller, account_id: int) -> None:
        if worker.owner_id != account_id:
            raise wrong_credentials(f"Wrong credentials to submit as worker {worker.name}.")
        if caller.key is not None and worker.public_key not in (None, caller.key_text):
            raise wrong_credentials(f"Worker {worker.name} is bound to another key.")
        if caller.worker is not None and caller.worker.id != worker.id:
            raise wrong_credentials("This key belongs to a different worker.")

    @staticmethod
    def _updated(existing: Worker | None, caller: Caller, owner_id: int, pop: PopRequest, now: float) -> Worker:
        base = existing or Worker.new(str(uuid.uuid4()), pop.name, owner_id, now)
        return replace(
            base,
            public_key=base.public_key or caller.key_text,
            models=list(dict.fromkeys(pop.models)),
            max_pixels=min(pop.max_pixels, MAX_NODE_PIXELS),
            nsfw=pop.nsfw,
            threads=pop.threads,
            img2img=pop.allow_img2img,
            painting=pop.allow_painting,
            lora=pop.allow_lora,
            post_processing=pop.allow_post_processing,
            bridge_agent=pop.bridge_agent,
            last_seen=now,
            **declared(pop),
        )

    async def _save(self, worker: Worker, new_for: Account | None = None) -> None:
        """Save a worker; a new one (`new_for` its owner) only while the owner is under its limit,
        counted in the same transaction so concurrent first pops cannot pass it together."""
        async with self.services.database.transaction() as tx:
            if new_for is not None and await tx.count_workers(new_for.id) >= (limit := worker_limit(new_for)):
                raise too_many_workers(new_for, limit)
            await tx.save_worker(worker)
        if self._seen(worker):
            await self.services.database.announce("worker", worker.id)  # other processes: `changed`

    def _seen(self, worker: Worker) -> bool:
        """A node popped: update its entry; True when what the lists are built from changed (what it can
        do, its name, its maintenance), which rebuilds them, as its coming online does. Anything else (its
        last-seen time, the counters and speeds its last result moved) is updated in place, in the entry
        the lists hold: at 10,000 nodes a rebuild after every result was most of a request's time."""
        known = self._known.get(worker.id)
        news = known is None or listed_as(known) != listed_as(worker)
        if known is None:
            self._known_ids = None  # one more id to sort in
        if known is None or news:
            self._known[worker.id] = worker
            self._view = None
        else:
            vars(known).update(vars(worker))
        self._place(worker, self.services.clock())
        return news

    def _place(self, worker: Worker, now: float) -> None:
        """In or out of the online list, as `_is_online` says now."""
        online = self._is_online(worker, now)
        if online != (worker.id in self._online_ids):
            (self._online_ids.add if online else self._online_ids.discard)(worker.id)
            self._view = None

    async def changed(self, worker_id: str) -> None:
        """Another process registered or changed this node: read that one row."""
        async with self.services.database.reader() as tx:
            worker = await tx.worker_by("id", worker_id)
        if worker is not None:
            self._seen(worker)
        elif worker_id in self._known:
            self._forget(worker_id)

    async def _read_slice(self) -> None:
        """The next slice of the workers table (`ROSTER_SLICE_MIN`): changed entries are updated, deleted
        workers dropped; the last-seen time this process knows is kept when later than the stored one."""
        size = max(ROSTER_SLICE_MIN, math.ceil(len(self._known) * ROSTER_SWEEP_SECONDS / ROSTER_RELOAD_SECONDS))
        async with self.services.database.reader() as tx:
            workers = await worker_slice(tx, self._slice_after, size)
        self.slices += 1
        upto = workers[-1].id if len(workers) == size else None  # None: this slice reached the end
        for worker in workers:
            if (known := self._known.get(worker.id)) is not None:
                worker.last_seen = max(worker.last_seen, known.last_seen)
            self._seen(worker)
        for gone in self._gone_from(workers, upto):
            self._forget(gone)
        self._slice_after = upto or ""

    def _gone_from(self, workers: list[Worker], upto: str | None) -> list[str]:
        """Known workers whose ids the slice (after `_slice_after`, up to `upto`) covered but did not read:
        deleted. Found by bisection in the known ids, kept sorted while nobody joins or leaves: a pass over
        every known id, per slice, was 1 ms at 10,000."""
        ids = self._sorted_ids()
        first = bisect.bisect_right(ids, self._slice_after)
        last = len(ids) if upto is None else bisect.bisect_right(ids, upto)
        read = {worker.id for worker in workers}
        return [i for i in ids[first:last] if i not in read]

    def _forget(self, worker_id: str) -> None:
        del self._known[worker_id]
        self._known_ids = None
        self._online_ids.discard(worker_id)
        self._view = None

    def _recheck_share(self, now: float) -> None:
        """Look at the share of the known nodes that the time since the last look calls for, in id order
        from where that one ended, so that each is looked at once per ONLINE_RECHECK_SECONDS."""
        ids = self._sorted_ids()
        if not ids:
            return
        elapsed = now - self._rechecked_at
        if elapsed >= ONLINE_RECHECK_SECONDS:
            share, self._rechecked_at = len(ids), now
        else:  # the time a share stands for is counted off, so the rest carries over to the next look
            share = int(len(ids) * elapsed / ONLINE_RECHECK_SECONDS)
            self._rechecked_at += share * ONLINE_RECHECK_SECONDS / len(ids)
        start = self._recheck_from % len(ids)
        for worker_id in [*ids[start : start + share], *ids[: max(0, start + share - len(ids))]]:
            self._place(self._known[worker_id], now)
        self._recheck_from = start + share

    def _sorted_ids(self) -> list[str]:
        if self._known_ids is None:
            self._known_ids = sorted(self._known)
        return self._known_ids

    def _is_online(self, worker: Worker, now: float) -> bool:
        return worker.last_seen >= now - self.services.config.worker_online_seconds and not in_maintenance(worker, now)

    async def _current(self) -> "OnlineView":
        now = self.services.clock()
        if now - self._loaded_at > ROSTER_RELOAD_SECONDS and self.loads == 0:
            async with self.services.database.reader() as tx:
                workers = await tx.list_workers()
            self.loads += 1
            self._known, self._known_ids = {worker.id: worker for worker in workers}, None
            self._online_ids &= self._known.keys()
            self._loaded_at, self._swept_at, self._view = now, float("-inf"), None
        if now - self._swept_at > ROSTER_SWEEP_SECONDS:
            if now - self._loaded_at > ROSTER_SWEEP_SECONDS:
                await self._read_slice()
            self._swept_at = now
        self._recheck_share(now)
        if self._view is None:
            self._view = OnlineView.of(sorted((self._known[i] for i in self._online_ids), key=lambda w: w.name))
        return self._view

    async def online(self) -> list[Worker]:
        return (await self._current()).workers

    async def online_caps(self) -> list[tuple[Worker, WorkerCaps]]:
        """The online nodes with what they can do (for the wait forecast)."""
        return (await self._current()).pairs

    async def able(self, entry: QueueEntry) -> list[Worker]:
        """The online nodes that could serve `entry` (for warnings, `is_possible` and ETAs): only those
        serving one of its models are looked at."""
        view = await self._current()
        key = demand_key(entry)
        able = view.able.get(key)
        if able is None:
            if len(view.able) >= ABLE_CACHED:
                view.able.clear()
            able = view.able[key] = self._able(view, entry)
        return able

    @staticmethod
    def _able(view: "OnlineView", entry: QueueEntry) -> list[Worker]:
        if len(entry.models) == 1:
            pairs = view.by_model.get(entry.models[0], [])
        elif entry.models:  # a node serving several of them is looked at once
            pairs = list({id(p[0]): p for model in entry.models for p in view.by_model.get(model, ())}.values())
        else:
            pairs = view.pairs
        return [worker for worker, caps in pairs if can_serve(caps, entry)]


def listed_as(worker: Worker) -> tuple[Any, ...]:
    """What the online lists are built from: a change here rebuilds them (`Roster._seen`)."""
    return WorkerCaps.of(worker), worker.name, worker.maintenance, worker.maintenance_until


def demand_key(entry: QueueEntry) -> tuple[Any, ...]:
    """What decides which nodes can serve `entry` (every `can_serve` input): a request's checks and
    its images ask the same question while the online nodes stay the same."""
    demands = tuple(getattr(entry, column) for column in DEMAND_COLUMNS)
    return tuple(entry.models), demands, tuple(entry.workers), entry.worker_blacklist, tuple(entry.excluded)


@dataclass(frozen=True)
class OnlineView:
    """The online nodes, by name, with what they can do, and indexed by model."""

    workers: list[Worker]
    pairs: list[tuple[Worker, WorkerCaps]]
    by_model: dict[str, list[tuple[Worker, WorkerCaps]]]
    able: dict[tuple[Any, ...], list[Worker]] = field(default_factory=dict)  # `Roster.able` by demand

    @classmethod
    def of(cls, workers: list[Worker]) -> "OnlineView":
        pairs = [(worker, WorkerCaps.of(worker)) for worker in workers]
        by_model: dict[str, list[tuple[Worker, WorkerCaps]]] = {}
        for pair in pairs:
            for model in pair[0].models:
                by_model.setdefault(model, []).append(pair)
        return cls(workers, pairs, by_model)
