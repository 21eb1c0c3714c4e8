"""The Helm chart and the llm-d files, validated offline.

- The chart is linted and rendered by Helm's own engine (helm-python-sdk) for several value
  overlays; every rendered Kubernetes object passes `kubernetes-validate` in strict mode
  (unknown fields are errors) for the oldest and newest Kubernetes the chart targets.
- KEDA objects are CRDs, outside those schemas: they are validated against the pydantic
  models `cloudcoil-models-keda` generates from KEDA 2.16's CRD schemas, with a round trip
  that catches fields the schema would prune, and their scaling wiring is checked by hand.
- Then what the deployment must do: one ScaledObject per worker Deployment on its queues'
  lists, keys only as env from a Secret, llm-d registered with its session header, API keys
  required and the admin key from a Secret (given, or generated and kept on upgrade).
"""

from __future__ import annotations

import base64
import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.conftest import (
    CHART,
    FULLNAME,
    KEY_VARS,
    LLMD,
    SCENARIOS,
    Manifest,
    by_kind,
    check_api_start_script,
    container_env,
    helm_module,
    load_yaml,
    render_chart,
    render_files,
)

KUBE_VERSIONS = ("1.29", "1.37")  # Chart.yaml's kubeVersion floor, and the newest schemas


def _kubernetes_validate() -> Any:
    return pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate is not installed: manifests not schema-checked",
    )


def _keda_models() -> Any:
    return pytest.importorskip(
        "cloudcoil.models.keda.v1alpha1",
        reason="cloudcoil-models-keda (KEDA CRD models) is not installed: KEDA objects "
        "checked by hand only",
    )


def check_keda(obj: Manifest) -> None:
    """Validate a keda.sh object against the CRD-generated model; a field the model does not
    know (which the API server would prune) fails the round trip."""
    keda = _keda_models()
    model = getattr(keda, obj["kind"]).model_validate(obj)
    assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == obj


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[Manifest]]:
    return request.param, render_chart(SCENARIOS[request.param]())


def test_chart_lints_clean() -> None:
    helm = helm_module()
    report = helm.lint(str(CHART), strict=True, kube_version="v1.29.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


def test_every_kubernetes_object_validates(rendered: tuple[str, list[Manifest]]) -> None:
    kv = _kubernetes_validate()
    _, docs = rendered
    for obj in docs:
        if not obj["apiVersion"].startswith("keda.sh/"):
            for version in KUBE_VERSIONS:
                kv.validate(obj, version, strict=True)


def test_every_keda_object_matches_the_crd(rendered: tuple[str, list[Manifest]]) -> None:
    name, docs = rendered
    keda = [obj for obj in docs if obj["apiVersion"].startswith("keda.sh/")]
    assert bool(keda) == (name != "keda off")
    for obj in keda:
        check_keda(obj)


def test_validators_reject_a_bad_manifest() -> None:
    """The checks above can fail: an unknown field, a ScaledObject without a target."""
    kv = _kubernetes_validate()
    docs = render_chart()
    deployment = copy.deepcopy(next(iter(by_kind(docs, "Deployment").values())))
    deployment["spec"]["template"]["spec"]["containers"][0]["commnd"] = ["x"]
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, KUBE_VERSIONS[0], strict=True)
    scaled = copy.deepcopy(next(iter(by_kind(docs, "ScaledObject").values())))
    typo = copy.deepcopy(scaled)
    typo["spec"]["minReplicas"] = 2  # for minReplicaCount: Kubernetes would prune it
    with pytest.raises(AssertionError):
        check_keda(typo)
    del scaled["spec"]["scaleTargetRef"]
    with pytest.raises(ValueError):  # pydantic.ValidationError is a ValueError
        check_keda(scaled)


def test_one_scaled_object_per_worker_on_its_queue_lists(
    rendered: tuple[str, list[Manifest]],
) -> None:
    name, docs = rendered
    workers = {n: d for n, d in by_kind(docs, "Deployment").items() if "-worker-" in n}
    scaled = by_kind(docs, "ScaledObject")
    if name == "keda off":
        assert not scaled and all(d["spec"]["replicas"] >= 1 for d in workers.values())
        return
    assert workers and {s["spec"]["scaleTargetRef"]["name"] for s in scaled.values()} == set(
        workers
    )
    auths = by_kind(docs, "TriggerAuthentication")
    for so in scaled.values():
        target = workers[so["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in target["spec"], "KEDA owns the replica count"
        args = target["spec"]["template"]["spec"]["containers"][0]["args"]
        queues = args[args.index("-Q") + 1].split(",")
        triggers = so["spec"]["triggers"]
        assert [t["type"] for t in triggers] == ["redis"] * len(queues)
        assert [t["metadata"]["listName"] for t in triggers] == queues
        assert so["spec"]["minReplicaCount"] >= 1
        for t in triggers:
            meta = t["metadata"]
            host, _, port = meta["address"].rpartition(":")
            assert host and port.isdigit() and int(meta["listLength"]) >= 1
            assert meta["databaseIndex"] == ("2" if name == "external redis" else "0")
            assert t["authenticationRef"]["name"] in auths


def test_bundled_redis_keda_reads_the_redis_the_workers_use() -> None:
    docs = render_chart()
    so = by_kind(docs, "ScaledObject")[f"{FULLNAME}-worker-providers"]
    address = so["spec"]["triggers"][0]["metadata"]["address"]
    assert address == f"{FULLNAME}-redis.llm.svc:6379"
    env = container_env(by_kind(docs, "Deployment")[f"{FULLNAME}-worker-providers"])
    assert env["REDIS_URL"]["value"] == f"redis://:$(REDIS_PASSWORD)@{FULLNAME}-redis:6379/0"
    auth = by_kind(docs, "TriggerAuthentication")[f"{FULLNAME}-redis"]
    ref = auth["spec"]["secretTargetRef"][0]
    assert ref == {"parameter": "password", "name": FULLNAME, "key": "REDIS_PASSWORD"}
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "REDIS_PASSWORD"


def test_bundled_redis_is_a_statefulset_with_aof() -> None:
    docs = render_chart()
    sts = by_kind(docs, "StatefulSet")[f"{FULLNAME}-redis"]
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    conf = by_kind(docs, "ConfigMap")[f"{FULLNAME}-redis"]["data"]["redis.conf"]
    assert "appendonly yes" in conf.splitlines()
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["redis-server", "/usr/local/etc/redis/redis.conf"]
    external = render_chart(SCENARIOS["external redis"]())
    assert not by_kind(external, "StatefulSet")


def test_keys_are_env_from_a_secret_only(rendered: tuple[str, list[Manifest]]) -> None:
    name, docs = rendered
    secret = by_kind(docs, "Secret")[FULLNAME]
    for workload in [*by_kind(docs, "Deployment").values(), *by_kind(docs, "StatefulSet").values()]:
        for var, entry in container_env(workload).items():
            if var not in KEY_VARS.values():
                continue
            if workload["metadata"]["name"].endswith("-api"):
                assert entry == {"name": var, "value": "on"}, "the API never sees a key"
            else:
                ref = entry["valueFrom"]["secretKeyRef"]
                assert ref["key"] == var and "value" not in entry
                want = "provider-keys" if name == "external redis" else FULLNAME
                assert ref["name"] == want
    if name == "everything on":
        data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        assert data["OPENAI_API_KEY"] == "sk-test-openai"
        assert data["ROUTER_ADMIN_KEY"] == "admin-test-key-0123"
        flat = str([d for d in docs if d["kind"] != "Secret"])
        assert "sk-test-openai" not in flat and "sk-ant-test" not in flat


def test_workers_get_only_their_own_queues_keys() -> None:
    docs = render_chart(SCENARIOS["everything on"]())
    deployments = by_kind(docs, "Deployment")
    providers = container_env(deployments[f"{FULLNAME}-worker-providers"])
    assert {"OPENAI_API_KEY", "GEMINI_API_KEY", "VENICE_API_KEY"} <= set(providers)
    assert "LLMD_API_KEY" not in providers
    llmd = container_env(deployments[f"{FULLNAME}-worker-llmd"])
    assert "OPENAI_API_KEY" not in llmd and "LLMD_API_KEY" in llmd
    local = container_env(deployments[f"{FULLNAME}-worker-local"])
    assert not set(local) & set(KEY_VARS.values())
    assert local["LOCAL_DEVICE"]["value"] == "cpu"
    api = container_env(deployments[f"{FULLNAME}-api"])
    assert api["OPENAI_API_KEY"]["value"] == api["ANTHROPIC_API_KEY"]["value"] == "on"
    assert "GEMINI_API_KEY" not in api


def test_llmd_backend_is_registered_with_the_session_header() -> None:
    overlay = load_yaml(LLMD / "router-values.yaml")
    docs = render_chart(overlay)
    deployments = by_kind(docs, "Deployment")
    api = container_env(deployments[f"{FULLNAME}-api"])
    worker = deployments[f"{FULLNAME}-worker-llmd"]
    assert api["LLMD_BASE_URL"]["value"] == overlay["llmd"]["baseUrl"]
    assert container_env(worker)["LLMD_BASE_URL"]["value"] == overlay["llmd"]["baseUrl"]
    assert overlay["llmd"]["baseUrl"].endswith("/v1")
    assert "x-session-token" in api["ROUTER_FORWARD_HEADERS"]["value"].split(",")
    args = worker["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("-Q") + 1] == "llm-d" and args[args.index("-P") + 1] == "gevent"


def test_api_runs_like_the_procfile(tmp_path: Path) -> None:
    api = by_kind(render_chart(), "Deployment")[f"{FULLNAME}-api"]
    container = api["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["sh", "-c"]
    check_api_start_script(container["args"][0], tmp_path)
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts, "the metrics directory needs a writable /tmp"


def test_flower_basic_auth_comes_from_a_secret() -> None:
    docs = render_chart()
    flower = by_kind(docs, "Deployment")[f"{FULLNAME}-flower"]
    ref = container_env(flower)["FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": FULLNAME, "key": "FLOWER_BASIC_AUTH"}
    generated = base64.b64decode(by_kind(docs, "Secret")[FULLNAME]["data"]["FLOWER_BASIC_AUTH"])
    user, _, password = generated.decode().partition(":")
    assert user == "admin" and len(password) >= 16
    assert by_kind(docs, "Service")[f"{FULLNAME}-flower"]["spec"]["type"] == "ClusterIP"


def _admin_key_env(docs: list[Manifest]) -> list[dict[str, Any]]:
    """ROUTER_AUTH and ROUTER_ADMIN_KEY of the API container, after checking that its
    registry init container gets the same."""
    deployment = by_kind(docs, "Deployment")[f"{FULLNAME}-api"]
    api = container_env(deployment, "api")
    init_env = deployment["spec"]["template"]["spec"]["initContainers"][0]["env"]
    init = {e["name"]: e for e in init_env}
    names = ("ROUTER_AUTH", "ROUTER_ADMIN_KEY")
    assert [init[n] for n in names] == [api[n] for n in names]
    return [api[n] for n in names]


def _secret_data(docs: list[Manifest]) -> dict[str, str]:
    data = by_kind(docs, "Secret")[FULLNAME]["data"]
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def test_api_requires_keys_with_a_generated_admin_key_by_default() -> None:
    docs = render_chart()
    auth, admin = _admin_key_env(docs)
    assert auth == {"name": "ROUTER_AUTH", "value": "required"}
    ref = admin["valueFrom"]["secretKeyRef"]
    assert ref == {"name": FULLNAME, "key": "ROUTER_ADMIN_KEY"} and "value" not in admin
    generated = _secret_data(docs)["ROUTER_ADMIN_KEY"]
    assert len(generated) == 48 and generated.isalnum() and generated.isascii()
    assert generated != _secret_data(render_chart())["ROUTER_ADMIN_KEY"], "not random"
    for workload in [*by_kind(docs, "Deployment").values(), *by_kind(docs, "StatefulSet").values()]:
        if not workload["metadata"]["name"].endswith("-api"):
            assert "ROUTER_ADMIN_KEY" not in container_env(workload), "the API's key only"
    auto = render_chart({"api": {"auth": "auto"}})
    assert _admin_key_env(auto)[0] == {"name": "ROUTER_AUTH", "value": "auto"}


def test_admin_key_from_an_existing_secret() -> None:
    values = {"api": {"adminKey": {"existingSecret": "router-admin", "secretKey": "admin.key"}}}
    files = render_files(values)
    docs = render_chart(values)
    _, admin = _admin_key_env(docs)
    assert admin["valueFrom"]["secretKeyRef"] == {"name": "router-admin", "key": "admin.key"}
    assert "ROUTER_ADMIN_KEY" not in _secret_data(docs), "no key of the chart's own"
    notes = files[f"{CHART.name}/templates/NOTES.txt"]
    assert "get secret router-admin -o jsonpath='{.data.admin\\.key}'" in notes


def test_a_generated_admin_key_is_kept_on_upgrade(tmp_path: Path) -> None:
    """On upgrade the chart reads the key back from its Secret in the cluster. Rendering is
    offline here (`lookup` finds nothing), so a copy of the chart gets, in place of the
    lookup, the Secret as the cluster would return it."""
    chart = tmp_path / CHART.name
    shutil.copytree(CHART, chart)
    helpers = chart / "templates" / "_helpers.tpl"
    call = (
        'lookup "v1" "Secret" $ctx.Release.Namespace (include "inference-router.secretName" $ctx)'
    )
    text = helpers.read_text()
    assert text.count(call) == 1
    helpers.write_text(text.replace(call, "$ctx.Values.clusterSecret"))
    old = "kept-from-the-first-install-0123456789"
    cluster = {"data": {"ROUTER_ADMIN_KEY": base64.b64encode(old.encode()).decode()}}
    assert _secret_data(render_chart({"clusterSecret": cluster}, chart))["ROUTER_ADMIN_KEY"] == old
    given = {"clusterSecret": cluster, "api": {"adminKey": {"value": "a-new-key-given-here"}}}
    assert _secret_data(render_chart(given, chart))["ROUTER_ADMIN_KEY"] == "a-new-key-given-here"
    fresh = _secret_data(render_chart({"clusterSecret": {}}, chart))["ROUTER_ADMIN_KEY"]
    assert len(fresh) == 48 and fresh != old


@pytest.mark.parametrize(
    ("values", "warning"),
    [
        ({}, "emptyDir"),
        ({"api": {"persistence": {"enabled": True}}}, None),
        ({"api": {"replicas": 2, "databaseUrl": "postgresql://db/router"}}, None),
        (
            {
                "api": {
                    "replicas": 2,
                    "persistence": {"enabled": True, "accessModes": ["ReadWriteMany"]},
                }
            },
            "own registry",
        ),
        ({"api": {"auth": "off"}}, None),
    ],
)
def test_notes_say_how_to_make_keys_and_where_they_would_be_lost(
    values: dict[str, Any], warning: str | None
) -> None:
    notes = render_files(values)[f"{CHART.name}/templates/NOTES.txt"]
    auth_on = values.get("api", {}).get("auth", "required") != "off"
    assert ("/admin/keys" in notes) == auth_on
    assert ("irouter keys create" in notes) == auth_on
    assert ('-H "Authorization: Bearer $ROUTER_ADMIN_KEY"' in notes) == auth_on
    assert f"get secret {FULLNAME} -o jsonpath='{{.data.ROUTER_ADMIN_KEY}}'" in notes
    if warning is None:
        assert "WARNING" not in notes
    else:
        assert "WARNING" in notes and warning in notes


def test_registry_commands_run_before_the_api() -> None:
    docs = render_chart(SCENARIOS["everything on"]())
    script = by_kind(docs, "ConfigMap")[f"{FULLNAME}-registry"]["data"]["registry-init.sh"]
    lines = [ln for ln in script.splitlines() if ln.startswith("irouter")]
    assert lines[0] == "irouter init"
    assert lines[1].startswith("irouter models add my-llama --backend llm-d --upstream x ||")
    api = by_kind(docs, "Deployment")[f"{FULLNAME}-api"]["spec"]["template"]["spec"]
    assert api["initContainers"][0]["command"] == ["sh", "/etc/inference-router/registry-init.sh"]
    assert api["volumes"][0]["persistentVolumeClaim"]["claimName"] == f"{FULLNAME}-api-data"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"workers": {"providers": {"keda": {"minReplicas": 0}}}}, "minReplicas"),
        ({"workers": {"llmd": {"enabled": True}}}, "llmd.baseUrl"),
        ({"redis": {"bundled": False}}, "redis.external"),
        ({"providers": {"enabled": ["nope"]}}, "enabled"),
        ({"api": {"replicas": 2, "persistence": {"enabled": True}}}, "ReadWriteOnce"),
        ({"api": {"auth": "on"}}, "auth"),
        ({"api": {"adminKey": "a-key-of-sixteen-or-more"}}, "adminKey"),
        ({"api": {"adminKey": {"value": "too-short"}}}, "adminKey/value"),
        ({"api": {"adminKey": {"existingSecret": "s", "secretKey": ""}}}, "secretKey"),
        (
            {"api": {"adminKey": {"existingSecret": "s", "value": "sixteen-chars-or-more"}}},
            "not both",
        ),
    ],
)
def test_bad_values_are_refused(values: dict[str, Any], message: str) -> None:
    helm = helm_module()
    with pytest.raises(helm.HelmError, match=message):
        render_chart(values)


def test_llmd_files_parse_and_agree() -> None:
    """The llm-d charts' values cannot be rendered here (their charts are not on PyPI): check
    that they parse and that pool, model servers, route and router agree with each other."""
    pool = load_yaml(LLMD / "inferencepool-values.yaml")
    service = load_yaml(LLMD / "modelservice-values.yaml")
    route = load_yaml(LLMD / "httproute.yaml")
    selector = pool["inferencePool"]["modelServers"]["matchLabels"]
    assert selector.items() <= service["modelArtifacts"]["labels"].items()
    ports = {p["containerPort"] for c in service["decode"]["containers"] for p in c["ports"]}
    assert {p["number"] for p in pool["inferencePool"]["targetPorts"]} <= ports
    config = yaml.safe_load(
        pool["inferenceExtension"]["pluginsCustomConfig"]["router-plugins.yaml"]
    )
    plugins = {p["type"] for p in config["plugins"]}
    refs = {p["pluginRef"] for prof in config["schedulingProfiles"] for p in prof["plugins"]}
    assert "session-affinity-scorer" in plugins and refs <= plugins
    assert pool["inferenceExtension"]["pluginsConfigFile"] == "router-plugins.yaml"
    backend = route["spec"]["rules"][0]["backendRefs"][0]
    assert (backend["kind"], backend["group"]) == ("InferencePool", "inference.networking.k8s.io")
    gateway = route["spec"]["parentRefs"][0]["name"]
    router = load_yaml(LLMD / "router-values.yaml")
    assert router["llmd"]["baseUrl"].startswith(f"http://{gateway}-")
