"""The pre-activation health check of a staged model (DESIGN §5).

A staged model is activated only if it loads, its inputs and outputs match the signed
manifest's specs, its golden inputs (flattened per row in the manifest, reshaped here to
the model's input: images and windows too) give the manifest's golden outputs (a
regressor's: rows of one value) within tolerance, the p95 of single-row inferences is
within the latency budget and loading it grew the process's memory within the memory
budget. Every failure is collected (not just the first) as a human-readable line; the
agent reports them with reason code ``health_check_failed`` (shared/reasons.py) and
discards the staged model.

Memory is measured only when a ``rss_fn`` is given: the simulator shares one session
between many devices of a process (agent/runtime.py SessionCache), so per-device RSS
growth means nothing there and it passes ``rss_fn=None``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter_ns

import numpy as np

from agent.runtime import Array, Backend, ModelLoadError, ModelSession
from shared.manifest import HealthCheck, Manifest, TensorSpec

MIN_LATENCY_RUNS = 50  # single-row inferences timed for the p95 (DESIGN §5)
WARMUP_RUNS = 5  # untimed first runs: onnxruntime allocates its buffers on the first
MAX_ROW_FAILURES = 3  # golden rows listed one by one; beyond, a count
MIB = 2**20  # bytes; memory budgets are in MiB
MAX_DETAIL_CHARS = 4096  # an event's "detail" field (shared/protocol.py)

RssFn = Callable[[], int]  # current resident set size of this process, in bytes


def process_rss() -> int:
    """This process's resident set size in bytes (psutil)."""
    import psutil

    return int(psutil.Process().memory_info().rss)


@dataclass(frozen=True)
class HealthResult:
    """The verdict on a staged model.

    Attributes:
        ok: no failure.
        failures: one human-readable line per failed check.
        p95_us: p95 of single-row inference latency, None if not measured.
        max_golden_diff: largest absolute difference from the golden outputs, None if the
            golden run failed.
        rss_growth_mb: RSS growth (MiB) around loading and running, None if not measured.
    """

    ok: bool
    failures: tuple[str, ...]
    p95_us: float | None = None
    max_golden_diff: float | None = None
    rss_growth_mb: float | None = None

    @classmethod
    def failed(cls, *failures: str) -> HealthResult:
        return cls(ok=False, failures=tuple(failures))

    @property
    def detail(self) -> str:
        """The failures as one line, short enough for an event's ``detail`` field."""
        text = "; ".join(self.failures)
        return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 3] + "..."


def run_health_check(
    session: ModelSession,
    health: HealthCheck,
    expected_inputs: tuple[TensorSpec, ...],
    expected_outputs: tuple[TensorSpec, ...],
    *,
    rss_fn: RssFn | None = None,
    rss_before: int | None = None,
    latency_runs: int = 100,
) -> HealthResult:
    """Check a loaded model against its manifest.

    Args:
        session: the staged model, loaded.
        health: the manifest's health check.
        expected_inputs / expected_outputs: the manifest's I/O specs.
        rss_fn: reads this process's RSS in bytes; None skips the memory check.
        rss_before: RSS read before the model was loaded (see :func:`load_and_check`);
            without it, only the growth during this check (buffers allocated by the first
            runs) is measured.
        latency_runs: single-row inferences timed (at least MIN_LATENCY_RUNS).

    Returns:
        The verdict; it never raises for a bad model.
    """
    if rss_fn is not None and rss_before is None:
        rss_before = rss_fn()
    failures = _spec_failures("input", session.inputs, expected_inputs)
    failures += _spec_failures("output", session.outputs, expected_outputs)
    golden, problem = _golden_array(session, health)
    if golden is None:
        return HealthResult.failed(*failures, problem or "no golden inputs")

    max_diff, golden_failures = _check_golden(session, health, golden)
    failures += golden_failures
    p95_us, latency_failures = _check_latency(
        session, golden, max(latency_runs, MIN_LATENCY_RUNS), health.latency_budget_us
    )
    failures += latency_failures

    growth_mb = None
    if rss_fn is not None and rss_before is not None:
        growth_mb = (rss_fn() - rss_before) / MIB
        if growth_mb > health.memory_budget_mb:
            failures.append(
                f"memory grew by {growth_mb:.1f} MiB > budget {health.memory_budget_mb:g} MiB"
            )
    return HealthResult(
        ok=not failures,
        failures=tuple(failures),
        p95_us=p95_us,
        max_golden_diff=max_diff,
        rss_growth_mb=growth_mb,
    )


def load_and_check(
    backend: Backend,
    path: Path,
    manifest: Manifest,
    *,
    sha256: str | None = None,
    check_memory: bool = True,
    rss_fn: RssFn = process_rss,
) -> tuple[ModelSession | None, HealthResult]:
    """Load a staged model and check it; a load failure becomes a failed result.

    Args:
        backend: loads the file; a SessionCache works too (then pass
            ``check_memory=False``: a shared session costs one device nothing).
        path: the staged model file.
        manifest: its signed manifest.
        sha256: the file's signed hash; the load fails if the bytes differ.
        check_memory: measure RSS before the load and after the check.
        rss_fn: reads this process's RSS in bytes.

    Returns:
        ``(session, result)``; the session is None when it could not be loaded.
    """
    rss_before = rss_fn() if check_memory else None
    try:
        session = backend.load(path, sha256)
    except ModelLoadError as e:
        return None, HealthResult.failed(f"the model does not load: {e.detail}")
    result = run_health_check(
        session,
        manifest.health,
        manifest.inputs,
        manifest.outputs,
        rss_fn=rss_fn if check_memory else None,
        rss_before=rss_before,
    )
    return session, result


# --------------------------------------------------------------------------- the checks


def _spec_failures(
    kind: str, actual: tuple[TensorSpec, ...], expected: tuple[TensorSpec, ...]
) -> list[str]:
    """Names, dtypes and shapes must match exactly (None: a dynamic dimension)."""
    have = {s.name: s for s in actual}
    want = {s.name: s for s in expected}
    failures = [f"{kind} {name!r} is missing from the model" for name in want if name not in have]
    failures += [f"{kind} {name!r} is not in the manifest" for name in have if name not in want]
    for name, spec in want.items():
        got = have.get(name)
        if got is None:
            continue
        if got.dtype != spec.dtype:
            failures.append(f"{kind} {name!r} has dtype {got.dtype}, manifest says {spec.dtype}")
        if tuple(got.shape) != tuple(spec.shape):
            failures.append(
                f"{kind} {name!r} has shape {_shape(got.shape)}, manifest says {_shape(spec.shape)}"
            )
    return failures


def _golden_array(session: ModelSession, health: HealthCheck) -> tuple[Array | None, str | None]:
    """The golden inputs as an array of the model's input dtype, or why they cannot be."""
    if len(session.inputs) != 1:
        return None, f"the model has {len(session.inputs)} inputs; the agent serves one"
    try:
        dtype = np.dtype(session.inputs[0].dtype)
    except TypeError:
        dtype = np.dtype(object)
    if dtype.kind not in "biuf":
        return None, f"the model's input is {session.inputs[0].dtype}; the agent serves numbers"
    try:
        golden = np.asarray(health.golden_inputs, dtype=dtype)
    except (ValueError, OverflowError) as e:  # ragged rows, out of the dtype's range
        return None, f"golden inputs are not a table of numbers: {e}"
    return _as_input_shape(golden, session.inputs[0].shape)


def _as_input_shape(
    golden: Array, shape: tuple[int | None, ...]
) -> tuple[Array | None, str | None]:
    """Golden rows travel flattened (ADR 0014): reshape them to the model's input.

    ``[rows, H*W*C]`` becomes ``[rows, H, W, C]`` for an input ``[N, H, W, C]``; one
    dynamic dimension in a row is inferred, more cannot be.
    """
    row_shape = tuple(shape[1:])
    if golden.ndim != 2 or len(row_shape) <= 1:
        return golden, None  # a tabular model takes the rows as they are
    if sum(d is None for d in row_shape) > 1:
        return None, f"cannot reshape golden rows to an input of shape {_shape(shape)}"
    known = int(np.prod([d for d in row_shape if d is not None]))
    width = golden.shape[1]
    if known == 0 or width % known or (None not in row_shape and width != known):
        return None, (f"golden rows of {width} values do not fit an input of shape {_shape(shape)}")
    return golden.reshape(len(golden), *(-1 if d is None else d for d in row_shape)), None


def _shape(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("None" if d is None else str(d) for d in shape) + "]"


def _check_golden(
    session: ModelSession, health: HealthCheck, golden: Array
) -> tuple[float | None, list[str]]:
    """Run the golden rows as one batch; compare the named output with the golden outputs."""
    names = [o.name for o in session.outputs]
    if health.golden_output not in names:
        return None, [f"golden output {health.golden_output!r} is not an output of the model"]
    try:
        outs = session.run_fn(names, {session.input_name: golden}, None)
    except Exception as e:  # the runtime's own errors: the model cannot take its inputs
        return None, [f"golden inputs fail to run: {type(e).__name__}: {e}"]
    got = np.asarray(outs[names.index(health.golden_output)], dtype=np.float64)
    try:
        want = np.asarray(health.golden_outputs, dtype=np.float64)
    except ValueError as e:  # ragged rows
        return None, [f"golden outputs are not a table of numbers: {e}"]
    if got.size != want.size or len(got) != len(want):
        return None, [
            f"golden output {health.golden_output!r} has shape {list(got.shape)}, "
            f"expected {list(want.shape)}"
        ]
    diff = np.abs(got.reshape(want.shape) - want).max(axis=1, initial=0.0)
    diff = np.where(np.isnan(diff), np.inf, diff)  # a NaN output is as far off as can be
    bad = np.flatnonzero(diff > health.tolerance)
    failures = [
        f"golden output {health.golden_output!r} row {i} differs by {diff[i]:.4g} "
        f"> tolerance {health.tolerance:g}"
        for i in bad[:MAX_ROW_FAILURES]
    ]
    if len(bad) > MAX_ROW_FAILURES:
        failures.append(f"... and {len(bad) - MAX_ROW_FAILURES} more golden rows out of tolerance")
    return float(diff.max(initial=0.0)), failures


def _check_latency(
    session: ModelSession, golden: Array, runs: int, budget_us: float
) -> tuple[float | None, list[str]]:
    """p95 of single-row inferences, timed as the Predictor times them (the run alone)."""
    rows = [np.ascontiguousarray(golden[i : i + 1]) for i in range(len(golden))]
    run, names, input_name = session.run_fn, [o.name for o in session.outputs], session.input_name
    samples = np.empty(runs, dtype=np.int64)
    try:
        for i in range(WARMUP_RUNS):
            run(names, {input_name: rows[i % len(rows)]}, None)
        for i in range(runs):
            feed = {input_name: rows[i % len(rows)]}
            t0 = perf_counter_ns()
            run(names, feed, None)
            samples[i] = perf_counter_ns() - t0
    except Exception as e:
        return None, [f"single-row inference fails: {type(e).__name__}: {e}"]
    p95_us = float(np.percentile(samples, 95)) / 1000
    if p95_us > budget_us:
        return p95_us, [f"p95 latency {p95_us:.1f} µs > budget {budget_us:g} µs"]
    return p95_us, []
