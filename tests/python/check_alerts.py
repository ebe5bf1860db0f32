#!/usr/bin/env python3
"""Check the Grafana dashboard and the Prometheus alert rules against the server's metrics.

    .venv/bin/python tests/python/check_alerts.py        (run by deploy/scripts/test.sh)

- deploy/grafana/wrn-dashboard.json loads, has a uid, unique panel ids, a Prometheus datasource
  variable, and every panel query is non-empty with balanced brackets;
- deploy/prometheus/wrn-alerts.yaml is a rules file whose alerts have an expr, a `for`, a
  severity label and summary/description annotations;
- every `wrn_*` metric in a query is one the server exports: a name constant in src/metrics.rs, or
  a process metric (`wrn_process_*`) listed in the README's metrics table; `_bucket`, `_sum` and
  `_count` are only used on histograms, `rate()`-style functions only on counters/histograms;
- every label in a matcher or a `by (...)` clause is one the server sets (or a scrape label);
- the README's metrics table lists every name constant of src/metrics.rs.
promtool itself (check rules / test rules) is run by test.sh next to this.
Exit status 0 when everything holds; otherwise every problem is printed and the status is 1.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/wrn-dashboard.json"
RULES = ROOT / "deploy/prometheus/wrn-alerts.yaml"
METRICS_RS = ROOT / "src/metrics.rs"
README = ROOT / "README.md"

# Labels the server puts on its series, plus those Prometheus/Kubernetes scraping adds.
SERVER_LABELS = {"model", "version", "method", "code", "reason", "provider", "le"}
SCRAPE_LABELS = {"job", "instance", "namespace", "pod", "container", "service", "endpoint", "node"}
RATE_FUNCS = ("rate", "irate", "increase")

problems: list[str] = []


def problem(msg: str) -> None:
    problems.append(msg)


def metrics_rs_names() -> dict[str, str]:
    """Name constants of src/metrics.rs: {metric name: constant}."""
    text = METRICS_RS.read_text()
    names = {m.group(2): m.group(1) for m in re.finditer(r'pub const (\w+): &str = "(wrn_\w+)";', text)}
    if len(names) < 10:
        problem(f"src/metrics.rs: found only {len(names)} metric name constants; did the file change shape?")
    return names


def readme_table() -> dict[str, str]:
    """The README's metrics table between the markers: {name: type}."""
    if not README.is_file():
        problem("README.md is missing")
        return {}
    text = README.read_text()
    m = re.search(r"<!-- metrics:begin -->(.*?)<!-- metrics:end -->", text, re.S)
    if not m:
        problem("README.md: no metrics table between <!-- metrics:begin --> and <!-- metrics:end -->")
        return {}
    rows = {}
    for line in m.group(1).splitlines():
        r = re.match(r"\|\s*`(wrn_\w+)`\s*\|\s*(\w+)\s*\|", line)
        if r:
            if r.group(1) in rows:
                problem(f"README.md metrics table: {r.group(1)} listed twice")
            rows[r.group(1)] = r.group(2)
    if not rows:
        problem("README.md: the metrics table has no rows")
    return rows


def strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def check_expr(where: str, expr: str, known: dict[str, str]) -> None:
    if not expr.strip():
        problem(f"{where}: empty query")
        return
    bare = strip_strings(expr)
    for o, c in ("()", "[]", "{}"):
        if bare.count(o) != bare.count(c):
            problem(f"{where}: unbalanced {o}{c} in {expr!r}")
    for m in re.finditer(r"\b(wrn_[a-z0-9_]+)", bare):
        name = m.group(1)
        base, suffix = name, ""
        for s in ("_bucket", "_sum", "_count"):
            if name.endswith(s) and name[: -len(s)] in known:
                base, suffix = name[: -len(s)], s
        if base not in known:
            problem(f"{where}: unknown metric {name} (not in src/metrics.rs nor the README table)")
            continue
        kind = known[base]
        if suffix and kind != "histogram":
            problem(f"{where}: {name}: {base} is a {kind}, not a histogram")
        if not suffix and kind == "histogram":
            problem(f"{where}: histogram {base} used without _bucket/_sum/_count")
        # rate(...) over a gauge is almost always a mistake.
        before = bare[: m.start()]
        fn = re.search(r"(\w+)\(\s*$", before)
        if fn and fn.group(1) in RATE_FUNCS and kind == "gauge":
            problem(f"{where}: {fn.group(1)}() over the gauge {name}")
    for m in re.finditer(r"\b(?:by|without)\s*\(([^)]*)\)", bare):
        for label in filter(None, (x.strip() for x in m.group(1).split(","))):
            if label not in SERVER_LABELS | SCRAPE_LABELS:
                problem(f"{where}: grouping by unknown label {label!r}")
    for m in re.finditer(r"\{([^}]*)\}", bare):
        for matcher in filter(None, (x.strip() for x in m.group(1).split(","))):
            label = re.match(r"(\w+)\s*(=~|!~|!=|=)", matcher)
            if label and label.group(1) not in SERVER_LABELS | SCRAPE_LABELS:
                problem(f"{where}: matcher on unknown label {label.group(1)!r}")


def check_dashboard(known: dict[str, str]) -> int:
    try:
        dash = json.loads(DASHBOARD.read_text())
    except (OSError, json.JSONDecodeError) as e:
        problem(f"{DASHBOARD.relative_to(ROOT)}: {e}")
        return 0
    for key in ("title", "uid", "panels", "templating", "schemaVersion"):
        if key not in dash:
            problem(f"dashboard: no {key!r}")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("type") != "datasource":
        problem("dashboard: no 'datasource' variable of type datasource")
    ids, queries = set(), 0
    panels = list(dash.get("panels", []))
    for p in list(panels):
        panels.extend(p.get("panels", []))  # collapsed rows carry their panels
    for p in panels:
        if p.get("id") in ids:
            problem(f"dashboard: duplicate panel id {p.get('id')}")
        ids.add(p.get("id"))
        if p.get("type") == "row":
            continue
        if not p.get("title"):
            problem(f"dashboard: panel {p.get('id')} has no title")
        targets = p.get("targets") or []
        if not targets:
            problem(f"dashboard: panel {p.get('title')!r} has no queries")
        for t in targets:
            queries += 1
            check_expr(f"dashboard panel {p.get('title')!r} ({t.get('refId')})", t.get("expr", ""), known)
    return queries


def check_rules(known: dict[str, str]) -> int:
    try:
        import yaml
    except ImportError:
        problem("PyYAML is not importable; run with .venv/bin/python (deploy/scripts/setup-python.sh)")
        return 0
    try:
        doc = yaml.safe_load(RULES.read_text())
    except (OSError, yaml.YAMLError) as e:
        problem(f"{RULES.relative_to(ROOT)}: {e}")
        return 0
    alerts = 0
    seen = set()
    for g in doc.get("groups", []) if isinstance(doc, dict) else []:
        for r in g.get("rules", []):
            name = r.get("alert") or r.get("record")
            if not name:
                problem(f"rules group {g.get('name')}: a rule with neither alert nor record")
                continue
            check_expr(f"rule {name}", str(r.get("expr", "")), known)
            if "alert" in r:
                alerts += 1
                if name in seen:
                    problem(f"rule {name}: defined twice")
                seen.add(name)
                if not re.fullmatch(r"\d+[smh]", str(r.get("for", ""))):
                    problem(f"rule {name}: no 'for' duration")
                if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                    problem(f"rule {name}: labels.severity must be critical, warning or info")
                for a in ("summary", "description"):
                    if not r.get("annotations", {}).get(a):
                        problem(f"rule {name}: no {a} annotation")
    if alerts == 0:
        problem(f"{RULES.relative_to(ROOT)}: no alerting rules")
    return alerts


def main() -> int:
    consts = metrics_rs_names()
    table = readme_table()
    for name in consts:
        if table and name not in table:
            problem(f"README.md metrics table: {name} (src/metrics.rs {consts[name]}) is missing")
    known = dict(table)
    for name in consts:
        known.setdefault(name, "histogram" if name.endswith("_seconds") or name == "wrn_batch_size"
                         else "counter" if name.endswith("_total") else "gauge")
    queries = check_dashboard(known)
    alerts = check_rules(known)
    for p in problems:
        print(f"check_alerts: FAIL {p}")
    print(f"check_alerts: {queries} dashboard queries, {alerts} alerts, {len(known)} known metrics: "
          f"{'ok' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
