#!/usr/bin/env python3
"""Checks on the rendered Kubernetes manifests that need no cluster.

1. Schema: every rendered object validates, strictly (unknown fields are errors), against the
   Kubernetes OpenAPI schemas that the `kubernetes-validate` package bundles, for the oldest
   Kubernetes these manifests support and the newest the package knows; custom resources
   (ServiceMonitor) against the local schemas in deploy/k8s/schemas/.
2. Invariants: the facts that tie the manifests to the server and to each other: probes on the
   real gRPC port and health service names, ports and flags as the server defines them (read
   from src/cli.rs when present), graceful termination longer than preStop + drain, the security
   context, GPU scheduling, config.toml keys, Services/ServiceMonitor/HPA/PDB wiring, and the
   training Job's command and volumes.

3. Self-test: known-bad variants of the rendered manifests (a grace period shorter than the
   drain, a probe on the wrong port, a GPU pod without the taint toleration, ...) must each make
   the checks above fail, so a check that silently stopped checking is caught.

Usage:
  check_invariants.py --list-targets        name and kustomize directory of each rendered target
  check_invariants.py RENDERED_DIR [-v]     check RENDERED_DIR/<name>.yaml for every target

Run by deploy/scripts/check-deploy.sh, which renders the targets with `kubectl kustomize`.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
import tomllib
from pathlib import Path

import jsonschema
import yaml

K8S_DIR = Path(__file__).resolve().parent
REPO = K8S_DIR.parent.parent

# name, kustomize directory (relative to deploy/k8s), role
TARGETS = [
    ("cpu", "overlays/cpu", "serve-cpu"),
    ("gpu", "overlays/gpu", "serve-gpu"),
    ("gpu-models-pvc", "examples/gpu-models-pvc", "serve-gpu"),
    ("cpu-models-baked", "examples/cpu-models-baked", "serve-cpu"),
    ("queue-depth-hpa", "examples/queue-depth-hpa", "serve-gpu"),
    ("training", "training", "train"),
]
# Plain manifests that are not part of any kustomization but are still validated.
PLAIN = ["examples/queue-depth-hpa/prometheus-adapter-config.yaml"]
ADAPTER_CONFIG = K8S_DIR / "examples/queue-depth-hpa/prometheus-adapter-config.yaml"

# Oldest supported (the preStop sleep action is on by default from 1.30) and newest known.
K8S_VERSIONS = ["1.30.0", "1.37.0"]
LOCAL_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "schemas/servicemonitor-monitoring-v1.json",
}

GRPC_PORT = 50051
METRICS_PORT = 9090
HEALTH_SERVICE = "wrn.v1.Classifier"
UID = 10001
PROVIDERS = {"tensorrt", "cuda", "cpu"}
# Env vars a container may set besides the server's own flags.
EXTRA_ENV = {"RUST_LOG", "RUST_BACKTRACE"}
# ENV that the images set (deploy/docker/Dockerfile.*): effective when neither flag nor env is given.
IMAGE_ENV = {
    "ORT_DYLIB_PATH": "/opt/onnxruntime/lib/libonnxruntime.so",
    "WRN_ADDR": f"0.0.0.0:{GRPC_PORT}",
    "WRN_METRICS_ADDR": f"0.0.0.0:{METRICS_PORT}",
}

# config.toml as the team conventions give it, used when src/config.rs is not there:
# {key: True (required) | False (optional)}; a nested table is {"?": required, ...its keys}.
FALLBACK_CONFIG = {
    "name": True, "version": False, "architecture": False, "weights": False, "pretrained": False,
    "model_file": False, "labels_file": False,
    "preprocess": {"?": True, "resize": True, "crop": True, "interpolation": False, "mean": True,
                   "std": True},
    "batching": {"?": False, "max_batch_size": False, "max_queue_delay_ms": False,
                 "queue_capacity": False, "instances": False},
    "runtime": {"?": False, "execution_providers": False, "intra_op_threads": False,
                "inter_op_threads": False, "graph_optimization_level": False, "warmup": False,
                "cuda": {"?": False, "device_id": False, "conv_algo_search": False,
                         "memory_limit_bytes": False, "cuda_graph": False},
                "tensorrt": {"?": False, "device_id": False, "fp16": False, "int8": False,
                             "int8_calibration_table": False, "cache_dir": False,
                             "workspace_bytes": False, "opt_batch_size": False}},
}
FALLBACK_TRT_CACHE = "/tmp/wrn-trt-cache"

# The server's flags as the team conventions give them, used when src/cli.rs is not there.
FALLBACK_FLAGS = {
    "serve": {
        "models-dir": ("WRN_MODELS_DIR", False, "models/repository"),
        "default-model": ("WRN_DEFAULT_MODEL", False, "wide_resnet50_2"),
        "addr": ("WRN_ADDR", False, f"0.0.0.0:{GRPC_PORT}"),
        "metrics-addr": ("WRN_METRICS_ADDR", False, f"0.0.0.0:{METRICS_PORT}"),
        "ort-lib": ("ORT_DYLIB_PATH", False, None),
        "drain-timeout-secs": ("WRN_DRAIN_TIMEOUT_SECS", False, "30"),
        "log-format": ("WRN_LOG_FORMAT", False, "text"),
        "log-level": ("WRN_LOG_LEVEL", False, "info"),
        "no-metrics": ("WRN_NO_METRICS", True, None),
        "execution-providers": ("WRN_EXECUTION_PROVIDERS", False, None),
        "require-gpu": ("WRN_REQUIRE_GPU", True, None),
    },
    "train": {
        "artifacts": (None, False, None),
        "data": (None, False, None),
        "out": (None, False, None),
        "ort-lib": ("ORT_DYLIB_PATH", False, None),
    },
}


class Report:
    """Counts checks; prints failures always and passes with -v."""

    def __init__(self, verbose: bool, quiet: bool = False) -> None:
        self.verbose = verbose
        self.quiet = quiet
        self.passed = 0
        self.failed = 0
        self.group = ""
        self.group_counts = [0, 0]

    def start(self, group: str) -> None:
        self.end()
        self.group = group
        self.group_counts = [0, 0]

    def end(self) -> None:
        if self.group and not self.quiet:
            ok, bad = self.group_counts
            status = "ok  " if bad == 0 else "FAIL"
            print(f"{status} {self.group}: {ok} passed, {bad} failed")
            self.group = ""

    def check(self, name: str, cond: bool, detail: str = "") -> bool:
        if cond:
            self.passed += 1
            self.group_counts[0] += 1
            if self.verbose:
                print(f"       ok   {name}")
        else:
            self.failed += 1
            self.group_counts[1] += 1
            if not self.quiet:
                print(f"       FAIL {name}" + (f": {detail}" if detail else ""))
        return cond


# ---------------------------------------------------------------------------------------------
# Reading things


def load_docs(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs
            if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict | None:
    found = find(docs, kind, name)
    return found[0] if len(found) == 1 else None


def cli_flags() -> tuple[dict, str]:
    """{subcommand: {flag: (env, is_bool, default)}} from src/cli.rs, else the fallback table."""
    cli = REPO / "src" / "cli.rs"
    if not cli.is_file():
        return FALLBACK_FLAGS, "team conventions (src/cli.rs not found)"
    structs = {"serve": {"Cli", "ServeArgs", "LimitArgs", "SecurityArgs"},
               "train": {"Cli", "TrainArgs"}}
    fields: dict[str, dict] = {}
    current, attr = None, None
    # rustfmt splits long #[arg(...)] attributes over several lines: join them first.
    lines, pending = [], None
    for line in cli.read_text().splitlines():
        s = line.strip()
        if pending is not None:
            pending += " " + s
            if s.endswith(")]"):
                lines.append(pending)
                pending = None
            continue
        if s.startswith("#[arg(") and not s.endswith(")]"):
            pending = s
            continue
        lines.append(s)
    for s in lines:
        m = re.match(r"pub struct (\w+)", s)
        if m:
            current = m.group(1)
            fields.setdefault(current, {})
            continue
        if s.startswith("#[arg("):
            attr = s
            continue
        m = re.match(r"pub (\w+):\s*(.+?),?$", s)
        if m and attr is not None and current is not None:
            if re.search(r"\blong\b", attr):
                env = re.search(r'env\s*=\s*"([^"]+)"', attr)
                default = re.search(r'default_value(?:_t)?\s*=\s*("?)([^",)]+)\1', attr)
                fields[current][m.group(1).replace("_", "-")] = (
                    env.group(1) if env else None,
                    m.group(2).strip() == "bool",
                    default.group(2) if default else None,
                )
            attr = None
        elif not s.startswith("///") and not s.startswith("#["):
            attr = None
    table = {}
    for sub, names in structs.items():
        table[sub] = {}
        for n in names:
            table[sub].update(fields.get(n, {}))
    if not table["serve"]:
        return FALLBACK_FLAGS, "team conventions (src/cli.rs had no flags)"
    return table, "src/cli.rs"


@functools.lru_cache(maxsize=None)
def config_schema() -> tuple[dict, str, str]:
    """The keys config.toml may have, from the server's serde structs in src/config.rs
    (every struct there denies unknown fields), else the fallback table; and the default
    TensorRT cache directory."""
    src = REPO / "src" / "config.rs"
    if not src.is_file():
        return FALLBACK_CONFIG, FALLBACK_TRT_CACHE, "team conventions (src/config.rs not found)"
    text = src.read_text()
    structs: dict[str, dict[str, tuple[str, bool]]] = {}
    current, has_default = None, False
    for line in text.splitlines():
        t = line.strip()
        m = re.match(r"pub struct (\w+)\s*\{", t)
        if m:
            current, has_default = m.group(1), False
            structs[current] = {}
            continue
        if current is None:
            continue
        if t == "}":
            current = None
            continue
        if t.startswith("#[serde(") and "default" in t:
            has_default = True
            continue
        m = re.match(r"pub (\w+):\s*(.+?),?$", t)
        if m:
            ty = m.group(2).strip()
            structs[current][m.group(1)] = (ty, has_default or ty.startswith("Option<"))
            has_default = False

    def table(name: str, required: bool) -> dict:
        out: dict = {"?": required}
        for field, (ty, optional) in structs.get(name, {}).items():
            out[field] = table(ty, not optional) if ty in structs else (not optional)
        return out

    m = re.search(r'fn default_trt_cache\(\)[^{]*\{\s*"([^"]+)"', text)
    trt_cache = m.group(1) if m else FALLBACK_TRT_CACHE
    if "ModelConfig" not in structs:
        return FALLBACK_CONFIG, trt_cache, "team conventions (no ModelConfig in src/config.rs)"
    return table("ModelConfig", True), trt_cache, "src/config.rs"


def config_problems(cfg: dict, schema: dict, prefix: str = "") -> list[str]:
    """Unknown keys and missing required keys of cfg against schema, as dotted paths."""
    problems = []
    for k, v in cfg.items():
        if k not in schema or k == "?":
            problems.append(f"unknown {prefix}{k}")
        elif isinstance(schema[k], dict):
            if isinstance(v, dict):
                problems += config_problems(v, schema[k], f"{prefix}{k}.")
            else:
                problems.append(f"{prefix}{k} must be a table")
    for k, sub in schema.items():
        required = sub is True or (isinstance(sub, dict) and sub.get("?") is True)
        if k != "?" and required and k not in cfg:
            problems.append(f"missing {prefix}{k}")
    return problems


def parse_flags(argv: list[str], known: dict, report: Report, where: str) -> dict[str, str]:
    """`--name=value`, `--name value` or a bare boolean `--name` -> {name: value}."""
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if not a.startswith("--"):
            report.check(f"{where}: argument {a!r} is a flag", False, "positional arguments unexpected")
            continue
        name, eq, value = a[2:].partition("=")
        if not report.check(f"{where}: --{name} is a server flag", name in known,
                            f"not in {sorted(known)}"):
            continue
        _, is_bool, _ = known[name]
        if is_bool:
            out[name] = value if eq else "true"
        elif eq:
            out[name] = value
        elif i < len(argv):
            out[name] = argv[i]
            i += 1
        else:
            report.check(f"{where}: --{name} has a value", False)
    return out


def port_of(addr: str) -> int | None:
    m = re.match(r"^(?:\[[^\]]*\]|[^:]*):(\d+)$", addr or "")
    return int(m.group(1)) if m else None


def quantity_int(q) -> int | None:
    try:
        return int(str(q))
    except ValueError:
        return None


def matches(selector: dict, labels: dict) -> bool:
    ml = (selector or {}).get("matchLabels", selector or {})
    return bool(ml) and all(labels.get(k) == v for k, v in ml.items())


# ---------------------------------------------------------------------------------------------
# 1. Schemas


def _kubernetes_validate():
    """The package, with its schema file reads memoised (it re-reads ~1 MB of JSON per object)."""
    import kubernetes_validate as kv
    import kubernetes_validate.utils as kvu

    if not hasattr(kvu.schema_contents, "cache_info"):
        kvu.schema_contents = functools.lru_cache(maxsize=None)(kvu.schema_contents)
    return kv


def check_schemas(report: Report, label: str, docs: list[dict]) -> None:
    kv = _kubernetes_validate()

    for version in K8S_VERSIONS:
        report.start(f"{label}: schema (Kubernetes {version[:-2]}, strict)")
        for d in docs:
            what = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
            local = LOCAL_SCHEMAS.get((d.get("apiVersion"), d.get("kind")))
            try:
                if local:
                    schema = json.loads((K8S_DIR / local).read_text())
                    jsonschema.Draft202012Validator(schema).validate(d)
                else:
                    kv.validate(d, version, strict=True)
                report.check(what, True)
            except kv.SchemaNotFoundError:
                report.check(what, False, "no schema (add one to deploy/k8s/schemas/)")
            except jsonschema.ValidationError as e:
                path = ".".join(str(p) for p in e.absolute_path)
                report.check(what, False, f"{path}: {e.message}")
    report.end()


# ---------------------------------------------------------------------------------------------
# 2. Invariants shared by all targets

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PriorityClass", "StorageClass", "PersistentVolume", "APIService"}


def check_namespace(report: Report, label: str, docs: list[dict]) -> None:
    """Every namespaced object lands in the target's own namespace, which is Pod Security
    `restricted` and part of the render."""
    report.start(f"{label}: namespace")
    nss = find(docs, "Namespace")
    if report.check("one Namespace in the render", len(nss) == 1):
        ns = nss[0]["metadata"]["name"]
        labels = nss[0]["metadata"].get("labels", {})
        report.check(f"Namespace {ns} enforces Pod Security `restricted`",
                     labels.get("pod-security.kubernetes.io/enforce") == "restricted")
        for d in docs:
            if d["kind"] not in CLUSTER_SCOPED:
                report.check(f"{d['kind']}/{d['metadata']['name']} in namespace {ns}",
                             d["metadata"].get("namespace") == ns, str(d["metadata"].get("namespace")))
    report.end()


# ---------------------------------------------------------------------------------------------
# 2a. Invariants of a serving target


def check_security(report: Report, where: str, pod: dict) -> None:
    psc = pod.get("securityContext") or {}
    report.check(f"{where}: pod runAsNonRoot", psc.get("runAsNonRoot") is True)
    report.check(f"{where}: pod runAsUser {UID}", psc.get("runAsUser") == UID, str(psc.get("runAsUser")))
    report.check(f"{where}: pod seccompProfile RuntimeDefault",
                 (psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault")
    report.check(f"{where}: no service account token", pod.get("automountServiceAccountToken") is False)
    report.check(f"{where}: no host namespaces",
                 not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")))
    kinds = {k for v in pod.get("volumes", []) for k in v if k != "name"}
    report.check(f"{where}: only volume types Pod Security `restricted` allows",
                 kinds <= {"configMap", "emptyDir", "persistentVolumeClaim", "secret", "projected",
                           "downwardAPI", "ephemeral", "csi", "image"}, str(sorted(kinds)))
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        sc = c.get("securityContext") or {}
        n = f"{where}: container {c['name']}"
        report.check(f"{n} allowPrivilegeEscalation false", sc.get("allowPrivilegeEscalation") is False)
        report.check(f"{n} readOnlyRootFilesystem", sc.get("readOnlyRootFilesystem") is True)
        report.check(f"{n} drops ALL capabilities",
                     "ALL" in ((sc.get("capabilities") or {}).get("drop") or []))
        report.check(f"{n} adds no capabilities", not (sc.get("capabilities") or {}).get("add"))
        report.check(f"{n} not privileged", sc.get("privileged") is not True)
        report.check(f"{n} uses no host ports", not any(p.get("hostPort") for p in c.get("ports", [])))
        res = c.get("resources") or {}
        report.check(f"{n} requests cpu and memory",
                     {"cpu", "memory"} <= set((res.get("requests") or {})), str(res.get("requests")))
        report.check(f"{n} limits memory", "memory" in (res.get("limits") or {}), str(res.get("limits")))
        img = c.get("image", "")
        report.check(f"{n} image has a registry and a pinned tag",
                     "/" in img and re.search(r":[\w][\w.-]*$", img.split("/")[-1]) is not None
                     and not img.endswith(":latest"), img)


def check_probe(report: Report, where: str, c: dict, kind: str, services: set) -> dict:
    p = c.get(kind) or {}
    report.check(f"{where}: {kind} present", bool(p))
    g = p.get("grpc")
    report.check(f"{where}: {kind} is a native gRPC probe",
                 g is not None and not ({"httpGet", "tcpSocket", "exec"} & set(p)), str(p))
    if g is not None:
        report.check(f"{where}: {kind} targets port {GRPC_PORT}", g.get("port") == GRPC_PORT, str(g.get("port")))
        report.check(f"{where}: {kind} service {g.get('service', '')!r} is a health service of the server",
                     g.get("service", "") in services, f"expected one of {sorted(services)}")
    return p


def check_config_toml(report: Report, where: str, text: str, gpu: bool, schema: dict) -> dict:
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        report.check(f"{where}: config.toml parses", False, str(e))
        return {}
    report.check(f"{where}: config.toml parses", True)
    problems = config_problems(cfg, schema)
    report.check(f"{where}: config.toml keys are the server's (none unknown, none missing)",
                 not problems, "; ".join(problems))
    eps = cfg.get("runtime", {}).get("execution_providers", [])
    report.check(f"{where}: config.toml execution_providers valid",
                 bool(eps) and set(eps) <= PROVIDERS and len(set(eps)) == len(eps), str(eps))
    if gpu:
        report.check(f"{where}: config.toml puts a GPU provider first", eps[:1] in (["tensorrt"], ["cuda"]), str(eps))
    else:
        report.check(f"{where}: config.toml is CPU only", eps == ["cpu"], str(eps))
    b = cfg.get("batching", {})
    report.check(f"{where}: config.toml max_batch_size <= queue_capacity",
                 0 < b.get("max_batch_size", 0) <= b.get("queue_capacity", 0), str(b))
    return cfg


def check_server(report: Report, name: str, role: str, docs: list[dict], flags: dict) -> dict:
    gpu = role == "serve-gpu"
    facts: dict = {}
    report.start(f"{name}: deployment")
    dep = one(docs, "Deployment", "wrn")
    if not report.check("exactly one Deployment wrn", dep is not None):
        report.end()
        return facts
    pod = dep["spec"]["template"]["spec"]
    pod_labels = dep["spec"]["template"]["metadata"].get("labels", {})
    report.check("Deployment selector matches its pod labels", matches(dep["spec"]["selector"], pod_labels))
    cs = [c for c in pod["containers"] if c["name"] == "wrn"]
    if not report.check("container wrn present", len(cs) == 1):
        report.end()
        return facts
    c = cs[0]
    where = "container wrn"

    # Ports
    ports = {p.get("name"): p for p in c.get("ports", [])}
    report.check(f"{where}: port grpc = {GRPC_PORT}/TCP",
                 ports.get("grpc", {}).get("containerPort") == GRPC_PORT
                 and ports.get("grpc", {}).get("protocol", "TCP") == "TCP", str(ports.get("grpc")))
    report.check(f"{where}: port metrics = {METRICS_PORT}/TCP",
                 ports.get("metrics", {}).get("containerPort") == METRICS_PORT, str(ports.get("metrics")))

    # Args and env against the server's flags
    known = flags["serve"]
    args = c.get("args") or []
    report.check(f"{where}: command left to the image (ENTRYPOINT wrn)", "command" not in c)
    report.check(f"{where}: first argument is `serve`", args[:1] == ["serve"], str(args[:1]))
    given = parse_flags(args[1:], known, report, where)
    env_known = {e for (e, _, _) in known.values() if e}
    env = {}
    for e in c.get("env", []):
        env[e["name"]] = e.get("value")
        report.check(f"{where}: env {e['name']} is read by the server",
                     e["name"] in env_known or e["name"] in EXTRA_ENV, "unknown variable")

    def effective(flag: str) -> str | None:
        if flag in given:
            return given[flag]
        e, _, default = known.get(flag, (None, False, None))
        if e and e in env:
            return env[e]
        if e and e in IMAGE_ENV:
            return IMAGE_ENV[e]
        return default

    for flag, (e, is_bool, _) in known.items():
        if is_bool and e in env:
            report.check(f"{where}: env {e} is a boolean literal", env[e] in ("true", "false"), env[e])
    report.check(f"{where}: --addr listens on {GRPC_PORT} on all interfaces",
                 port_of(effective("addr")) == GRPC_PORT and not str(effective("addr")).startswith("127."),
                 str(effective("addr")))
    report.check(f"{where}: --metrics-addr listens on {METRICS_PORT} on all interfaces",
                 port_of(effective("metrics-addr")) == METRICS_PORT
                 and not str(effective("metrics-addr")).startswith("127."), str(effective("metrics-addr")))
    report.check(f"{where}: metrics are on", effective("no-metrics") in (None, "false"))
    # The kubelet's gRPC probes speak plaintext and send no credentials.
    report.check(f"{where}: gRPC in plaintext (kubelet gRPC probes cannot do TLS)",
                 effective("tls-cert") is None, str(effective("tls-cert")))
    report.check(f"{where}: health checks need no token (kubelet probes send none)",
                 effective("auth-health") in (None, "false"), str(effective("auth-health")))
    drain = effective("drain-timeout-secs")
    report.check(f"{where}: drain timeout is a whole number of seconds",
                 drain is not None and str(drain).isdigit(), str(drain))
    drain_s = int(drain) if drain is not None and str(drain).isdigit() else 0
    lf = effective("log-format")
    report.check(f"{where}: log format is text or json", lf in ("text", "json"), str(lf))
    eps = effective("execution-providers")
    eps_list = [p for p in (eps or "").split(",") if p]
    if eps is not None:
        report.check(f"{where}: execution providers valid",
                     set(eps_list) <= PROVIDERS and len(set(eps_list)) == len(eps_list), eps)

    # Probes
    models_dir = effective("models-dir")
    default_model = effective("default-model")
    services = {"", HEALTH_SERVICE, f"{HEALTH_SERVICE}/{default_model}"}
    startup = check_probe(report, where, c, "startupProbe", services)
    readiness = check_probe(report, where, c, "readinessProbe", services)
    liveness = check_probe(report, where, c, "livenessProbe", services)
    report.check(f"{where}: readiness follows {HEALTH_SERVICE} (NOT_SERVING on drain)",
                 (readiness.get("grpc") or {}).get("service") == HEALTH_SERVICE)
    report.check(f"{where}: startup waits for {HEALTH_SERVICE} (models warmed up)",
                 (startup.get("grpc") or {}).get("service") == HEALTH_SERVICE)
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    need = 600 if gpu else 120
    report.check(f"{where}: startup allows >= {need} s for load and warm-up", budget >= need, f"{budget} s")

    # Graceful termination
    pre = ((c.get("lifecycle") or {}).get("preStop") or {})
    pre_s = 0
    if "sleep" in pre:
        pre_s = int(pre["sleep"].get("seconds", 0))
    elif "exec" in pre:
        cmd = pre["exec"].get("command", [])
        if len(cmd) == 2 and cmd[0].endswith("sleep") and cmd[1].isdigit():
            pre_s = int(cmd[1])
    report.check(f"{where}: preStop sleeps so endpoints go before the drain", pre_s >= 5, f"{pre_s} s")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    report.check(f"pod: terminationGracePeriodSeconds ({grace}) > preStop ({pre_s}) + drain ({drain_s})",
                 grace > pre_s + drain_s)
    live_window = liveness.get("periodSeconds", 10) * liveness.get("failureThreshold", 3)
    report.check(f"{where}: liveness window ({live_window} s) >= grace period, cannot cut a drain short",
                 live_window >= grace)

    check_security(report, "pod", pod)

    # Models and config
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    mdir = mounts.get(models_dir)
    if mdir is None:
        # Option 3: models baked into the image; nothing may shadow or half-provide them.
        report.check(f"{where}: no volume at --models-dir {models_dir}: models come from the image",
                     not any(mp.startswith(models_dir + "/") and m.get("subPath") != "config.toml"
                             for mp, m in mounts.items()))
        report.check("no init container left copying models", not pod.get("initContainers"))
        report.check("no unused models volume left", "models" not in vols)
        report.check("image tag names the baked model", default_model in c.get("image", ""), c.get("image", ""))
        facts["models"] = "image"
    else:
        report.check(f"{where}: models mounted read-only", mdir.get("readOnly") is True)
        mv = vols.get(mdir["name"], {})
        if "emptyDir" in mv:
            inits = [i for i in pod.get("initContainers", [])
                     if any(m["name"] == mdir["name"] for m in i.get("volumeMounts", []))]
            report.check("models emptyDir is filled by an init container from a model image",
                         len(inits) == 1 and "wrn-models" in inits[0].get("image", ""),
                         str([i.get("image") for i in inits]))
            facts["models"] = "init-container"
        elif "persistentVolumeClaim" in mv:
            claim = mv["persistentVolumeClaim"].get("claimName")
            report.check(f"models PVC {claim} is part of the render", one(docs, "PersistentVolumeClaim", claim) is not None)
            report.check("models PVC mounted read-only", mv["persistentVolumeClaim"].get("readOnly") is True)
            report.check("no init container left copying models", not pod.get("initContainers"))
            facts["models"] = "pvc"
            facts["models_claim"] = claim
        else:
            report.check("models volume is an emptyDir or a PVC", False, str(mv))
    cfg_mounts = [m for m in c.get("volumeMounts", []) if m.get("subPath") == "config.toml"]
    report.check(f"{where}: config.toml mounted from a ConfigMap", len(cfg_mounts) == 1)
    cfg = {}
    if cfg_mounts:
        m = cfg_mounts[0]
        cm_name = (vols.get(m["name"], {}).get("configMap") or {}).get("name")
        cm = one(docs, "ConfigMap", cm_name)
        report.check(f"ConfigMap {cm_name} is part of the render", cm is not None)
        if cm:
            schema, trt_default, _ = config_schema()
            cfg = check_config_toml(report, f"ConfigMap {cm_name}", cm.get("data", {}).get("config.toml", ""),
                                    gpu, schema)
            if cfg:
                want = f"{models_dir}/{cfg.get('name')}/config.toml"
                report.check(f"config.toml mounted at <models-dir>/<name>/config.toml", m["mountPath"] == want,
                             f"{m['mountPath']} != {want}")
                report.check(f"--default-model {default_model} is the configured model",
                             cfg.get("name") == default_model, str(cfg.get("name")))
                report.check("config mount read-only", m.get("readOnly") is True)
                rt = cfg.get("runtime", {})
                if "tensorrt" in rt.get("execution_providers", []) or "tensorrt" in eps_list:
                    cache = rt.get("tensorrt", {}).get("cache_dir", trt_default)
                    under = [mp for mp in mounts if cache == mp or cache.startswith(mp.rstrip("/") + "/")]
                    mnt = mounts[max(under, key=len)] if under else None
                    vol = vols.get(mnt["name"], {}) if mnt else {}
                    size = str((vol.get("emptyDir") or {}).get("sizeLimit", ""))
                    gi = re.fullmatch(r"(\d+)(Gi|Ti)", size)
                    big = "persistentVolumeClaim" in vol or (
                        "emptyDir" in vol and (not size or (gi is not None and (gi.group(2) == "Ti" or int(gi.group(1)) >= 2))))
                    # An engine per model and profile (a few hundred MB for WRN-50-2), more after upgrades.
                    report.check(f"TensorRT cache {cache} is on a writable volume of >= 2Gi",
                                 mnt is not None and mnt.get("readOnly") is not True and big,
                                 f"mount={mnt and mnt['mountPath']} volume={vol}")

    # GPU or CPU
    res = c.get("resources") or {}
    gpus = quantity_int((res.get("limits") or {}).get("nvidia.com/gpu", 0))
    tol = [t for t in pod.get("tolerations", []) if t.get("key") == "nvidia.com/gpu"]
    if gpu:
        report.check(f"{where}: limits nvidia.com/gpu: 1", gpus == 1, str(gpus))
        req = (res.get("requests") or {}).get("nvidia.com/gpu")
        report.check(f"{where}: GPU request equals limit", req is None or quantity_int(req) == gpus, str(req))
        report.check("pod tolerates the nvidia.com/gpu taint",
                     any(t.get("operator") == "Exists" and t.get("effect") in (None, "NoSchedule") for t in tol),
                     str(tol))
        terms = (((pod.get("affinity") or {}).get("nodeAffinity") or {})
                 .get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms", [])
        keys = [e["key"] for t in terms for e in t.get("matchExpressions", [])] + list(pod.get("nodeSelector", {}))
        report.check("pod is pinned to GPU nodes (affinity or nodeSelector)",
                     bool(keys) and all(re.search(r"gpu|accelerator", k) for k in keys), str(keys))
        report.check(f"{where}: WRN_EXECUTION_PROVIDERS puts a GPU provider first",
                     eps_list[:1] in (["tensorrt"], ["cuda"]), str(eps))
        report.check(f"{where}: WRN_REQUIRE_GPU=true (no silent CPU fallback)",
                     effective("require-gpu") == "true", str(effective("require-gpu")))
        if cfg:
            report.check("config.toml providers agree with WRN_EXECUTION_PROVIDERS",
                         cfg.get("runtime", {}).get("execution_providers") == eps_list)
    else:
        report.check(f"{where}: no GPU requested", gpus == 0 and not tol)
        report.check(f"{where}: does not require a GPU", effective("require-gpu") in (None, "false"))
    report.end()

    # Services, ServiceMonitor, HPA, PDB
    report.start(f"{name}: services, monitoring, scaling")
    svc = one(docs, "Service", "wrn")
    hl = one(docs, "Service", "wrn-headless")
    if report.check("Service wrn present", svc is not None):
        report.check("Service wrn is ClusterIP", svc["spec"].get("type", "ClusterIP") == "ClusterIP"
                     and svc["spec"].get("clusterIP") != "None")
        report.check("Service wrn selects the pods", matches(svc["spec"]["selector"], pod_labels))
        sp = {p["name"]: p for p in svc["spec"]["ports"]}
        report.check("Service wrn grpc -> container grpc", sp.get("grpc", {}).get("targetPort") in ("grpc", GRPC_PORT)
                     and sp.get("grpc", {}).get("port") == GRPC_PORT, str(sp.get("grpc")))
        report.check("Service wrn metrics -> container metrics",
                     sp.get("metrics", {}).get("targetPort") in ("metrics", METRICS_PORT), str(sp.get("metrics")))
    if report.check("Service wrn-headless present", hl is not None):
        report.check("Service wrn-headless is headless", hl["spec"].get("clusterIP") == "None")
        report.check("Service wrn-headless selects the pods", matches(hl["spec"]["selector"], pod_labels))
        report.check("Service wrn-headless lists only ready pods", hl["spec"].get("publishNotReadyAddresses") is not True)
        hp = {p["name"]: p for p in hl["spec"]["ports"]}
        report.check("Service wrn-headless grpc -> container grpc",
                     hp.get("grpc", {}).get("targetPort") in ("grpc", GRPC_PORT), str(hp.get("grpc")))
    sm = one(docs, "ServiceMonitor", "wrn")
    if report.check("ServiceMonitor wrn present", sm is not None):
        eps_ = sm["spec"]["endpoints"]
        report.check("ServiceMonitor scrapes port metrics at /metrics",
                     any(e.get("port") == "metrics" and e.get("path", "/metrics") == "/metrics" for e in eps_))
        selected = [s for s in find(docs, "Service") if matches(sm["spec"]["selector"], s["metadata"].get("labels", {}))]
        report.check("ServiceMonitor selects Service wrn", any(s["metadata"]["name"] == "wrn" for s in selected),
                     str([s["metadata"]["name"] for s in selected]))
        report.check("every selected Service has a metrics port (no double or empty scrape)",
                     all(any(p["name"] == "metrics" for p in s["spec"]["ports"]) for s in selected))
    hpa = one(docs, "HorizontalPodAutoscaler", "wrn")
    if report.check("HorizontalPodAutoscaler wrn present", hpa is not None):
        ref = hpa["spec"]["scaleTargetRef"]
        report.check("HPA scales Deployment wrn", ref.get("kind") == "Deployment" and ref.get("name") == "wrn")
        report.check("Deployment leaves replicas to the HPA", "replicas" not in dep["spec"])
        lo, hi = hpa["spec"].get("minReplicas", 1), hpa["spec"]["maxReplicas"]
        report.check(f"HPA 1 <= min ({lo}) <= max ({hi})", 1 <= lo <= hi)
        metrics = hpa["spec"].get("metrics", [])
        report.check("HPA has metrics", bool(metrics))
        for m in metrics:
            if m["type"] == "Resource":
                report.check(f"HPA resource metric {m['resource']['name']} has a request to compare with",
                             m["resource"]["name"] in (res.get("requests") or {}))
            elif m["type"] == "Pods":
                facts["pods_metric"] = m["pods"]["metric"]
        pdb = one(docs, "PodDisruptionBudget", "wrn")
        if report.check("PodDisruptionBudget wrn present", pdb is not None):
            report.check("PDB selects the pods", matches(pdb["spec"]["selector"], pod_labels))
            mu = pdb["spec"].get("maxUnavailable")
            ma = pdb["spec"].get("minAvailable")
            report.check("PDB lets a drain evict one pod even at minReplicas",
                         (mu is not None and quantity_int(mu) and quantity_int(mu) >= 1)
                         or (ma is not None and quantity_int(ma) is not None and quantity_int(ma) < lo),
                         f"maxUnavailable={mu} minAvailable={ma} minReplicas={lo}")
    if "pods_metric" in facts:
        check_adapter(report, facts["pods_metric"])
    report.end()
    return facts


def check_adapter(report: Report, metric: dict) -> None:
    """The HPA's Pods metric must be one the adapter rule exposes, per pod and namespace."""
    cm = load_docs(ADAPTER_CONFIG)[0]
    rules = yaml.safe_load(cm["data"]["config.yaml"]).get("rules", [])
    name = metric["name"]
    hits = [r for r in rules if (r.get("name") or {}).get("as") == name
            or (not r.get("name") and re.search(rf"\b{name}\b", r.get("seriesQuery", "")))]
    if not report.check(f"adapter rule exposes the HPA metric {name}", len(hits) == 1):
        return
    r = hits[0]
    report.check("adapter rule reads the server's gauge wrn_queue_depth", "wrn_queue_depth" in r["seriesQuery"])
    ov = (r.get("resources") or {}).get("overrides", {})
    report.check("adapter rule maps namespace and pod labels",
                 ov.get("namespace", {}).get("resource") == "namespace" and ov.get("pod", {}).get("resource") == "pod")
    report.check("adapter query keeps the HPA's label selector and groups by pod",
                 "<<.LabelMatchers>>" in r.get("metricsQuery", "") and "<<.GroupBy>>" in r.get("metricsQuery", ""))
    sel = (metric.get("selector") or {}).get("matchLabels", {})
    report.check("HPA metric selects by the gauge's `model` label only", set(sel) <= {"model"}, str(sel))


# ---------------------------------------------------------------------------------------------
# 2b. Invariants of the training target


def check_training(report: Report, name: str, docs: list[dict], flags: dict) -> dict:
    facts: dict = {}
    report.start(f"{name}: job")
    job = one(docs, "Job", "wrn-train")
    if not report.check("exactly one Job wrn-train", job is not None):
        report.end()
        return facts
    pod = job["spec"]["template"]["spec"]
    report.check("restartPolicy Never or OnFailure", pod.get("restartPolicy") in ("Never", "OnFailure"))
    report.check("backoffLimit and activeDeadlineSeconds bound the run",
                 job["spec"].get("backoffLimit") is not None and job["spec"].get("activeDeadlineSeconds", 0) > 0)
    c = pod["containers"][0]
    report.check("image is wrn-train", "/wrn-train:" in c.get("image", ""), c.get("image", ""))
    argv = (c.get("command") or []) + (c.get("args") or [])
    report.check("runs `wrn train`", argv[:2] == ["wrn", "train"], str(argv[:2]))
    given = parse_flags(argv[2:], flags["train"], report, "wrn train")
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    report.check("--artifacts /artifacts", given.get("artifacts") == "/artifacts")
    report.check("--data /data", given.get("data") == "/data")
    out = given.get("out", "")
    report.check("--out /models/<name>", re.fullmatch(r"/models/[A-Za-z0-9_.-]+", out) is not None, out)
    for path, writable in (("/artifacts", False), ("/data", False), ("/models", True)):
        m = mounts.get(path)
        if not report.check(f"{path} is a mounted volume", m is not None):
            continue
        report.check(f"{path} is {'writable' if writable else 'read-only'}",
                     (m.get("readOnly") is not True) if writable else (m.get("readOnly") is True))
        claim = (vols.get(m["name"], {}).get("persistentVolumeClaim") or {}).get("claimName")
        report.check(f"{path} is a PVC in the render", one(docs, "PersistentVolumeClaim", claim) is not None,
                     str(claim))
        if path == "/models":
            facts["models_claim"] = claim
            pvc = one(docs, "PersistentVolumeClaim", claim)
            report.check("model PVC is ReadWriteMany (serving pods on many nodes read it)",
                         pvc is not None and "ReadWriteMany" in pvc["spec"].get("accessModes", []))
    check_security(report, "pod", pod)
    report.end()
    return facts


# ---------------------------------------------------------------------------------------------
# 3. Self-test: every mutation must be caught


def _wrn(docs):
    return one(docs, "Deployment", "wrn")["spec"]["template"]["spec"]["containers"][0]


def _pod(docs):
    return one(docs, "Deployment", "wrn")["spec"]["template"]["spec"]


def _set_toml(docs, old, new):
    cm = [d for d in docs if d["kind"] == "ConfigMap" and "config.toml" in d.get("data", {})][0]
    assert old in cm["data"]["config.toml"], old
    cm["data"]["config.toml"] = cm["data"]["config.toml"].replace(old, new)


MUTATIONS = [
    ("gpu", "grace period not above preStop + drain",
     lambda d: _pod(d).__setitem__("terminationGracePeriodSeconds", 40)),
    ("gpu", "readiness probe on another port",
     lambda d: _wrn(d)["readinessProbe"]["grpc"].__setitem__("port", 8080)),
    ("gpu", "startup probe on an unknown health service",
     lambda d: _wrn(d)["startupProbe"]["grpc"].__setitem__("service", "wrn.Classifier")),
    ("gpu", "readiness as an HTTP probe",
     lambda d: _wrn(d).__setitem__("readinessProbe", {"httpGet": {"port": 9090, "path": "/metrics"}})),
    ("gpu", "no nvidia.com/gpu taint toleration", lambda d: _pod(d).pop("tolerations")),
    ("gpu", "no GPU limit", lambda d: _wrn(d)["resources"]["limits"].pop("nvidia.com/gpu")),
    ("gpu", "GPU fallback to CPU allowed",
     lambda d: _wrn(d).__setitem__("env", [e for e in _wrn(d)["env"] if e["name"] != "WRN_REQUIRE_GPU"])),
    ("gpu", "no GPU node affinity", lambda d: _pod(d).pop("affinity")),
    ("gpu", "a misspelt server flag",
     lambda d: _wrn(d)["args"].__setitem__(3, "--adress=0.0.0.0:50051")),
    ("gpu", "gRPC listening on another port",
     lambda d: _wrn(d)["args"].__setitem__(3, "--addr=0.0.0.0:8500")),
    ("gpu", "health behind the bearer token",
     lambda d: _wrn(d)["env"].append({"name": "WRN_AUTH_HEALTH", "value": "true"})),
    ("gpu", "an env var the server does not read",
     lambda d: _wrn(d)["env"].append({"name": "WRN_DRAIN_TIMEOUT", "value": "30"})),
    ("gpu", "metrics container port moved",
     lambda d: _wrn(d)["ports"][1].__setitem__("containerPort", 9091)),
    ("gpu", "writable root filesystem",
     lambda d: _wrn(d)["securityContext"].__setitem__("readOnlyRootFilesystem", False)),
    ("gpu", "init container keeps capabilities",
     lambda d: _pod(d)["initContainers"][0]["securityContext"].pop("capabilities")),
    ("gpu", "pod may run as root", lambda d: _pod(d)["securityContext"].pop("runAsNonRoot")),
    ("gpu", "a field Kubernetes does not know (schema, strict)",
     lambda d: _wrn(d).__setitem__("imagePullPolicyy", "Always")),
    ("gpu", "a wrongly typed field (schema)",
     lambda d: _pod(d).__setitem__("terminationGracePeriodSeconds", "45")),
    ("gpu", "config.toml with an unknown key",
     lambda d: _set_toml(d, "[batching]", "[batching]\nmax_batch = 8")),
    ("gpu", "config.toml for another model than the mount path",
     lambda d: _set_toml(d, 'name = "wide_resnet50_2"', 'name = "wide_resnet101_2"')),
    ("gpu", "TensorRT engine cache on the small /tmp volume",
     lambda d: _set_toml(d, 'cache_dir = "/var/cache/wrn"', 'cache_dir = "/tmp/trt"')),
    ("gpu", "config.toml missing a required key",
     lambda d: _set_toml(d, "crop = 224\n", "")),
    ("gpu", "fixed replicas fighting the HPA",
     lambda d: one(d, "Deployment", "wrn")["spec"].__setitem__("replicas", 3)),
    ("gpu", "ServiceMonitor on a port the Service lacks",
     lambda d: one(d, "ServiceMonitor", "wrn")["spec"]["endpoints"][0].__setitem__("port", "http-metrics")),
    ("gpu", "headless Service with a cluster IP",
     lambda d: one(d, "Service", "wrn-headless")["spec"].pop("clusterIP")),
    ("gpu", "PDB that blocks every drain at one replica",
     lambda d: one(d, "PodDisruptionBudget", "wrn")["spec"].update({"maxUnavailable": 0})),
    ("cpu", "an object outside the namespace",
     lambda d: one(d, "ServiceMonitor", "wrn")["metadata"].pop("namespace")),
    ("cpu", "a hostPath volume", lambda d: _pod(d)["volumes"].append({"name": "h", "hostPath": {"path": "/"}})),
    ("cpu", "CPU overlay asking for a GPU",
     lambda d: _wrn(d)["resources"]["limits"].__setitem__("nvidia.com/gpu", 1)),
    ("cpu", "--models-dir pointing next to the models volume",
     lambda d: _wrn(d)["args"].__setitem__(1, "--models-dir=/model")),
    ("cpu-models-baked", "baked-model pods still mounting a volume over /models",
     lambda d: _wrn(d)["volumeMounts"].append({"name": "tmp", "mountPath": "/models/wide_resnet50_2"})),
    ("cpu", "image without a registry", lambda d: _wrn(d).__setitem__("image", "wrn")),
    ("queue-depth-hpa", "HPA on a metric the adapter does not serve",
     lambda d: one(d, "HorizontalPodAutoscaler", "wrn")["spec"]["metrics"][0]["pods"]["metric"]
     .__setitem__("name", "wrn_queue_length")),
    ("gpu-models-pvc", "models PVC mounted writable",
     lambda d: [v for v in _pod(d)["volumes"] if v["name"] == "models"][0]["persistentVolumeClaim"]
     .pop("readOnly")),
    ("training", "training writes outside /models",
     lambda d: one(d, "Job", "wrn-train")["spec"]["template"]["spec"]["containers"][0]["args"]
     .__setitem__(-1, "/tmp/out")),
    ("training", "training data mounted writable",
     lambda d: one(d, "Job", "wrn-train")["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][1]
     .pop("readOnly")),
]


def self_test(report: Report, rendered: Path, flags: dict) -> None:
    import copy

    report.start("self-test: each known-bad variant is caught")
    roles = {n: r for n, _, r in TARGETS}
    cache = {}
    for target, what, mutate in MUTATIONS:
        if target not in cache:
            cache[target] = load_docs(rendered / f"{target}.yaml")
        docs = copy.deepcopy(cache[target])
        try:
            mutate(docs)
        except (KeyError, IndexError, TypeError, AssertionError) as e:
            report.check(f"{target}: {what}", False, f"mutation does not apply any more ({e!r})")
            continue
        inner = Report(False, quiet=True)
        check_schemas(inner, target, docs)
        check_namespace(inner, target, docs)
        try:
            if roles[target].startswith("serve"):
                check_server(inner, target, roles[target], docs, flags)
            else:
                check_training(inner, target, docs, flags)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            inner.failed += 1  # the real run would stop with a traceback: caught, if not nicely
        report.check(f"{target}: {what}", inner.failed > 0, "not detected")
    report.end()


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rendered", nargs="?", type=Path)
    ap.add_argument("--list-targets", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    if a.list_targets:
        for n, d, _ in TARGETS:
            print(f"{n}\t{d}")
        return 0
    if a.rendered is None:
        ap.error("RENDERED_DIR is required")

    report = Report(a.verbose)
    flags, source = cli_flags()
    print(f"server flags from {source}; model config keys from {config_schema()[2]}")
    facts = {}
    for n, _, role in TARGETS:
        path = a.rendered / f"{n}.yaml"
        report.start(f"{n}: rendered")
        ok = report.check(f"{path} exists", path.is_file())
        report.end()
        if not ok:
            continue
        docs = load_docs(path)
        check_schemas(report, n, docs)
        check_namespace(report, n, docs)
        if role.startswith("serve"):
            facts[n] = check_server(report, n, role, docs, flags)
        else:
            facts[n] = check_training(report, n, docs, flags)
    for rel in PLAIN:
        check_schemas(report, rel, load_docs(K8S_DIR / rel))

    report.start("across targets")
    report.check("the PVC option serves the claim the training Job writes",
                 facts.get("gpu-models-pvc", {}).get("models_claim") is not None
                 and facts.get("gpu-models-pvc", {}).get("models_claim") == facts.get("training", {}).get("models_claim"))
    report.check("cpu and gpu overlays deliver models by init container",
                 facts.get("cpu", {}).get("models") == facts.get("gpu", {}).get("models") == "init-container")
    report.check("all three model delivery options are rendered",
                 {f.get("models") for f in facts.values()} >= {"init-container", "pvc", "image"})
    report.end()

    if all((a.rendered / f"{n}.yaml").is_file() for n, _, _ in TARGETS):
        self_test(report, a.rendered, flags)

    print(f"invariants: {report.passed} passed, {report.failed} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
