#!/usr/bin/env python3
"""Checks the objects the API server stored for a chart install (tests/suites/25-chart.sh).

Usage: check.py default|nondefault|certmanager FILE.json
FILE.json is `kubectl get -o json` of the installed objects (a List). Prints one line per
failed expectation and exits 1 if there is any. Standard library only.
"""

import json
import sys

failures = []


def expect(cond, what):
    if not cond:
        failures.append(what)


def find(items, kind, name, namespace=None):
    for o in items:
        m = o["metadata"]
        if o["kind"] == kind and m["name"] == name and (namespace is None or m.get("namespace") == namespace):
            return o
    return None


def need(items, kind, name, namespace=None):
    o = find(items, kind, name, namespace)
    expect(o is not None, f"{kind} {namespace + '/' if namespace else ''}{name} is missing")
    return o or {"metadata": {}, "spec": {}, "rules": [], "webhooks": []}


def secrets_rule(role):
    return [r for r in role.get("rules", []) if "secrets" in r.get("resources", []) and "list" in r.get("verbs", [])]


def env(container, name):
    for e in container.get("env", []):
        if e["name"] == name:
            return e.get("value", "")
    return None


def restricted(pod_spec, where):
    """The parts of the restricted Pod Security profile the chart must set explicitly."""
    psc = pod_spec.get("securityContext", {})
    expect(psc.get("runAsNonRoot") is True, f"{where}: runAsNonRoot")
    expect(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: seccomp RuntimeDefault")
    for c in pod_spec.get("containers", []):
        sc = c.get("securityContext", {})
        expect(sc.get("readOnlyRootFilesystem") is True, f"{where}/{c['name']}: readOnlyRootFilesystem")
        expect(sc.get("allowPrivilegeEscalation") is False, f"{where}/{c['name']}: allowPrivilegeEscalation false")
        expect(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}/{c['name']}: capabilities drop ALL")
        res = c.get("resources", {})
        expect(res.get("requests", {}).get("memory") and res.get("limits", {}).get("memory"),
               f"{where}/{c['name']}: memory request and limit")


def webhook_excludes(wh, namespaces):
    for w in wh.get("webhooks", []):
        exprs = w.get("namespaceSelector", {}).get("matchExpressions", [])
        excluded = set()
        for e in exprs:
            if e["key"] == "kubernetes.io/metadata.name" and e["operator"] == "NotIn":
                excluded |= set(e["values"])
        for ns in namespaces:
            expect(ns in excluded, f"webhook {w['name']}: namespaceSelector does not exclude {ns}")


def operator(items, name, ns, replicas, https, admin, cert_dir=False):
    dep = need(items, "Deployment", name, ns)
    spec = dep["spec"]
    expect(spec.get("replicas") == replicas, f"Deployment {name}: replicas {spec.get('replicas')}, want {replicas}")
    pod = spec.get("template", {}).get("spec", {})
    expect(pod.get("serviceAccountName") == name, f"Deployment {name}: serviceAccountName")
    restricted(pod, f"Deployment {name}")
    expect(pod.get("topologySpreadConstraints"), f"Deployment {name}: no topologySpreadConstraints")
    c = (pod.get("containers") or [{}])[0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        expect(probe in c, f"Deployment {name}: no {probe}")
    expect(c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz", f"Deployment {name}: readiness is not /readyz")
    expect(c.get("resources", {}).get("requests", {}).get("cpu"), f"Deployment {name}: no CPU request")
    args = c.get("args", [])
    tls = "--tls-cert-dir=/var/run/llmesh/tls" if cert_dir else f"--tls-secret={name}-tls"
    for a in (f"--listen=0.0.0.0:{https}", f"--admin-listen=0.0.0.0:{admin}", f"--service={name}",
              tls, f"--lease-name={name}-leader"):
        expect(a in args, f"Deployment {name}: args lack {a} ({args})")
    other = "--tls-secret=" if cert_dir else "--tls-cert-dir="
    expect(not [a for a in args if a.startswith(other)], f"Deployment {name}: both TLS sources in args ({args})")
    svc = need(items, "Service", name, ns)
    expect([p["port"] for p in svc["spec"].get("ports", [])] == [https], f"Service {name}: ports")
    msvc = need(items, "Service", f"{name}-metrics", ns)
    expect([p["port"] for p in msvc["spec"].get("ports", [])] == [admin], f"Service {name}-metrics: ports")
    role = need(items, "Role", name, ns)
    names = {n for r in role.get("rules", []) for n in r.get("resourceNames", [])}
    want = {f"{name}-leader"} if cert_dir else {f"{name}-leader", f"{name}-tls"}
    expect(names == want, f"Role {name}: resourceNames {names}")
    return dep, c, args


def cert_manager(items, name, ns, dep, webhook, issuer):
    """webhook.certManager.enabled: the serving Certificate, its Secret mounted, the CA injected."""
    pod = dep["spec"]["template"]["spec"]
    c = (pod.get("containers") or [{}])[0]
    mounts = [m for m in c.get("volumeMounts", []) if m.get("mountPath") == "/var/run/llmesh/tls"]
    expect(len(mounts) == 1 and mounts[0].get("readOnly") is True, f"Deployment {name}: cert dir not mounted read-only ({mounts})")
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    vol = vols.get(mounts[0]["name"] if mounts else "", {})
    expect(vol.get("secret", {}).get("secretName") == f"{name}-serving-tls", f"Deployment {name}: volume {vol}")
    cert = need(items, "Certificate", f"{name}-serving", ns)
    spec = cert["spec"]
    expect(spec.get("secretName") == f"{name}-serving-tls", f"Certificate {name}-serving: secretName {spec.get('secretName')}")
    want = [name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"]
    expect(spec.get("dnsNames") == want, f"Certificate {name}-serving: dnsNames {spec.get('dnsNames')}, want {want}")
    expect(spec.get("issuerRef") == issuer, f"Certificate {name}-serving: issuerRef {spec.get('issuerRef')}, want {issuer}")
    expect("server auth" in spec.get("usages", []), f"Certificate {name}-serving: usages {spec.get('usages')}")
    wh = need(items, "MutatingWebhookConfiguration", webhook)
    ann = wh["metadata"].get("annotations", {}).get("cert-manager.io/inject-ca-from")
    expect(ann == f"{ns}/{name}-serving", f"webhook {webhook}: inject-ca-from {ann!r}")
    for w in wh.get("webhooks", []):
        expect("caBundle" not in w.get("clientConfig", {}), f"webhook {w['name']}: a caBundle in the rendering")
    return cert


def no_cert_manager(items, webhook):
    for kind in ("Certificate", "Issuer", "ClusterIssuer"):
        expect(not [o for o in items if o["kind"] == kind], f"a {kind} with webhook.certManager disabled")
    wh = need(items, "MutatingWebhookConfiguration", webhook)
    expect("cert-manager.io/inject-ca-from" not in wh["metadata"].get("annotations", {}),
           f"webhook {webhook}: inject-ca-from with webhook.certManager disabled")


def default(items):
    ns, name = "llmesh-system", "llmesh-operator"
    dep, c, args = operator(items, name, ns, 2, 8443, 8080)
    expect(c.get("image") == "ghcr.io/llmesh/llmesh-operator:0.1.0", f"operator image {c.get('image')}")
    expect("--sidecar-image=ghcr.io/llmesh/llmesh-sidecar:0.1.0" in args, "sidecar image arg")
    expect(env(c, "LLMESH_SECRET_NAMESPACES") == "", "LLMESH_SECRET_NAMESPACES is not empty")
    pdb = need(items, "PodDisruptionBudget", name, ns)
    expect(pdb["spec"].get("minAvailable") == 1, "PodDisruptionBudget minAvailable")
    cr = need(items, "ClusterRole", name)
    expect(len(secrets_rule(cr)) == 1, "ClusterRole: no cluster-wide secrets rule with secrets.namespaces empty")
    expect(not [o for o in items if o["metadata"]["name"].endswith("-secrets")], "a per-namespace secrets Role with secrets.namespaces empty")
    wh = need(items, "MutatingWebhookConfiguration", "llmesh-sidecar-injector")
    expect(len(wh.get("webhooks", [])) == 2, "webhook: want the namespace and the pod entries")
    for w in wh.get("webhooks", []):
        expect(w.get("failurePolicy") == "Fail", f"webhook {w['name']}: failurePolicy")
        expect(0 < w.get("timeoutSeconds", 99) <= 5, f"webhook {w['name']}: timeoutSeconds")
        expect(w["clientConfig"].get("service", {}).get("name") == name, f"webhook {w['name']}: service")
    webhook_excludes(wh, ["kube-system", ns])
    for kind in ("ServiceMonitor", "PrometheusRule", "ConfigMap"):
        expect(not [o for o in items if o["kind"] == kind], f"a {kind} with default values")
    no_cert_manager(items, "llmesh-sidecar-injector")
    expect(not dep["spec"]["template"]["spec"].get("volumes"), "Deployment: volumes with default values")


def nondefault(items):
    ns, name = "mesh-system", "mesh-operator"
    dep, c, args = operator(items, name, ns, 3, 9443, 9090, cert_dir=True)
    pod = dep["spec"]["template"]["spec"]
    cert = cert_manager(items, name, ns, dep, "mesh-injector",
                        {"name": "platform-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    expect((cert["spec"].get("duration"), cert["spec"].get("renewBefore")) == ("720h", "240h"),
           f"Certificate durations {cert['spec'].get('duration')}, {cert['spec'].get('renewBefore')}")
    expect(not [o for o in items if o["kind"] == "Issuer"], "an Issuer of the chart's own with issuerRef set")
    expect(c.get("image") == "registry.example:5000/llmesh/operator:0.1.0@sha256:" + "0123456789abcdef" * 4, f"operator image {c.get('image')}")
    expect(c.get("imagePullPolicy") == "Always", "operator pullPolicy")
    expect(pod.get("imagePullSecrets") == [{"name": "regcred"}], "imagePullSecrets")
    expect(pod.get("nodeSelector") == {"kubernetes.io/os": "linux"}, "nodeSelector")
    expect(pod.get("tolerations", [{}])[0].get("key") == "dedicated", "tolerations")
    expect("nodeAffinity" in pod.get("affinity", {}), "affinity")
    expect(pod.get("priorityClassName") == "llmesh-critical", "priorityClassName")
    expect(pod.get("topologySpreadConstraints", [{}])[0].get("whenUnsatisfiable") == "DoNotSchedule", "topologySpreadConstraints")
    meta = dep["spec"]["template"]["metadata"]
    expect(meta.get("labels", {}).get("team") == "platform", "podLabels")
    expect(meta.get("annotations", {}).get("example.com/owner") == "platform", "podAnnotations")
    expect(c.get("resources", {}).get("limits", {}).get("cpu") == "1", "operator CPU limit")
    for a in ("--log-format=text", "--lease-duration=30s", "--lease-retry=5s", "--webhook-config=mesh-injector",
              "--sidecar-image=registry.example:5000/llmesh/sidecar@sha256:" + "fedcba9876543210" * 4,
              "--sidecar-pull-policy=IfNotPresent", "--sidecar-port=4100", "--sidecar-cpu-request=25m",
              "--sidecar-memory-request=48Mi", "--sidecar-memory-limit=96Mi", "--sidecar-run-as=10001",
              "--cert-validity=720h"):
        expect(a in args, f"args lack {a}")
    expect(env(c, "LLMESH_SECRET_NAMESPACES") == "team-a,team-b", f"LLMESH_SECRET_NAMESPACES {env(c, 'LLMESH_SECRET_NAMESPACES')!r}")
    expect(find(items, "PodDisruptionBudget", name, ns) is None, "PodDisruptionBudget rendered though disabled")
    cr = need(items, "ClusterRole", name)
    expect(not secrets_rule(cr), "ClusterRole keeps the cluster-wide secrets rule with secrets.namespaces set")
    for team in ("team-a", "team-b"):
        r = need(items, "Role", f"{name}-secrets", team)
        expect(len(secrets_rule(r)) == 1, f"Role {team}/{name}-secrets: no secrets rule")
        b = need(items, "RoleBinding", f"{name}-secrets", team)
        subj = (b.get("subjects") or [{}])[0]
        expect((subj.get("name"), subj.get("namespace")) == (name, ns), f"RoleBinding {team}: subject {subj}")
    wh = need(items, "MutatingWebhookConfiguration", "mesh-injector")
    for w in wh.get("webhooks", []):
        expect(w.get("failurePolicy") == "Ignore", f"webhook {w['name']}: failurePolicy")
        expect(w.get("timeoutSeconds") == 3, f"webhook {w['name']}: timeoutSeconds")
        expect(w["clientConfig"].get("service", {}).get("port") == 9443, f"webhook {w['name']}: port")
    webhook_excludes(wh, ["kube-system", ns, "legacy"])
    sm = need(items, "ServiceMonitor", name, ns)
    expect(sm["metadata"].get("labels", {}).get("release") == "prom", "ServiceMonitor labels")
    ep = (sm["spec"].get("endpoints") or [{}])[0]
    expect((ep.get("port"), ep.get("path"), ep.get("interval")) == ("admin", "/metrics", "15s"), f"ServiceMonitor endpoint {ep}")
    pr = need(items, "PrometheusRule", name, ns)
    groups = [g["name"] for g in pr["spec"].get("groups", [])]
    expect(groups == ["llmesh", "llmesh-chart-test"], f"PrometheusRule groups {groups}")
    cm = need(items, "ConfigMap", "llmesh-dashboard-chart-test", "grafana")
    expect(cm["metadata"].get("labels", {}).get("grafana_dashboard") == "1", "dashboard ConfigMap label")
    expect(cm["metadata"].get("annotations", {}).get("grafana_folder") == "llmesh", "dashboard ConfigMap annotations")
    expect(json.loads(cm.get("data", {}).get("chart-test.json", "{}")).get("uid") == "llmesh-chart-test", "dashboard JSON")


def certmanager(items):
    """webhook.certManager.enabled with issuerRef empty: the chart's own CA chain."""
    ns, name = "cm-system", "cm-operator"
    dep, c, args = operator(items, name, ns, 2, 8443, 8080, cert_dir=True)
    issuer = {"name": f"{name}-ca", "kind": "Issuer", "group": "cert-manager.io"}
    cert = cert_manager(items, name, ns, dep, "cm-injector", issuer)
    expect(cert["spec"].get("privateKey", {}).get("rotationPolicy") == "Always", "serving key not rotated on renewal")
    selfsigned = need(items, "Issuer", f"{name}-selfsigned", ns)
    expect(selfsigned["spec"] == {"selfSigned": {}}, f"Issuer {name}-selfsigned: spec {selfsigned['spec']}")
    ca = need(items, "Certificate", f"{name}-ca", ns)["spec"]
    expect(ca.get("isCA") is True, "CA Certificate: isCA")
    expect(ca.get("secretName") == f"{name}-ca", f"CA Certificate: secretName {ca.get('secretName')}")
    expect(ca.get("issuerRef", {}).get("name") == f"{name}-selfsigned", f"CA Certificate: issuerRef {ca.get('issuerRef')}")
    expect(ca.get("privateKey", {}).get("rotationPolicy") == "Never",
           "CA Certificate: its key must be kept on renewal (sidecars trust it from injection on)")
    ca_issuer = need(items, "Issuer", f"{name}-ca", ns)
    expect(ca_issuer["spec"] == {"ca": {"secretName": f"{name}-ca"}}, f"Issuer {name}-ca: spec {ca_issuer['spec']}")
    # Least privilege: cert-manager keeps the certificate and the caBundle, so the operator may
    # neither patch the webhook nor write Secrets.
    cr = need(items, "ClusterRole", name)
    expect(not [r for r in cr["rules"] if "mutatingwebhookconfigurations" in r.get("resources", [])],
           "ClusterRole: the webhook patch rule is granted with cert-manager")
    role = need(items, "Role", name, ns)
    expect(not [r for r in role["rules"] if "secrets" in r.get("resources", [])],
           f"Role: Secret rules are granted with cert-manager: {role['rules']}")


def main():
    mode, path = sys.argv[1], sys.argv[2]
    with open(path) as f:
        items = json.load(f)["items"]
    {"default": default, "nondefault": nondefault, "certmanager": certmanager}[mode](items)
    for f in failures:
        print(f"  {mode}: {f}")
    if failures:
        sys.exit(1)
    print(f"{mode}: {len(items)} objects as expected")


if __name__ == "__main__":
    main()
