"""The deployment kit (deploy/ and docs/scaling.md) against the server's contract and against
itself: ports, probe paths, drain timing, selectors, metric names, the LiteLLM router and
the endpoint picker's configuration. Reads files only: no network, no binary, no cluster."""

import json
import re
import tomllib
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DOCS = ROOT / "docs" / "scaling.md"

# Every metric `llama32 serve` exports by contract: its own names, then those added by
# `--metrics-compat vllm` and `--metrics-compat sglang`. Histograms are listed by their base
# name (the exposition adds _bucket, _sum and _count). A check against a running server's
# /metrics can use this list.
METRIC_NAMES = (
    "llama32_requests_in_flight",
    "llama32_sequences_running",
    "llama32_sequences_waiting",
    "llama32_kv_cache_usage",
    "llama32_kv_blocks_used",
    "llama32_kv_blocks_free",
    "llama32_kv_blocks_total",
    "llama32_kv_block_size",
    "llama32_prefix_cache_query_tokens_total",
    "llama32_prefix_cache_hit_tokens_total",
    "llama32_preemptions_total",
    "llama32_prompt_tokens_total",
    "llama32_generation_tokens_total",
    "llama32_time_to_first_token_seconds",
    "llama32_inter_token_latency_seconds",
    "llama32_requests_total",
    "llama32_draining",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "vllm:cache_config_info",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:num_preemptions_total",
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "sglang:num_running_reqs",
    "sglang:num_queue_reqs",
    "sglang:token_usage",
)
HISTOGRAMS = {
    "llama32_time_to_first_token_seconds",
    "llama32_inter_token_latency_seconds",
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
}
# Gauges: what an autoscaler or an endpoint picker can read as a current value.
GAUGES = {
    "llama32_requests_in_flight", "llama32_sequences_running", "llama32_sequences_waiting",
    "llama32_kv_cache_usage", "llama32_kv_blocks_used", "llama32_kv_blocks_free",
    "llama32_kv_blocks_total", "llama32_kv_block_size", "llama32_draining",
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc", "vllm:cache_config_info",
    "sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage",
}

# `llama32 serve` flags of the contract (value-taking unless listed in SWITCHES).
SERVE_FLAGS = {
    "--model", "--host", "--port", "--api-key", "--api-key-file", "--metrics-public",
    "--drain-timeout", "--metrics-compat", "--max-connections", "--max-connections-per-ip",
    "--served-model-name", "--kv-memory", "--kv-dtype", "--dtype", "--device", "--ctx-size",
    "--parallel", "--queue", "--threads", "--log-format",
}
SWITCHES = {"--metrics-public"}

# What LiteLLM's router accepts (router_settings reference).
LITELLM_ROUTING = {"simple-shuffle", "least-busy", "usage-based-routing", "latency-based-routing",
                   "usage-based-routing-v2", "cost-based-routing"}
LITELLM_RETRY_FIELDS = {"BadRequestErrorRetries", "AuthenticationErrorRetries", "TimeoutErrorRetries",
                        "RateLimitErrorRetries", "ContentPolicyViolationErrorRetries",
                        "InternalServerErrorRetries", "ServiceUnavailableErrorRetries"}

EPP_SCORERS = {"prefix-cache-scorer", "queue-scorer", "kv-cache-utilization-scorer"}
METRIC_RE = re.compile(r"(?<![A-Za-z0-9_:])(?:llama32_[a-z0-9_]+|vllm:[a-z0-9_:]+|sglang:[a-z0-9_:]+)")


def yaml_files():
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def load_all(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def objects(kind):
    found = [d for p in yaml_files() for d in load_all(p) if isinstance(d, dict) and d.get("kind") == kind]
    assert found, f"no {kind} under deploy/"
    return found


def one(kind):
    found = objects(kind)
    assert len(found) == 1, f"{len(found)} objects of kind {kind}"
    return found[0]


def deployment():
    return one("Deployment")


def container():
    (c,) = [c for c in deployment()["spec"]["template"]["spec"]["containers"] if c["name"] == "llama32"]
    return c


def parse_args(args):
    """`--flag value`, `--flag=value` and switches, into {flag: value or True}."""
    out, i = {}, 0
    while i < len(args):
        a = str(args[i])
        assert a.startswith("--"), f"stray argument {a!r}"
        if "=" in a:
            flag, value = a.split("=", 1)
        elif a in SWITCHES:
            flag, value = a, True
        else:
            assert i + 1 < len(args), f"{a} has no value"
            flag, value = a, str(args[i + 1])
            i += 1
        assert flag not in out, f"{flag} given twice"
        out[flag] = value
        i += 1
    return out


def args():
    return parse_args(container()["args"])


def port_number(port):
    """A probe's or Service's port: a number, or the name of a container port."""
    if isinstance(port, int):
        return port
    (p,) = [p for p in container()["ports"] if p.get("name") == port]
    return p["containerPort"]


def quantity_bytes(q):
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?)?", str(q))
    assert m, f"quantity {q!r}"
    return float(m.group(1)) * units.get(m.group(2) or "", 1)


def containerfile():
    """The Containerfile's instructions as (KEYWORD, rest), continuation lines joined."""
    lines, pending = [], ""
    for raw in (DEPLOY / "Containerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    assert not pending, "the Containerfile ends in a continuation"
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def instructions(keyword):
    return [rest for kw, rest in containerfile() if kw == keyword]


def litellm():
    return yaml.safe_load((DEPLOY / "litellm" / "config.yaml").read_text())


def epp_config():
    return yaml.safe_load((K8S / "epp-config.yaml").read_text())


def epp_alternative():
    """The commented EndpointPickerConfig between BEGIN and END ALTERNATIVE, uncommented."""
    text = (K8S / "epp-config.yaml").read_text()
    m = re.search(r"^# BEGIN ALTERNATIVE\n(.*?)^# END ALTERNATIVE$", text, re.M | re.S)
    assert m, "epp-config.yaml has no commented alternative"
    body = []
    for line in m.group(1).splitlines():
        assert line == "#" or line.startswith("# "), f"not a commented line: {line!r}"
        body.append(line[2:])
    return yaml.safe_load("\n".join(body))


def metric_base(name):
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return name[: -len(suffix)]
    return name


def metrics_mentioned(text):
    return {metric_base(m) for m in METRIC_RE.findall(text)}


def docs_metric_table_names():
    """Metric names in the first column of docs/scaling.md's tables."""
    names = set()
    for line in DOCS.read_text().splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            names |= metrics_mentioned(first)
    return names


# --- every file --------------------------------------------------------------------------


def test_every_yaml_file_parses():
    files = yaml_files()
    assert {p.relative_to(DEPLOY).as_posix() for p in files} >= {
        "litellm/config.yaml", "kubernetes/deployment.yaml", "kubernetes/service.yaml",
        "kubernetes/hpa.yaml", "kubernetes/inferencepool.yaml", "kubernetes/epp-config.yaml"}
    for p in files:
        docs = load_all(p)
        assert docs, f"{p} is empty"
        assert all(isinstance(d, dict) for d in docs), p


def test_metric_names_are_the_contracts():
    assert len(set(METRIC_NAMES)) == len(METRIC_NAMES)
    assert HISTOGRAMS <= set(METRIC_NAMES) and GAUGES <= set(METRIC_NAMES)
    mentioned = metrics_mentioned(DOCS.read_text())
    for p in sorted(DEPLOY.rglob("*")):
        if p.is_file():
            found = metrics_mentioned(p.read_text())
            assert found <= set(METRIC_NAMES), f"{p.relative_to(ROOT)} names unknown metrics {found - set(METRIC_NAMES)}"
            mentioned |= found
    assert mentioned <= set(METRIC_NAMES), mentioned - set(METRIC_NAMES)
    # The docs' tables list the whole contract.
    assert docs_metric_table_names() >= set(METRIC_NAMES) - {"sglang:num_running_reqs", "sglang:num_queue_reqs",
                                                             "sglang:token_usage"}
    text = DOCS.read_text()
    assert all(f"`{n}`" in text for n in METRIC_NAMES)


# --- the container -----------------------------------------------------------------------


def test_containerfile_builds_and_runs_the_server():
    froms = instructions("FROM")
    assert len(froms) == 2, froms
    assert re.search(r"\bAS\s+build\b", froms[0], re.I), froms[0]
    assert "rust" in froms[0] and "debian" in froms[1] and "slim" in froms[1]
    builds = [r for r in instructions("RUN") if "cargo build" in r]
    assert len(builds) == 1 and re.search(r"cargo build --release --locked --bin llama32\b", builds[0])
    assert any(r.startswith("--from=build") for r in instructions("COPY"))
    assert json.loads(instructions("ENTRYPOINT")[-1]) == ["llama32", "serve"]
    cmd = parse_args(json.loads(instructions("CMD")[-1]))
    assert cmd["--host"] == "0.0.0.0"
    assert instructions("EXPOSE") == [cmd["--port"]]
    assert instructions("STOPSIGNAL") == ["SIGTERM"]
    (user,) = instructions("USER")
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), "a numeric non-root user (runAsNonRoot checks it)"
    assert any(re.fullmatch(r"HF_HOME=/models/hf", e) for e in instructions("ENV"))


def test_the_binary_needs_only_default_features():
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    (binary,) = [b for b in cargo["bin"] if b["name"] == "llama32"]
    assert set(binary.get("required-features", [])) <= set(cargo["features"]["default"])


def test_build_context_leaves_out_build_outputs():
    ignored = {ln.strip().strip("/") for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    assert {"target", ".git"} <= ignored
    # What the release build reads must stay in the context.
    assert not ignored & {"src", "benches", "Cargo.toml", "Cargo.lock", "models.toml", "README.md"}


# --- Kubernetes ----------------------------------------------------------------------------


def test_ports_agree():
    port = int(args()["--port"])
    assert args()["--host"] == "0.0.0.0"
    (http,) = [p for p in container()["ports"] if p["name"] == "http"]
    assert http["containerPort"] == port
    svc = one("Service")
    assert svc["spec"]["type"] == "ClusterIP"
    assert [port_number(p["targetPort"]) for p in svc["spec"]["ports"]] == [port]
    assert [p["number"] for p in one("InferencePool")["spec"]["targetPorts"]] == [port]
    assert instructions("EXPOSE") == [str(port)]
    annotations = deployment()["spec"]["template"]["metadata"].get("annotations", {})
    if "prometheus.io/port" in annotations:
        assert int(annotations["prometheus.io/port"]) == port
    for m in litellm()["model_list"]:
        assert re.fullmatch(rf"http://[a-z0-9.-]+:{port}/v1", m["litellm_params"]["api_base"]), m


def test_probes_read_the_contracts_paths():
    c = container()
    ready, live = c["readinessProbe"], c["livenessProbe"]
    assert ready["httpGet"]["path"] == "/health"
    assert live["httpGet"]["path"] == "/livez"
    port = int(args()["--port"])
    assert port_number(ready["httpGet"]["port"]) == port == port_number(live["httpGet"]["port"])
    # A drain must take the pod out within a probe period.
    assert ready["periodSeconds"] <= 2 and ready["failureThreshold"] == 1
    if "startupProbe" in c:
        # /health is 503 for the whole model load: a startup probe on it would restart the pod.
        assert c["startupProbe"]["httpGet"]["path"] == "/livez"


def test_drain_fits_in_the_grace_period():
    spec = deployment()["spec"]["template"]["spec"]
    pre_stop = container()["lifecycle"]["preStop"]
    sleep = pre_stop["sleep"]["seconds"] if "sleep" in pre_stop else 0
    drain = int(args()["--drain-timeout"])
    assert sleep >= 1, "a preStop pause lets endpoints and gateways forget the pod first"
    assert spec["terminationGracePeriodSeconds"] >= sleep + drain + 5
    strategy = deployment()["spec"].get("strategy", {}).get("rollingUpdate", {})
    assert strategy.get("maxUnavailable", 1) == 0


def test_deployment_flags_are_the_servers():
    a = args()
    assert set(a) <= SERVE_FLAGS, set(a) - SERVE_FLAGS
    assert a["--model"].startswith("/models/")
    mounts = {m["mountPath"] for m in container()["volumeMounts"]}
    assert "/models" in mounts
    # Behind a gateway every connection comes from a few addresses.
    assert int(a["--max-connections-per-ip"]) >= 1024
    assert a.get("--metrics-compat", "vllm") in ("vllm", "sglang")
    env = {e["name"]: e for e in container().get("env", [])}
    if "LLAMA32_API_KEY" in env:
        assert env["LLAMA32_API_KEY"]["valueFrom"]["secretKeyRef"]["optional"] is True


def test_resources_hold_weights_and_kv_pool():
    kv = int(args()["--kv-memory"]) * 2**20  # MiB
    weights, overhead = 1.3 * 2**30, 0.4 * 2**30  # 1B in q8_0, and a little for the rest
    res = container()["resources"]
    for side in ("requests", "limits"):
        assert quantity_bytes(res[side]["memory"]) >= kv + weights + overhead, side
    assert res["requests"]["memory"] == res["limits"]["memory"]


def test_selectors_and_references_agree():
    d = deployment()
    labels = d["spec"]["template"]["metadata"]["labels"]
    assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert one("Service")["spec"]["selector"].items() <= labels.items()
    pool = one("InferencePool")
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ref = pool["spec"]["endpointPickerRef"]
    assert ref["name"] and ref.get("kind", "Service") == "Service" and ref["port"]["number"]
    hpa = one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": d["metadata"]["name"]}
    backends = [b for rule in one("HTTPRoute")["spec"]["rules"] for b in rule["backendRefs"]]
    assert {"group": "inference.networking.k8s.io", "kind": "InferencePool",
            "name": pool["metadata"]["name"]} in backends
    claim = [v for v in d["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert {v["persistentVolumeClaim"]["claimName"] for v in claim} <= {
        p["metadata"]["name"] for p in objects("PersistentVolumeClaim")}


def test_hpa_scales_on_a_documented_gauge():
    hpa = one("HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    assert name in GAUGES and name in docs_metric_table_names()
    assert metric["pods"]["target"]["type"] == "AverageValue"
    assert hpa["spec"]["minReplicas"] >= 2


# --- the endpoint picker ------------------------------------------------------------------


def check_epp(config):
    assert config["apiVersion"] == "inference.networking.x-k8s.io/v1alpha1"
    assert config["kind"] == "EndpointPickerConfig"
    names = [p.get("name", p["type"]) for p in config["plugins"]]
    assert len(set(names)) == len(names), names
    types = {p.get("name", p["type"]): p["type"] for p in config["plugins"]}
    (profile,) = config["schedulingProfiles"]
    refs = [r["pluginRef"] for r in profile["plugins"]]
    assert set(refs) <= set(types), set(refs) - set(types)
    assert {types[r] for r in refs} >= EPP_SCORERS | {"max-score-picker"}
    for r in profile["plugins"]:
        if types[r["pluginRef"]] in EPP_SCORERS:
            assert r.get("weight", 1) > 0
    for p in config["plugins"]:
        if p["type"] == "prefix-cache-scorer" and "blockSizeTokens" in p.get("parameters", {}):
            assert p["parameters"]["blockSizeTokens"] == 16, "llama32's KV block"
    for source in (config.get("dataLayer") or {}).get("sources", []):
        assert source["pluginRef"] in types
        assert all(e["pluginRef"] in types for e in source["extractors"])


def engine_specs(config):
    """The metric names of the config's engineConfigs (none: the EPP's vLLM defaults)."""
    specs = set()
    for p in config["plugins"]:
        for engine in (p.get("parameters") or {}).get("engineConfigs", []):
            specs |= {v.split("{")[0] for k, v in engine.items() if k.endswith("Spec") and v}
    return specs


def test_epp_config_reads_metrics_the_replicas_export():
    config = epp_config()
    check_epp(config)
    specs = engine_specs(config)
    assert specs <= set(METRIC_NAMES), specs - set(METRIC_NAMES)
    a = args()
    if not specs or any(s.startswith("vllm:") for s in specs):
        # The EPP's defaults are vLLM's names.
        assert a.get("--metrics-compat") == "vllm"
    # The EPP scrapes /metrics without a key.
    assert a.get("--metrics-public") is True


def test_epp_alternative_uses_our_own_names():
    config = epp_alternative()
    check_epp(config)
    specs = engine_specs(config)
    assert specs and all(s.startswith("llama32_") for s in specs)
    assert specs <= GAUGES
    (extractor,) = [p for p in config["plugins"] if p["type"] == "core-metrics-extractor"]
    engines = {e["name"] for e in extractor["parameters"]["engineConfigs"]}
    assert extractor["parameters"]["defaultEngine"] in engines


# --- LiteLLM ---------------------------------------------------------------------------------


def test_litellm_spreads_one_model_over_replicas():
    config = litellm()
    models = config["model_list"]
    assert len(models) >= 2
    assert len({m["model_name"] for m in models}) == 1
    bases = [m["litellm_params"]["api_base"] for m in models]
    assert len(set(bases)) == len(bases)
    ids = [m.get("model_info", {}).get("id") for m in models]
    assert None in ids or len(set(ids)) == len(ids)
    served = args()["--served-model-name"]
    for m in models:
        p = m["litellm_params"]
        # LiteLLM sends the name after `openai/` upstream: the replicas must serve it.
        assert p["model"] == f"openai/{served}"
        assert str(p["api_key"]).startswith("os.environ/")
    router = config["router_settings"]
    assert router["routing_strategy"] in LITELLM_ROUTING
    assert router["allowed_fails"] == 0, "the first 503 must cool a draining replica down"
    policy = router.get("retry_policy", {})
    assert set(policy) <= LITELLM_RETRY_FIELDS, set(policy) - LITELLM_RETRY_FIELDS
    # Loading, draining and full replicas answer 503: retry those elsewhere.
    assert policy.get("ServiceUnavailableErrorRetries", router.get("num_retries", 0)) >= 1
    assert policy.get("BadRequestErrorRetries", 0) == 0
    assert router["allowed_fails"] >= 0 and router["cooldown_time"] > 0


@pytest.mark.parametrize("compat", ["vllm", "sglang"])
def test_every_documented_metric_is_served(compat):
    """The names the manifests and docs rely on, read from the real binary's /metrics after a
    request (with the other engine's names asked for)."""
    import urllib.request

    from test_openai_client import MODEL, Server

    server = Server("--metrics-compat", compat, "--metrics-public")
    try:
        server.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3
        )
        with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
    finally:
        server.stop()
    served = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    served |= {n.rsplit("_", 1)[0] for n in served if n.endswith(("_bucket", "_count", "_sum"))}
    other = "sglang:" if compat == "vllm" else "vllm:"
    wanted = {n for n in METRIC_NAMES if not n.startswith(other)}
    assert wanted <= served, sorted(wanted - served)
    assert not any(n.startswith(other) for n in served)
