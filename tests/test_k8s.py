"""The Kubernetes manifests in k8s/: both overlays render, every object validates against its real schema, and the
properties the cluster relies on hold (resources, no literal credentials, a CPU-only head, GPU workers, shared
storage, the RayJob's study spec, and network policies that keep Ray and the database inside the namespace).

Core kinds validate with kubernetes-validate (strict: unknown fields are errors, as `kubectl apply` makes them);
RayCluster and RayJob validate against the openAPIV3Schema of the KubeRay v1.7.0 CRDs, kept in tests/data/kuberay/,
made strict the same way.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from crossover.specs import load_study, plan_study
from crossover.specs.plan import cluster_wall_time

from .conftest import ROOT

K8S = ROOT / "k8s"
OVERLAYS = ["dev", "prod"]
KUBERNETES_VERSION = "1.32.0"  # the schemas kubernetes-validate ships for this release
CRD_DIR = ROOT / "tests" / "data" / "kuberay"
CRD_FILES = {"RayCluster": "raycluster.v1.schema.json", "RayJob": "rayjob.v1.schema.json"}
RAY_HOME = "/home/ray"  # HOME of the image's user (k8s/docker/Dockerfile)


@functools.cache
def render(target: str) -> tuple[dict[str, Any], ...]:
    """`kubectl kustomize k8s/<target>` as a tuple of objects (cached: each overlay renders once per session)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: install kubectl (it bundles kustomize) to render k8s/ overlays")
    done = subprocess.run([kubectl, "kustomize", str(K8S / target)], capture_output=True, text=True)
    assert done.returncode == 0, f"kubectl kustomize k8s/{target} failed:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def overlay(name: str) -> tuple[dict[str, Any], ...]:
    return render(f"overlays/{name}")


def one(objects: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec an object creates: (where, spec)."""
    kind, spec = obj["kind"], obj.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        yield "template", spec["template"]["spec"]
    elif kind == "RayCluster":
        yield "head", spec["headGroupSpec"]["template"]["spec"]
        for group in spec.get("workerGroupSpecs", []):
            yield f"worker group {group['groupName']}", group["template"]["spec"]
    elif kind == "RayJob":
        if "submitterPodTemplate" in spec:
            yield "submitter", spec["submitterPodTemplate"]["spec"]
        if "rayClusterSpec" in spec:
            yield from pod_specs({"kind": "RayCluster", "spec": spec["rayClusterSpec"]})


def containers(objects: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every container (init containers included) of every pod the objects create, plus KubeRay's autoscaler."""
    for obj in objects:
        for where, spec in pod_specs(obj):
            for field in ("initContainers", "containers"):
                for c in spec.get(field, []):
                    yield f"{obj['kind']}/{obj['metadata']['name']} {where} {field[:-1]} {c['name']}", c
        if obj["kind"] == "RayCluster" and obj["spec"].get("enableInTreeAutoscaling"):
            yield f"RayCluster/{obj['metadata']['name']} autoscaler", obj["spec"].get("autoscalerOptions", {})


# ---- rendering and schemas -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_renders_one_namespace(name):
    objects = overlay(name)
    kinds = {o["kind"] for o in objects}
    expected = {"Namespace", "ConfigMap", "PersistentVolumeClaim", "StatefulSet", "Deployment", "Service"}
    assert expected | {"NetworkPolicy", "RayCluster", "RayJob"} <= kinds
    namespace = one(objects, "Namespace")["metadata"]["name"]
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {namespace}


@pytest.mark.parametrize("name", OVERLAYS)
def test_core_objects_validate_with_kubernetes_validate(name):
    checked = 0
    for obj in overlay(name):
        if obj["kind"] in CRD_FILES:
            # Their pod templates are core PodTemplateSpecs: validate those with the core schema too.
            for where, spec in pod_specs(obj):
                template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": {}}
                template["template"] = {"spec": spec}
                _validate_core(template, f"{obj['kind']}/{obj['metadata']['name']} {where}")
            continue
        _validate_core(obj, f"{obj['kind']}/{obj['metadata']['name']}")
        checked += 1
    assert checked >= 10


def _validate_core(obj: dict[str, Any], label: str) -> None:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(str(p) for p in exc.path)
        pytest.fail(f"{label} is invalid for Kubernetes {KUBERNETES_VERSION} at {path}: {exc.message}")


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields made errors, as the API server's strict field validation does."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


@functools.cache
def crd_validator(kind: str) -> jsonschema.protocols.Validator:
    schema = json.loads((CRD_DIR / CRD_FILES[kind]).read_text())  # the v1 openAPIV3Schema of the CRD
    schema["properties"]["metadata"] = {"type": "object"}  # the API server validates metadata separately
    return jsonschema.Draft7Validator(_strict(schema))


@pytest.mark.parametrize("name", OVERLAYS)
@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_kuberay_objects_validate_against_crds(name, kind):
    validator = crd_validator(kind)
    objects = [o for o in overlay(name) if o["kind"] == kind]
    assert objects, f"overlay {name} renders no {kind}"
    for obj in objects:
        assert obj["apiVersion"] == "ray.io/v1"
        errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
        assert not errors, "\n".join(
            f"{kind}/{obj['metadata']['name']} at {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
        )


def test_strict_crd_validation_catches_a_misspelt_field():
    """Guards the check above: a typo deep in a pod template is an error, not a silently pruned field."""
    cluster = copy.deepcopy(one(overlay("dev"), "RayCluster"))
    cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resource"] = {}
    assert any("resource" in e.message for e in crd_validator("RayCluster").iter_errors(cluster))


# ---- resources, credentials, GPUs -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_container_has_requests_and_limits(name):
    seen = list(containers(overlay(name)))
    assert len(seen) >= 6
    for label, container in seen:
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{label}: no cpu and memory {kind}"


@pytest.mark.parametrize("name", OVERLAYS)
def test_no_literal_credentials(name):
    """Credentials reach pods only through secretKeyRef/secretRef; no Secret object (and so no password) is rendered."""
    objects = overlay(name)
    assert not [o for o in objects if o["kind"] == "Secret"], "Secrets are created by the user (k8s/README.md)"
    sensitive = re.compile(r"PASSWORD|SECRET|TOKEN|USERNAME|_USER$|ACCESS_KEY")
    for label, container in containers(objects):
        for var in container.get("env", []):
            if sensitive.search(var["name"]):
                assert "secretKeyRef" in var.get("valueFrom", {}), f"{label}: {var['name']} is not read from a Secret"
            # A URI with credentials may only embed them as $(VAR) references to Secret-backed variables.
            userinfo = re.match(r"^\w+://([^@/]*)@", var.get("value", ""))
            if userinfo:
                assert re.fullmatch(r"(\$\(\w+\)|:)+", userinfo.group(1)), f"{label}: {var['name']} embeds a credential"


def _secret_refs(objects: tuple[dict[str, Any], ...]) -> set[tuple[str, str | None]]:
    """(secret, key) every container reads, optional ones included; key None for a whole envFrom secret."""
    refs = set()
    for _, container in containers(objects):
        for var in container.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs.add((ref["name"], ref["key"]))
        for source in container.get("envFrom", []):
            ref = source.get("secretRef")
            if ref:
                refs.add((ref["name"], None))
    return refs


@pytest.mark.parametrize("name", OVERLAYS)
def test_readme_creates_every_secret_the_pods_read(name):
    readme = (K8S / "README.md").read_text()
    commands = re.findall(r"kubectl[^\n]*create secret generic (\S+)((?:[^\n]*\\\n)*[^\n]*)", readme)
    created = {secret: set(re.findall(r"--from-literal=([\w.-]+)=", rest)) for secret, rest in commands}
    refs = _secret_refs(overlay(name))
    assert refs
    for secret, key in refs:
        assert secret in created, f"k8s/README.md never creates Secret {secret}"
        assert key is None or key in created[secret], f"k8s/README.md creates {secret} without key {key}"


# Ray token auth: the Secret the user creates (k8s/README.md); `auth_token` is the key KubeRay's authOptions reads.
RAY_AUTH_SECRET = {"name": "crossover-ray-auth", "key": "auth_token"}
RAY_AUTH_VARS = {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}
# A token written out: hex (what `ray get-auth-token --generate` and `openssl rand -hex` make), a bearer header, or
# an assignment of a literal in a command line.
TOKEN_SHAPED = re.compile(r"[0-9a-f]{32,}|[0-9A-F]{32,}|\bbearer\s|(RAY_AUTH_TOKEN|auth_token)=(?![$\s\"']*\$)", re.I)


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def literal_tokens(objects: tuple[dict[str, Any], ...]) -> list[str]:
    """Where the objects carry a Ray token literally: a RAY_AUTH_TOKEN variable with a value, or a token-shaped
    string anywhere (env, commands, entrypoints, annotations, ConfigMaps)."""
    found = [
        f"{label}: {var['name']} has a literal value"
        for label, container in containers(objects)
        for var in container.get("env", [])
        if var["name"] == "RAY_AUTH_TOKEN" and "value" in var
    ]
    return found + [text for obj in objects for text in _strings(obj) if TOKEN_SHAPED.search(text)]


@pytest.mark.parametrize("name", OVERLAYS)
def test_ray_token_auth_is_on_and_every_ray_container_reads_the_token_from_the_secret(name):
    objects = overlay(name)
    cluster = one(objects, "RayCluster")
    # The operator sends this Secret's token to the dashboard (RayJob status) and sets it on the containers it adds.
    assert cluster["spec"]["authOptions"] == {"mode": "token", "secretName": RAY_AUTH_SECRET["name"]}
    checked = []
    for label, container in containers(tuple(o for o in objects if o["kind"] in CRD_FILES)):
        env = {var["name"]: var for var in container.get("env", [])}
        if label.endswith("autoscaler"):  # KubeRay adds its auth variables from authOptions; more would be duplicates
            assert not RAY_AUTH_VARS & set(env), label
            continue
        assert env.get("RAY_AUTH_MODE") == {"name": "RAY_AUTH_MODE", "value": "token"}, f"{label}: token auth is off"
        assert env.get("RAY_AUTH_TOKEN", {}).get("valueFrom") == {"secretKeyRef": RAY_AUTH_SECRET}, label
        assert "RAY_AUTH_TOKEN_PATH" not in env, f"{label}: a second token source"
        checked.append(label)
    # The head (and the job drivers it runs), the workers, and the RayJob's `ray job submit`.
    for where in (" head ", " worker group ", " submitter "):
        assert any(where in label for label in checked), f"no Ray container in the{where}pod template"


def test_no_manifest_holds_a_literal_token():
    for name in OVERLAYS:
        assert literal_tokens(overlay(name)) == [], name
    for path in sorted(K8S.rglob("*.yaml")):  # comments and unrendered files included
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not TOKEN_SHAPED.search(line), f"{path.relative_to(ROOT)}:{number} holds a token: {line.strip()}"


def test_literal_token_check_catches_a_written_out_token():
    """Guards the check above: a token in the head's environment or in the RayJob's entrypoint is found."""
    cluster, job = (copy.deepcopy(one(overlay("dev"), kind)) for kind in ("RayCluster", "RayJob"))
    head_env = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    head_env[[v["name"] for v in head_env].index("RAY_AUTH_TOKEN")] = {"name": "RAY_AUTH_TOKEN", "value": "not-hex"}
    (found,) = literal_tokens((cluster,))
    assert found == "RayCluster/crossover head container ray-head: RAY_AUTH_TOKEN has a literal value"
    job["spec"]["entrypoint"] = f"RAY_AUTH_TOKEN={secrets.token_hex(32)} {job['spec']['entrypoint']}"
    assert literal_tokens((job,)) == [job["spec"]["entrypoint"]]


def test_readme_submits_with_the_token():
    """Section 5 turns token auth on before each `ray job submit`: on a local head with the token in
    ~/.ray/auth_token (as tests/test_ray_auth.py starts its head), on the cluster with the Secret's token."""
    readme = (K8S / "README.md").read_text()
    section = readme[readme.index("## 5.") : readme.index("## 6.")]
    local, cluster = [b for b in re.findall(r"```bash\n(.*?)```", section, flags=re.S) if "\nray job submit " in b]
    for block in (local, cluster):
        assert block.index("export RAY_AUTH_MODE=token") < block.index("\nray job submit "), block
    assert (
        local.index("ray get-auth-token --generate")
        < local.index("\nray start --head")
        < local.index("\nray job submit ")
    )
    assert "--working-dir . " in local and '--tracking-uri "sqlite:///$PWD/' in local  # not in the job's copy
    assert f"secret {RAY_AUTH_SECRET['name']}" in cluster and f"{{.data.{RAY_AUTH_SECRET['key']}}}" in cluster
    assert cluster.index("RAY_AUTH_TOKEN_PATH") < cluster.index("\nray job submit ")


@pytest.mark.parametrize("name", OVERLAYS)
def test_head_is_cpu_only_and_workers_have_gpus(name):
    cluster = one(overlay(name), "RayCluster")
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert head["rayStartParams"]["num-cpus"] == "0", "trials must not be scheduled on the head"
    head_pod = head["template"]["spec"]
    for c in head_pod["containers"]:
        for kind in ("requests", "limits"):
            assert not [r for r in c["resources"][kind] if r.endswith("/gpu")], f"head container {c['name']} has a GPU"
    assert "tolerations" not in head_pod and "nodeSelector" not in head_pod

    groups = [g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] != CPU_GROUP]
    assert groups
    for group in groups:
        pod = group["template"]["spec"]
        ray = pod["containers"][0]
        gpus = ray["resources"]["limits"].get("nvidia.com/gpu")
        assert gpus and int(gpus) >= 1, f"worker group {group['groupName']} has no GPU"
        assert ray["resources"]["requests"]["nvidia.com/gpu"] == gpus  # extended resources: request == limit
        assert pod["nodeSelector"], f"worker group {group['groupName']} has no node selector"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]


# The worker group for the Ray Data job that tokenizes a corpus into a shared token store (data.store).
CPU_GROUP = "cpu"


def _group(cluster: dict[str, Any], name: str) -> dict[str, Any]:
    (group,) = [g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == name]
    return group


def test_prod_has_autoscaled_cpu_workers_for_data_preparation():
    """Tokenizing actors (1 CPU each) go to CPU pods, not to 8-GPU ones: the group `cpu` asks for no GPU and does
    not tolerate the GPU nodes' taint; it starts at 0 pods and grows to hold the tokenizing workers `crossover data
    prepare` starts on a cluster by default; its pods are the GPU workers' in all else (image, Secrets, mounts)."""
    from crossover.platform.data_job import CLUSTER_WORKERS

    cluster = one(overlay("prod"), "RayCluster")
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    cpu, gpu = _group(cluster, CPU_GROUP), _group(cluster, "gpu")
    pod = cpu["template"]["spec"]
    (ray,) = pod["containers"]
    resources = ray["resources"]
    assert resources["requests"] == resources["limits"], "requests = limits, as every Ray container's"
    assert set(resources["limits"]) == {"cpu", "memory"}, "a CPU worker asks for no GPU"
    assert "tolerations" not in pod and "nodeSelector" not in pod, "CPU workers stay off the tainted GPU nodes"
    assert cpu["rayStartParams"] == {}, "num-cpus from the limits: one tokenizing worker per CPU"
    assert cpu.get("replicas", 0) == cpu["minReplicas"] == 0 < cpu["maxReplicas"]
    assert cpu["maxReplicas"] * int(resources["limits"]["cpu"]) == CLUSTER_WORKERS
    (gpu_ray,) = gpu["template"]["spec"]["containers"]
    for field in ("image", "env", "envFrom", "volumeMounts"):
        assert ray[field] == gpu_ray[field], f"the CPU workers' {field} differs from the GPU workers'"
    assert pod["securityContext"] == gpu["template"]["spec"]["securityContext"]


def _volume(pod: dict[str, Any], name: str) -> dict[str, Any]:
    (volume,) = [v for v in pod["volumes"] if v["name"] == name]
    return volume


@pytest.mark.parametrize("name", OVERLAYS)
def test_ray_pods_share_storage_and_have_memory_backed_shm(name):
    objects = overlay(name)
    pvc = one(objects, "PersistentVolumeClaim", "crossover-shared")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for where, pod in pod_specs(one(objects, "RayCluster")):
        mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
        # Ray's default storage path and the default token-store cache, on the shared volume for every node.
        for path in (f"{RAY_HOME}/ray_results", f"{RAY_HOME}/.cache/crossover"):
            assert path in mounts, f"{where}: {path} is not mounted"
            volume = _volume(pod, mounts[path]["name"])
            assert volume["persistentVolumeClaim"]["claimName"] == "crossover-shared", where
        shm = _volume(pod, mounts["/dev/shm"]["name"])["emptyDir"]
        assert shm["medium"] == "Memory" and shm["sizeLimit"], where
        assert pod["securityContext"]["fsGroup"] == 1000, f"{where}: the shared volume must be writable by uid 1000"


# ---- autoscaling and the overlays' sizes ------------------------------------------------------------------------


def test_dev_has_one_small_gpu_worker():
    """And no CPU worker group: without the autoscaler its pods would run all the time."""
    cluster = one(overlay("dev"), "RayCluster")
    (group,) = cluster["spec"]["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 1
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def _max_gpus(cluster: dict[str, Any]) -> int:
    """The GPUs of the cluster at its autoscaler's maximum."""
    return sum(
        g["maxReplicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
        for g in cluster["spec"]["workerGroupSpecs"]
    )


def test_prod_autoscales_many_gpu_workers():
    cluster = one(overlay("prod"), "RayCluster")
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    assert _max_gpus(cluster) >= 32
    for group in cluster["spec"]["workerGroupSpecs"]:
        assert group["minReplicas"] < group["maxReplicas"]


# ---- the RayJob -----------------------------------------------------------------------------------------------


def _entrypoint(objects: tuple[dict[str, Any], ...]) -> list[str]:
    argv = shlex.split(one(objects, "RayJob")["spec"]["entrypoint"])
    assert argv[:2] == ["crossover", "run"], argv
    return argv


STUDY_CONFIGMAP = "crossover-study"  # generated by each overlay from its study.yaml


def _job_study(objects: tuple[dict[str, Any], ...], folder: Path) -> Path:
    """The spec the RayJob runs, written into `folder` where the job's working directory holds it: the entrypoint's
    path, relative, in the ConfigMap the submitter uploads as that directory."""
    path = _entrypoint(objects)[2]
    assert not Path(path).is_absolute(), f"{path}: the job's working directory holds the spec, not the image"
    data = one(objects, "ConfigMap", STUDY_CONFIGMAP)["data"]
    assert path in data, f"the RayJob runs {path}, which ConfigMap {STUDY_CONFIGMAP} does not hold"
    (folder / path).write_text(data[path])
    return folder / path


@pytest.mark.parametrize("name", OVERLAYS)
def test_rayjob_runs_the_spec_of_its_configmap(name, tmp_path):
    """The spec travels with the job: the submitter mounts the overlay's ConfigMap at runtimeEnvYAML's working_dir,
    which its `ray job submit` uploads (K8sJobMode: the client in the submitter pod does the upload), and the
    driver starts in it. The spec there passes `crossover validate`, run there as the driver would run it."""
    objects = overlay(name)
    job = one(objects, "RayJob")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": one(objects, "RayCluster")["metadata"]["name"]}
    assert job["spec"]["submissionMode"] == "K8sJobMode"
    working_dir = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["working_dir"]
    (submitter,) = [spec for where, spec in pod_specs(job) if where == "submitter"]
    mounts = {m["mountPath"]: m for m in submitter["containers"][0]["volumeMounts"]}
    assert working_dir in mounts, f"runtimeEnvYAML's working_dir {working_dir} is not mounted in the submitter"
    assert _volume(submitter, mounts[working_dir]["name"])["configMap"]["name"] == STUDY_CONFIGMAP
    study = _job_study(objects, tmp_path)
    assert study.read_text() == (K8S / "overlays" / name / study.name).read_text(), "not the overlay's study.yaml"
    # The real CLI, as a user would run it: exit 0 and an ok line for the spec.
    cli = Path(sys.executable).with_name("crossover")
    done = subprocess.run([str(cli), "validate", study.name], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"ok {study.name}" in done.stdout


def test_prod_study_is_the_paper_study_with_its_store_and_checkpoints_in_a_bucket(tmp_path):
    """k8s/overlays/prod/study.yaml is study_specs/paper_data_budget.yaml below a header of comments, and keeps the
    shared token store and the checkpoints in one bucket. `crossover validate` and `crossover plan --cluster-gpus 64`
    on it, as k8s/README.md runs them before applying prod, succeed without reaching the bucket (the S3 endpoint here
    is a closed port, so any request would fail), and the plan's hours are those the README quotes."""
    study_file = K8S / "overlays" / "prod" / "study.yaml"
    header, _, body = study_file.read_text().partition("\n#\n")
    assert all(line.startswith("#") for line in header.splitlines())
    assert body == (ROOT / "study_specs" / "paper_data_budget.yaml").read_text(), "not a copy of the paper study"
    study = load_study(study_file)
    store, storage = study.data.store or "", study.resources.storage or ""
    assert store.startswith("s3://") and storage.startswith("s3://")
    assert store.split("/")[2] == storage.split("/")[2], "the store and the checkpoints in different buckets"

    with socket.socket() as closed:  # bound and never listening: a connection to it is refused
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
        env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}
        cli = str(Path(sys.executable).with_name("crossover"))
        path = str(study_file.relative_to(ROOT))
        done = [
            subprocess.run([cli, *command, path, *options], cwd=ROOT, env=env, capture_output=True, text=True)
            for command, options in ((["validate"], []), (["plan"], ["--cluster-gpus", "64"]))
        ]
    for run in done:
        assert run.returncode == 0, run.stdout + run.stderr
    readme = (K8S / "README.md").read_text()
    assert f"crossover validate {path}" in readme and f"crossover plan {path} --cluster-gpus 64" in readme
    hours = re.search(r"about ([\d.]+) hours of training", done[1].stdout)
    assert hours and f"about {hours.group(1)} hours" in readme, done[1].stdout


@pytest.mark.parametrize("name", OVERLAYS)
def test_rayjob_lifecycle_suits_a_shared_cluster(name):
    """KubeRay v1.7.0 refuses backoffLimit > 0 with clusterSelector (a RayJob retry recreates its cluster) and never
    deletes a selected cluster; the cluster is shared with `ray job submit`, so the RayJob must not ask to."""
    job = one(overlay(name), "RayJob")["spec"]
    assert job["clusterSelector"]
    assert job["backoffLimit"] == 0
    assert job["shutdownAfterJobFinishes"] is False
    assert not {"ttlSecondsAfterFinished", "deletionStrategy", "rayClusterSpec"} & set(job)
    # `ray job stop` (and deleting the RayJob) leaves the driver time to mark its runs KILLED.
    assert int(yaml.safe_load(job["runtimeEnvYAML"])["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"]) >= 30


@pytest.mark.parametrize("name", OVERLAYS)
def test_rayjob_deadline_outlasts_the_planned_study(name, tmp_path):
    """activeDeadlineSeconds flags a study running far over its plan: at least an hour (image pulls, cluster start)
    and 1.5 times the training time `crossover plan --cluster-gpus` gives at the cluster's maximum."""
    objects = overlay(name)
    deadline = one(objects, "RayJob")["spec"]["activeDeadlineSeconds"]
    study = load_study(_job_study(objects, tmp_path))
    hours = 0.0
    if study.resources.gpus_per_worker:  # CPU trials (the smoke study) take minutes
        hours = cluster_wall_time(study, plan_study(study), _max_gpus(one(objects, "RayCluster"))).hours
    assert deadline >= max(3600, 1.5 * hours * 3600), f"{deadline} s for a study planned at {hours:.1f} h"


@pytest.mark.parametrize("name", OVERLAYS)
def test_rayjob_and_trials_get_the_tracking_uri_of_the_mlflow_service(name):
    objects = overlay(name)
    argv = _entrypoint(objects)
    uri = argv[argv.index("--tracking-uri") + 1]
    assert one(objects, "ConfigMap", "crossover-env")["data"]["MLFLOW_TRACKING_URI"] == uri
    service = one(objects, "Service", "crossover-mlflow")
    assert uri == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    for where, pod in pod_specs(one(objects, "RayCluster")):
        env_from = [s.get("configMapRef", {}).get("name") for s in pod["containers"][0].get("envFrom", [])]
        assert "crossover-env" in env_from, where
        names = {v["name"] for v in pod["containers"][0]["env"]}
        assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= names, where


@pytest.mark.parametrize("name", OVERLAYS)
def test_ray_pods_read_the_credentials_from_secrets(name):
    """The head (and so every job's driver, which inherits its environment) and the workers (the trials) get the
    MLflow credentials, and the hub token and object-store keys when their optional Secrets exist."""
    for where, pod in pod_specs(one(overlay(name), "RayCluster")):
        container = pod["containers"][0]
        refs = {v["name"]: v.get("valueFrom", {}).get("secretKeyRef") for v in container["env"]}
        assert refs["MLFLOW_TRACKING_USERNAME"] == {"name": "crossover-mlflow-auth", "key": "username"}, where
        assert refs["MLFLOW_TRACKING_PASSWORD"] == {"name": "crossover-mlflow-auth", "key": "password"}, where
        assert refs["HF_TOKEN"] == {"name": "crossover-hf", "key": "token", "optional": True}, where
        assert {"secretRef": {"name": "crossover-s3", "optional": True}} in container["envFrom"], where


@pytest.mark.parametrize("name", OVERLAYS)
def test_cluster_can_hold_one_trial_of_its_study(name, tmp_path):
    objects = overlay(name)
    study = load_study(_job_study(objects, tmp_path))
    groups = one(objects, "RayCluster")["spec"]["workerGroupSpecs"]
    limits = [(g["maxReplicas"], g["template"]["spec"]["containers"][0]["resources"]["limits"]) for g in groups]
    cpus = sum(n * float(lim["cpu"]) for n, lim in limits)
    gpus = sum(n * int(lim.get("nvidia.com/gpu", 0)) for n, lim in limits)
    r = study.resources
    assert r.workers * r.cpus_per_worker <= cpus
    assert r.workers * r.gpus_per_worker <= gpus
    # And one worker of the trial fits in one pod.
    assert any(
        r.cpus_per_worker <= float(lim["cpu"]) and r.gpus_per_worker <= int(lim.get("nvidia.com/gpu", 0))
        for _, lim in limits
    )


# ---- network policies ---------------------------------------------------------------------------------------


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert not selector.get("matchExpressions"), "the evaluator below reads matchLabels only"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _sources(objects: tuple[dict[str, Any], ...], labels: dict[str, str], port: int) -> list[dict[str, Any]]:
    """The peers the namespace's policies let reach a pod with these labels on this TCP port."""
    policies = [p for p in objects if p["kind"] == "NetworkPolicy" and _selects(p["spec"]["podSelector"], labels)]
    assert any("Ingress" in p["spec"]["policyTypes"] for p in policies), f"no ingress policy selects {labels}"
    peers = []
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = [p.get("port") for p in rule.get("ports", [])]
            if ports and port not in ports:
                continue
            peers.extend(rule.get("from", [{"ipBlock": {"cidr": "0.0.0.0/0"}}]))  # no `from`: every source
    return peers


def _in_namespace(peer: dict[str, Any]) -> bool:
    return set(peer) == {"podSelector"}  # a podSelector alone means pods of the policy's own namespace


@pytest.mark.parametrize("name", OVERLAYS)
def test_network_policies_keep_ray_and_the_database_in_the_namespace(name):
    objects = overlay(name)
    cluster = one(objects, "RayCluster")["metadata"]["name"]
    head = {"ray.io/cluster": cluster, "ray.io/node-type": "head"}
    worker = {"ray.io/cluster": cluster, "ray.io/node-type": "worker"}
    for port in (6379, 10001, 12345):  # GCS, Ray client, a raylet/worker port
        for labels in (head, worker):
            peers = _sources(objects, labels, port)
            assert peers and all(_in_namespace(p) for p in peers), (labels, port, peers)
    # The dashboard (job API): the namespace, plus only the KubeRay operator from elsewhere.
    for peer in _sources(objects, head, 8265):
        if not _in_namespace(peer):
            assert peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}, peer

    postgres = one(objects, "StatefulSet", "crossover-postgres")["spec"]["template"]["metadata"]["labels"]
    mlflow = one(objects, "Deployment", "crossover-mlflow")["spec"]["template"]["metadata"]["labels"]
    peers = _sources(objects, postgres, 5432)
    assert peers and all(_in_namespace(p) and _selects(p["podSelector"], mlflow) for p in peers), peers
    # MLflow itself is for the team: open on its port only, behind basic auth.
    assert _sources(objects, mlflow, 5000)


# ---- images ---------------------------------------------------------------------------------------------------


def _build_args(dockerfile: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)", dockerfile.read_text(), flags=re.M))


def test_image_holds_the_code_and_no_spec():
    """Specs travel with each job (the RayJob's ConfigMap, `ray job submit --working-dir`): none is built in."""
    docker = K8S / "docker"
    copies = re.findall(r"^COPY (.+)$", (docker / "Dockerfile").read_text(), flags=re.M)
    assert sorted(source for line in copies for source in line.split()[:-1]) == [
        "README.md",
        "crossover",
        "pyproject.toml",
    ]
    assert "study_specs" not in (docker / "Dockerfile").read_text() + (docker / "Dockerfile.dockerignore").read_text()


def test_dockerfiles_take_versions_as_build_args_and_agree_with_the_manifests():
    gpu = K8S / "docker" / "Dockerfile"
    args = _build_args(gpu)
    for name in ("VARIANT", "CUDA_BASE_IMAGE", "CPU_BASE_IMAGE", "TORCH_VERSION", "FLASH_ATTN_VERSION"):
        assert name in args, f"{gpu} has no build arg {name}"
    for name in ("RAY_VERSION", "DEEPSPEED_VERSION", "MLFLOW_VERSION"):
        assert name in args
    text = gpu.read_text()
    assert "FROM ${CUDA_BASE_IMAGE} AS base-gpu" in text and "FROM ${CPU_BASE_IMAGE} AS base-cpu" in text
    assert "FROM base-${VARIANT}" in text
    for source in re.findall(r"^COPY (\S+)", text, flags=re.M):
        assert (ROOT / source).exists(), f"{gpu} copies {source}, which does not exist"
    assert f"ENV HOME={RAY_HOME}" in text and f"{RAY_HOME}/ray_results" in text, "the mounts assume this HOME"
    mlflow_args = _build_args(K8S / "docker" / "mlflow.Dockerfile")
    assert mlflow_args["MLFLOW_VERSION"] == args["MLFLOW_VERSION"], "MLflow server and client versions differ"
    assert "mlflow[auth]" in (K8S / "docker" / "mlflow.Dockerfile").read_text()
    for name in OVERLAYS:
        assert one(overlay(name), "RayCluster")["spec"]["rayVersion"] == args["RAY_VERSION"]
