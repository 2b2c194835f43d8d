"""``edgefleet models``: train on a dataset, upload your own, list, runs, lineage, and
live performance per version."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from edgefleet.progress import JobProgress


def register(sub: Any, api: argparse.ArgumentParser) -> None:
    """Add the commands; ``api``: the parent parser with --hub/--api-key."""
    models = sub.add_parser("models", help="the model registry").add_subparsers(metavar="ACTION")
    mlist = models.add_parser("list", parents=[api], help="list model versions with metrics")
    mlist.add_argument("--json", action="store_true", help="print JSON")
    mlist.set_defaults(func=_list)
    _train_parser(models, api)
    _upload_parser(models, api)
    runs = models.add_parser(
        "runs", parents=[api], help="every build of a model, refused ones with their figures"
    )
    runs.add_argument("name", help="the model")
    runs.add_argument("--json", action="store_true", help="print JSON")
    runs.set_defaults(func=_runs)
    lin = models.add_parser(
        "lineage", parents=[api], help="datasets, training, gates, signature, rollouts, devices"
    )
    lin.add_argument("ref", help="NAME:VERSION")
    lin.add_argument("--json", action="store_true", help="print JSON")
    lin.set_defaults(func=_lineage)
    _performance_parser(models, api)


def _performance_parser(models: Any, api: argparse.ArgumentParser) -> None:
    p = models.add_parser(
        "performance",
        parents=[api],
        help="live accuracy or MAE per version, from the labels devices joined",
        description="GET /telemetry/performance: per model version, the true labels devices"
        " reported (with the call or later, by prediction id) and the figure they make,"
        " beside the version's hold-out figure from training.",
    )
    p.add_argument("name", help="the model")
    p.add_argument("--version", type=int, help="only this version")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--device", help="one device (default: the fleet)")
    who.add_argument("--group", help="devices tagged GROUP")
    p.add_argument(
        "--since",
        default="3600",
        help="how far back: seconds (default 3600) or 10m, 2h, 1d; or a time such as"
        " 2026-12-06T10:00:00Z",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_performance)


def _gate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-accuracy", type=float, help="floor gate for a classifier (0..1)")
    p.add_argument("--max-mae", type=float, help="ceiling gate for a regressor (its units)")
    p.add_argument(
        "--champion",
        action="store_true",
        help="refuse it unless it beats the deployed version on the same hold-out",
    )


def _train_parser(models: Any, api: argparse.ArgumentParser) -> None:
    p = models.add_parser(
        "train",
        parents=[api],
        help="train, quantise, judge and sign a model on a dataset",
        description="Train on a dataset version (edgefleet datasets upload), quantise to int8,"
        " judge both files on a seeded hold-out, and sign it if every gate passes.",
    )
    p.add_argument("--name", default="vibration", help="the model's name")
    p.add_argument(
        "--dataset", help="NAME[:VERSION] of a dataset (default: the built-in generator)"
    )
    p.add_argument("--kind", choices=("mlp", "cnn"), default="mlp", help="cnn: images and windows")
    p.add_argument("--task", choices=("classification", "regression"), help="default: dataset's")
    p.add_argument("--holdout", type=float, default=0.2, help="share of rows held out")
    p.add_argument("--seed", type=int, default=7, help="for the split and the training")
    p.add_argument("--max-int8-loss", type=float, default=1.0, help="points of accuracy")
    p.add_argument("--max-int8-mae-increase", type=float, default=0.05, help="relative, regressors")
    _gate_args(p)
    p.add_argument("--tune", type=int, default=0, metavar="N", help="tuner trials (Optuna)")
    p.add_argument("--tune-timeout", type=float, default=600, help="tuner budget, seconds")
    p.add_argument("--tune-max-kb", type=float, help="tuner's size budget for the int8 file, KiB")
    p.add_argument("--n-train", type=int, default=12000, help="rows of the built-in generator")
    p.add_argument("--device-class", action="append", default=[], help="repeat for several")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_train)


def _upload_parser(models: Any, api: argparse.ArgumentParser) -> None:
    p = models.add_parser(
        "upload",
        parents=[api],
        help="upload your own ONNX or TFLite model, judged on a dataset",
        description="Check the model against the dataset's schema, score it on its hold-out,"
        " quantise an fp32 ONNX model to int8 through the same gates, and sign it. A .tflite"
        " file ships as it is (the format is read from the file's bytes).",
    )
    p.add_argument("file", type=Path, help="the .onnx or .tflite file")
    p.add_argument("--name", required=True, help="the model's name")
    p.add_argument("--dataset", help="NAME[:VERSION] to judge it on")
    p.add_argument("--no-quantize", action="store_true", help="ship the file as it is")
    p.add_argument("--unevaluated", action="store_true", help="accept it with no dataset (says so)")
    _gate_args(p)
    p.add_argument("--device-class", action="append", default=[], help="repeat for several")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_upload)


def _client(args: argparse.Namespace) -> Any:
    from edgefleet.client import HubClient

    return HubClient(args.hub, api_key=args.api_key)


def _train(args: argparse.Namespace) -> int:
    settings: dict[str, Any] = {
        "name": args.name,
        "dataset": args.dataset,
        "kind": args.kind,
        "task": args.task,
        "holdout_fraction": args.holdout,
        "seed": args.seed,
        "max_int8_loss_points": args.max_int8_loss,
        "max_int8_mae_increase": args.max_int8_mae_increase,
        "min_accuracy": args.min_accuracy,
        "max_mae": args.max_mae,
        "champion": args.champion,
        "tune": args.tune,
        "tune_timeout_s": args.tune_timeout,
        "tune_max_bytes": int(args.tune_max_kb * 1024) if args.tune_max_kb else None,
        "n_train": args.n_train,
        "device_classes": args.device_class,
    }
    with _client(args) as c:
        job = c.train(**{k: v for k, v in settings.items() if v is not None})
        return _follow(c, job["id"], args)


def _upload(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        print(f"error: no file {args.file}", file=sys.stderr)
        return 2
    with _client(args) as c:
        job = c.upload(
            args.name,
            args.file.read_bytes(),
            args.device_class or None,
            dataset=args.dataset,
            quantize=not args.no_quantize,
            unevaluated=args.unevaluated,
            champion=args.champion,
            min_accuracy=args.min_accuracy,
            max_mae=args.max_mae,
            filename=args.file.name,
        )
        return _follow(c, job["id"], args)


def _follow(c: Any, job_id: str, args: argparse.Namespace) -> int:
    from edgefleet.client import HubClientError

    try:
        done = c.wait_job(job_id, timeout=24 * 3600, on_progress=JobProgress())
    except HubClientError as e:
        print(f"refused: {e.message}", file=sys.stderr)
        runs = c.runs(args.name)
        if runs and runs[-1]["status"] in ("refused", "failed"):
            print(figures(runs[-1]["metrics"], runs[-1]["gates"]), file=sys.stderr)
        return 1
    result = done["result"]
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['name']} v{result['version']} signed: {result['target']} ({result['task']})")
    print(figures(result.get("metrics") or {}, result.get("gates") or []))
    for note in result.get("notes") or ():
        print(f"  note: {note}")
    return 0


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


def _list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        rows = c.models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'model':<16}{'ver':>4}  {'task':<15}{'bytes':>9}  {'fp32':>9}  {'int8':>9}"
        f"  {'dataset':<16}sha256"
    )
    for r in rows:
        task = r.get("task", "classification")
        if task == "regression":
            fp32, int8 = f"MAE {_f(r.get('mae_fp32'))}", f"MAE {_f(r.get('mae_int8'))}"
        else:
            fp32, int8 = _f(r["accuracy_fp32"]), _f(r["accuracy_int8"])
        dataset = r.get("dataset") or ("(unevaluated)" if task == "unevaluated" else "-")
        print(
            f"{r['name']:<16}{r['version']:>4}  {task:<15}{r['size_bytes']:>9}  {fp32:>9}"
            f"  {int8:>9}  {dataset:<16}{r['sha256'][:16]}"
        )
    return 0


def _f(x: float | None) -> str:
    return f"{x:.3f}" if x is not None else "-"


def _runs(args: argparse.Namespace) -> int:
    with _client(args) as c:
        runs = c.runs(args.name)
    if args.json:
        print(json.dumps(runs, indent=2))
        return 0
    for r in runs:
        v = f"v{r['version']}" if r["version"] else "-"
        print(f"{r['id']}  {r['status']:<10}{v:<5}{r['source']:<10}{','.join(r['datasets'])}")
        if r["refusal"]:
            print(f"    {r['refusal']}")
    return 0


def _lineage(args: argparse.Namespace) -> int:
    name, _, version = args.ref.partition(":")
    if not version.isdigit():
        print("error: give NAME:VERSION, e.g. vibration:3", file=sys.stderr)
        return 2
    with _client(args) as c:
        lin = c.lineage(name, int(version))
    if args.json:
        print(json.dumps(lin, indent=2))
        return 0
    print(render_lineage(lin))
    return 0


def _performance(args: argparse.Namespace) -> int:
    with _client(args) as c:
        perf, text = performance_report(
            c,
            args.name,
            version=args.version,
            device=args.device,
            group=args.group,
            start=_since(args.since),
        )
    print(json.dumps(perf, indent=2) if args.json else text)
    return 0


def _since(text: str) -> float | str:
    """A bare number is seconds back, ``2h`` (or ``-2h``) two hours back; anything else
    goes to the hub as typed: it reads ISO 8601 and names the forms when it cannot."""
    try:
        return time.time() - float(text)
    except ValueError:
        return f"-{text}" if re.fullmatch(r"\d+(\.\d+)?[smhdw]", text) else text


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


def render_lineage(lin: dict[str, Any]) -> str:
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
