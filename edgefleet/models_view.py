"""What ``edgefleet models`` shows: a build's figures (fp32 beside int8, then each gate),
the registry as a table, a version's lineage, and live performance per version."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgefleet.output import table

__all__ = [
    "figures",
    "performance_report",
    "render_lineage",
    "render_models",
    "render_performance",
    "render_runs",
]


def figures(metrics: dict[str, Any], gates: list[dict[str, Any]]) -> str:
    """fp32 beside int8, then each gate: what an operator reads after a build."""
    lines = []
    fp32, int8 = metrics.get("fp32", {}), metrics.get("int8", {})
    keys = [k for k in ("accuracy", "macro_f1", "mae", "rmse", "r2") if k in int8]
    keys += ["latency_us_per_row", "size_bytes"]
    if int8:
        lines.append(f"  {'':<20}{'fp32':>12}{'int8':>12}")
        for k in keys:
            lines.append(f"  {k:<20}{_num(fp32.get(k)):>12}{_num(int8.get(k)):>12}")
    for g in gates:
        lines.append(f"  gate {g['name']:<10} {'pass' if g['passed'] else 'FAIL'}  {g['detail']}")
    return "\n".join(lines) if lines else "  (unevaluated: no dataset judged it)"


def _num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return str(v)
    return f"{v:.4f}" if abs(v) < 1000 else f"{v:.0f}"


def _f(x: float | None) -> str:
    return f"{x:.3f}" if x is not None else "-"


def performance_report(client: Any, name: str, **scope: Any) -> tuple[dict[str, Any], str]:
    """``GET /telemetry/performance`` for ``name`` (``scope``: version, device, group,
    start, end), and what ``edgefleet models performance`` prints of it: each version's
    live figure beside its hold-out figure (from its lineage)."""
    from edgefleet.client import HubClientError

    perf: dict[str, Any] = client.performance(name, **scope)
    holdout = {}
    for v in perf["versions"]:
        try:
            metrics = client.lineage(name, v["version"])["training"].get("metrics") or {}
        except HubClientError:  # a version no longer in the registry
            continue
        holdout[v["version"]] = metrics.get("int8") or {}
    return perf, render_performance(perf, holdout)


def render_performance(perf: dict[str, Any], holdout: dict[int, dict[str, Any]]) -> str:
    """Live figures per version (``GET /telemetry/performance``), each beside the hold-out
    figure its training gave (``holdout``: version -> int8 metrics), when there is one."""
    scope = perf.get("group") or perf.get("device") or "the fleet"
    lines = [f"{perf['model']} on {scope}, from GET /telemetry/performance:"]
    for v in perf["versions"]:
        ref = holdout.get(v["version"]) or {}
        if v["task"] == "regression":
            figure = f"MAE {v['mae']:.4f}  RMSE {v['rmse']:.4f}"
            held = f"MAE {ref['mae']:.4f}  RMSE {ref['rmse']:.4f}" if "mae" in ref else ""
        else:
            figure = f"accuracy {v['accuracy']:.4f} ({v['correct']:,}/{v['labelled']:,})"
            held = f"accuracy {ref['accuracy']:.4f}" if "accuracy" in ref else ""
        lines.append(
            f"  v{v['version']}  {figure}  on {v['labelled']:,} labelled rows from"
            f" {v['devices']} device(s)" + (f"   hold-out int8: {held}" if held else "")
        )
    if not perf["versions"]:
        lines.append("  no labelled predictions in this range")
    return "\n".join(lines)


def render_lineage(lin: Mapping[str, Any]) -> str:
    t, sig = lin["training"], lin["signature"]
    lines = [f"{lin['model']} v{lin['version']}  ({lin['source']})"]
    if not lin["evaluated"]:
        lines.append("  UNEVALUATED: no dataset judged this model")
    for d in lin["datasets"]:
        extra = f"  sha256 {d['sha256'][:16]}  {d['rows']} rows" if "sha256" in d else ""
        lines.append(f"  dataset   {d['id']}{extra}")
    if t.get("run"):
        split = t["split"]
        lines.append(
            f"  run       {t['run']}  built by edgefleet {t['package_version']}"
            f" at {t['source_revision'] or '?'}"
        )
        lines.append(
            f"  split     seed {split.get('seed')}, hold-out {split.get('holdout_rows')} rows"
        )
        if t["trials"]:
            lines.append(f"  tuner     {len(t['trials'])} trials")
        lines.append(figures(t["metrics"], t["gates"]))
    lines.append(f"  signed    {sig['target']}  sha256 {sig['sha256'][:16]}  {sig['length']} B")
    for r in lin["rollouts"]:
        lines.append(f"  rollout   {r['id']}  {r['state']}  {r['devices']}")
    for d in lin["deployments"]:
        lines.append(f"  deploy    {d['id']}  {d['devices']} devices")
    lines.append(f"  running on {lin['running']['devices']} device(s)")
    return "\n".join(lines)


def render_models(rows: list[dict[str, Any]]) -> Any:
    """Model versions with their hold-out figures (accuracy, or MAE for a regressor)."""
    out = []
    for r in rows:
        task = r.get("task", "classification")
        if task == "regression":
            fp32, int8 = f"MAE {_f(r.get('mae_fp32'))}", f"MAE {_f(r.get('mae_int8'))}"
        else:
            fp32, int8 = _f(r.get("accuracy_fp32")), _f(r.get("accuracy_int8"))
        dataset = r.get("dataset") or ("(unevaluated)" if task == "unevaluated" else "-")
        out.append(
            (r["name"], r["version"], task, r["size_bytes"], fp32, int8, dataset, r["sha256"][:16])
        )
    columns = ["model", "ver>", "task", "bytes>", "fp32>", "int8>", "dataset", "sha256"]
    return table(columns, out)


def render_runs(runs: list[dict[str, Any]]) -> Any:
    """Every build of a model: published and refused, and why."""
    return table(
        ["run", "status", "version", "source", "datasets", "refusal"],
        [
            (r["id"], r["status"], f"v{r['version']}" if r["version"] else None, r["source"],
             ",".join(r["datasets"]), r.get("refusal"))
            for r in runs
        ],
    )  # fmt: skip
