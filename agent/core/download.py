"""A job's download: signed metadata, then chunks, each checked, then the whole file.

``meta -> chunks -> verify``: the device asks the hub for the TUF metadata (``fetch_meta``),
has the adapter verify it (:class:`~agent.events.VerifyMetadata`), checks the manifest it
signs against the command and this device, then keeps up to ``chunk_window`` chunks
requested (``fetch_chunks``) and checks each against its signed sha256 before it is
written. A download that stalls asks again with backoff (the time-out follows the
observed round trip, agent/core/roundtrip.py), then fails.

Fan-out (docs/protocol.md): a deploy command that names a fan-out topic has the device
read it; once the metadata is verified the device waits for the hub's one publish per
chunk there instead of asking, and checks each chunk exactly as a fetched one. The
fan-out is over for this device at the end of a round it saw from chunk 0, or when
nothing came for ``fan_wait_s`` once a round reached it (``fan_first_wait_s`` before):
then it fetches only what it still misses.
"""

from __future__ import annotations

from agent.core.budget import no_room
from agent.core.context import CoreContext, log
from agent.core.job import Job
from agent.core.phases import Phase, Trigger
from agent.core.roundtrip import RoundTrip
from agent.events import (
    CheckStagedChunks,
    MetadataVerified,
    Outbox,
    Publish,
    StagedChunks,
    Subscribe,
    Unsubscribe,
    VerifyAndStage,
    VerifyMetadata,
    WriteChunk,
)
from shared import protocol
from shared.chunks import chunk_ok, chunk_span
from shared.manifest import Manifest, ManifestError
from shared.reasons import Reason

# fetch_timeout_s multiples between asking again, at most: the backoff doubles the adapted
# time-out (up to 8 x fetch_timeout_s itself) but never waits past this; multiplying the
# two let the last of 10,000 devices wait 640 s between asks (bench rollout)
MAX_BACKOFF = 8


class Download:
    """The download steps of the job in ``ctx.state.job``."""

    def __init__(self, ctx: CoreContext) -> None:
        self.ctx = ctx
        self.rtt = RoundTrip(ctx.config.fetch_timeout_s)

    # ------------------------------------------------------------- requests

    def request_meta(self, out: Outbox, job: Job, now: float) -> None:
        job.req = self.ctx.next_req()
        self.rtt.asked(job.req, now)
        body: dict[str, str | int] = {
            "req": job.req,
            "root_version": self.ctx.root_version,
            "target": job.target,
        }
        known = self.ctx.trusted_targets
        if known is not None and now < known[1]:  # expired: let the hub send it, and TUF
            body["targets_version"] = known[0]  # refuse it as expired if it is

        out.add(Publish(self.ctx.topic("fetch"), protocol.encode("fetch_meta", body, ts=now)))

    def request_chunks(self, out: Outbox, job: Job) -> None:
        """Keep up to ``chunk_window`` chunks requested; ask in batches at half-window."""
        window = self.ctx.config.chunk_window
        pending = job.pending
        if len(pending) > window // 2:
            return
        have = set(job.have)
        count = len(job.manifest.chunks)
        wanted = [i for i in range(count) if i not in have and i not in pending][
            : window - len(pending)
        ]
        if not wanted:
            return
        pending.extend(wanted)
        job.req = self.ctx.next_req()
        self.rtt.asked(job.req, job.last_progress)
        self.ctx.counts["chunks_asked"] += len(wanted)
        body = {"req": job.req, "target": job.target, "chunks": wanted}
        payload = protocol.encode("fetch_chunks", body, ts=job.last_progress)
        out.add(Publish(self.ctx.topic("fetch"), payload))

    def resume(self, out: Outbox, job: Job, now: float) -> None:
        """Ask again for what was in flight before a restart or a disconnect."""
        if job.phase is Phase.META:
            self.request_meta(out, job, now)
        elif job.phase is Phase.CHUNKS:
            if job.fan_live and job.fanout is not None:  # a reconnect mid fan-out
                out.add(Subscribe(job.fanout, 1))
                job.fan_last = now
            # The staging file, not the saved state, records what arrived (the state is
            # not saved per chunk): re-hash every chunk slot and keep what matches.
            manifest = job.manifest
            slots = frozenset(range(len(manifest.chunks)))
            out.add(
                CheckStagedChunks(job.verified_target, manifest.chunk_size, manifest.chunks, slots)
            )
        elif job.phase is Phase.VERIFY:
            out.add(VerifyAndStage(job.model, job.version, job.verified_target))

    def check_timeout(self, out: Outbox, job: Job, now: float) -> None:
        """No answer for a while: ask again, with backoff; after too many tries, fail.
        Waiting on a fan-out: once it is idle, fetch what is missing."""
        if job.fan_live and job.phase is Phase.CHUNKS:
            config = self.ctx.config
            wait = config.fan_wait_s if job.fan_seen else config.fan_first_wait_s
            if now - max(job.fan_last, job.last_progress) > wait:
                self.ctx.counts["fan_waited_out"] += 1
                self.end_fan(out, job, now)
            return
        ceiling = MAX_BACKOFF * self.ctx.config.fetch_timeout_s
        backoff = min(self.rtt.timeout() * 2**job.retries, ceiling)
        if now - job.last_progress < backoff:
            return
        job.retries += 1
        if job.retries > self.ctx.config.max_fetch_retries:
            why = f"no answer after {job.retries} tries"
            self.ctx.fail_job(out, Reason.FETCH_TIMEOUT, why, now)
            return
        job.last_progress = now
        self.ctx.counts["re_requests"] += 1
        if job.phase is Phase.META:
            self.request_meta(out, job, now)
        else:
            job.pending = []
            self.request_chunks(out, job)

    # ------------------------------------------------------------- metadata

    def on_meta_blob(self, out: Outbox, job: Job, blob: protocol.Blob, now: float) -> None:
        if job.phase is not Phase.META or job.req is None:
            self.ctx.drop("stale_blob", "metadata for no download waiting for it")
            return
        req = str(blob.header["req"])
        self.rtt.answered(req, now)
        if req != job.req:
            # The answer to a request asked again after a time-out (a busy hub answers
            # late, not never): the metadata is verified all the same, so it serves;
            # dropping it cost 10,000 devices a second round of answers.
            self.ctx.counts["late_meta_used"] += 1
            job.req = req
        job.last_progress = now
        out.add(VerifyMetadata(req, protocol.split_meta_blob(blob), job.target))

    def on_metadata(self, ev: MetadataVerified, out: Outbox) -> None:
        ctx = self.ctx
        job = ctx.state.job
        if job is None or job.phase is not Phase.META or ev.req != job.req:
            return
        ctx.root_version = ev.root_version
        ctx.trusted_targets = ev.trusted_targets
        if ev.director_keys is not None:
            ctx.director_keys = ev.director_keys
            signed_by = job.keyids  # None in a job saved before commands were signed
            if signed_by is not None and not set(signed_by) & set(ev.director_keys.keys):
                # The newer root this fetch walked to no longer lists the command's key.
                detail = "the command's director key is not in the newer root"
                ctx.fail_job(out, Reason.UNKNOWN_KEY, detail, ev.now)
                return
        target = ev.target
        try:
            manifest = Manifest.from_custom(target.custom)
            manifest.check_length(target.length)
        except ManifestError as e:
            ctx.fail_job(out, Reason.METADATA_INVALID, str(e), ev.now)
            return
        refusal = self._check_manifest(job, manifest, target.length)
        if refusal is not None:
            ctx.fail_job(out, refusal[0], refusal[1], ev.now)
            return
        job.verified(target)
        job.last_progress = ev.now
        if job.fan_live and job.fanout is not None:
            # Read the fan-out from now on, when the chunks can be checked: the SUBSCRIBE
            # goes out before the event, so the hub, which starts a round once its
            # devices said ``downloading``, never starts it before they read.
            out.add(Subscribe(job.fanout, 1))
            job.fan_last = ev.now
            ctx.event(out, job.ref, "downloading", ev.now)
        else:
            ctx.event(out, job.ref, "downloading", ev.now)
            self.request_chunks(out, job)
        ctx.persist(out)

    def _check_manifest(self, job: Job, m: Manifest, length: int) -> tuple[Reason, str] | None:
        config = self.ctx.config
        if m.model != job.model or m.version != job.version:
            return Reason.MANIFEST_MISMATCH, (
                f"command names {job.model} v{job.version}, "
                f"signed manifest says {m.model} v{m.version}"
            )
        if m.device_classes and config.device_class not in m.device_classes:
            return Reason.WRONG_DEVICE_CLASS, (
                f"built for {', '.join(m.device_classes)}, this is {config.device_class}"
            )
        if m.runtime != config.runtime:
            return (
                Reason.WRONG_RUNTIME,
                f"needs {m.runtime}, this device runs {config.runtime}",
            )
        room = no_room(self.ctx.state.models, m.model, length, config.memory_budget_mb)
        if room is not None:
            return Reason.NO_ROOM, room
        installed = self.ctx.state.models.get(m.model)
        if installed is not None and m.version <= installed["version"]:
            return Reason.VERSION_ROLLBACK, (
                f"installed version {installed['version']} >= signed version {m.version}"
            )
        return None

    # ------------------------------------------------------------- chunks

    def on_error_blob(self, out: Outbox, job: Job, blob: protocol.Blob, now: float) -> None:
        # In the chunk phase an error may answer any earlier request of this download.
        stale = not job.phase.fetching or (
            job.phase is Phase.META and blob.header["req"] != job.req
        )
        if stale:
            self.ctx.drop("stale_blob", "error for an old request")
            return
        detail = f"{blob.header['reason']}: {blob.header.get('detail', '')}"
        self.ctx.fail_job(out, Reason.HUB_ERROR, detail, now)

    def on_chunk(self, out: Outbox, job: Job, blob: protocol.Blob, now: float) -> None:
        fanned = blob.header["req"] == protocol.FANOUT_REQ
        if job.phase is not Phase.CHUNKS or blob.header["target"] != job.target:
            if fanned:  # a fan-out round for another job, or before its metadata: fetched
                self.ctx.counts["fan_ignored"] += 1  # later if it is this job's
                return
            self.ctx.drop("stale_blob", "chunk for no download in progress")
            return
        manifest = job.manifest
        index = int(blob.header["index"])
        if index >= len(manifest.chunks):
            self.ctx.drop("bad_blob", f"chunk index {index} out of range")
            return
        job.fan_seen = job.fan_seen or fanned
        if fanned and index == 0:
            job.fan_whole = True  # from here on, a missing chunk was lost, not early
        if index in job.have:
            return  # a duplicate
        if fanned:
            job.fan_last = now
            self.ctx.counts["fan_chunks"] += 1
        else:
            self.rtt.answered(str(blob.header["req"]), now)
            self.ctx.counts["fetched_chunks"] += 1
        job.last_progress = now
        job.retries = 0
        if index in job.pending:
            job.pending.remove(index)
        offset, size = chunk_span(index, job.verified_target.length, manifest.chunk_size)
        last = len(manifest.chunks) - 1
        if len(blob.data) != size or not chunk_ok(blob.data, manifest.chunks[index]):
            self._bad_chunk(out, job, index, len(blob.data), size, now)
            over = fanned and index == last and job.fan_whole
            if over and job.fan_live and self.ctx.state.job is job:
                self.end_fan(out, job, now)
            return
        out.add(WriteChunk(job.verified_target, offset, blob.data))
        job.have.append(index)
        if len(job.have) == len(manifest.chunks):
            self.stop_fan(out, job)
            job.advance(Trigger.CHUNKS_COMPLETE)
            self.ctx.persist(out)  # saved before the file is verified: a restart verifies
            out.add(VerifyAndStage(job.model, job.version, job.verified_target))
            return
        # No state save per chunk: a restart re-hashes the staging file instead
        # (resume), which costs ~1 ms per MiB once, not a save per chunk.
        if not job.fan_live:
            self.request_chunks(out, job)
        elif fanned and index == last and job.fan_whole:
            # a whole round went by: what is missing was lost on the way, and no round
            # is due for this device (one that joined mid-round waits for the next)
            self.ctx.counts["fan_lost"] += 1
            self.end_fan(out, job, now)

    def end_fan(self, out: Outbox, job: Job, now: float) -> None:
        """The fan-out passed: fetch individually what it did not bring."""
        self.stop_fan(out, job)
        job.last_progress = now
        self.request_chunks(out, job)

    def stop_fan(self, out: Outbox, job: Job) -> None:
        """Stop reading the fan-out topic (the download is complete, or goes on alone)."""
        if job.fan_live and job.fanout is not None:
            out.add(Unsubscribe(job.fanout))
        job.fan_live = False

    def _bad_chunk(
        self, out: Outbox, job: Job, index: int, got: int, size: int, now: float
    ) -> None:
        """Count a chunk that failed its check; fail the job if one fails too often."""
        fails = job.chunk_failures.get(str(index), 0) + 1
        job.chunk_failures[str(index)] = fails
        log.warning("%s: chunk %d refused (%d)", self.ctx.config.device_id, index, fails)
        if fails >= self.ctx.config.max_chunk_failures:
            if got != size:  # endless data, or a short read
                reason, what = Reason.LENGTH_MISMATCH, f"{got} bytes, not {size}"
            else:
                reason, what = Reason.CHUNK_HASH_MISMATCH, "its signed sha256"
            detail = f"chunk {index} failed {what} {fails} times"
            self.ctx.fail_job(out, reason, detail, now)
            return
        if not job.fan_live:  # (fanning: it is fetched once the fan-out has passed)
            self.request_chunks(out, job)  # (this chunk is missing: the download goes on)

    def on_staged_chunks(self, ev: StagedChunks, out: Outbox) -> None:
        """The staging file re-hashed after a restart: keep what matched, fetch the rest."""
        job = self.ctx.state.job
        if job is None or job.phase is not Phase.CHUNKS:
            return
        job.have = sorted(ev.valid)
        job.pending = []
        if len(job.have) == len(job.manifest.chunks):
            self.stop_fan(out, job)
            job.advance(Trigger.CHUNKS_COMPLETE)
            out.add(VerifyAndStage(job.model, job.version, job.verified_target))
        elif not job.fan_live:
            self.request_chunks(out, job)
        self.ctx.persist(out)
