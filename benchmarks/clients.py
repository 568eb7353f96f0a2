"""Which API client the operator should use: armcpu's own (``armcpu_k8s.kube``), the official
``kubernetes`` client, or ``kubernetes_asyncio``, measured on the local control plane.

For each client, in a fresh process: the import time and RSS it adds, then one paginated LIST of N
Nodes (the largest collection the operator lists whole) with the client's normal API, its wall
time and the process's RSS afterwards. The official clients are not armcpu dependencies: they are
installed (at the versions measured) into a venv of their own under ~/.cache/armcpu, or taken from
the Python given with ``--python``.

    .venv/bin/python -m benchmarks.clients --nodes 5000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import venv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from armcpu_k8s.kube import Kube, load_kubeconfig
from armcpu_testing.controlplane import REPO, running

PROBE = r'''
import json, sys, time
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:")) / 1024
which, kubeconfig = sys.argv[1], sys.argv[2]
base = rss(); t = time.perf_counter()
if which == "armcpu":
    from armcpu_k8s.kube import Kube, load_kubeconfig
elif which == "kubernetes":
    import kubernetes
else:
    import kubernetes_asyncio
imported = time.perf_counter() - t; after_import = rss()
t = time.perf_counter()
count = 0
if which == "armcpu":
    from pathlib import Path
    kube = Kube(load_kubeconfig(Path(kubeconfig))); token = ""
    while True:
        page = kube.request("GET", "/api/v1/nodes", query={"limit": "500", **({"continue": token} if token else {})})
        items = page["items"]; count += len(items); token = page["metadata"].get("continue") or ""
        if not token: break
elif which == "kubernetes":
    kubernetes.config.load_kube_config(kubeconfig); api = kubernetes.client.CoreV1Api(); token = None; items = []
    while True:
        page = api.list_node(limit=500, _continue=token); items += page.items; count = len(items); token = page.metadata._continue
        if not token: break
else:
    import asyncio
    async def main():
        await kubernetes_asyncio.config.load_kube_config(kubeconfig)
        async with kubernetes_asyncio.client.ApiClient() as client:
            api = kubernetes_asyncio.client.CoreV1Api(client); token = None; items = []
            while True:
                page = await api.list_node(limit=500, _continue=token); items.extend(page.items); token = page.metadata._continue
                if not token: return items
    items = asyncio.run(main()); count = len(items)
listed = time.perf_counter() - t
print(json.dumps({"client": which, "import_s": round(imported, 3), "import_rss_mib": round(after_import - base, 1),
                  "list_s": round(listed, 2), "listed": count, "rss_after_list_mib": round(rss(), 1)}))
'''


OFFICIAL = ("kubernetes==37.0.2", "kubernetes_asyncio==36.1.0")  # the versions docs/benchmarks.md reports


def official_python() -> str:
    """A venv with the official clients (made once, then reused)."""
    home = Path.home() / ".cache" / "armcpu" / "clients-venv"
    python = home / "bin" / "python"
    if not python.exists():
        venv.create(home, with_pip=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *OFFICIAL], check=True)
    return str(python)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--python", help="a Python with kubernetes and kubernetes_asyncio installed (default: a venv made for this)")
    parser.add_argument("--nodes", type=int, default=5000)
    args = parser.parse_args()
    official = args.python or official_python()
    results: list[dict[str, object]] = []
    with running(install_crds=False) as plane:
        admin = Kube(load_kubeconfig(plane.kubeconfig))
        labels = {f"node.kubernetes.io/label-{i}": "value" for i in range(10)}

        def create(i: int) -> None:
            admin.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"n-{i:05d}", "labels": labels}})

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(args.nodes)))
        time.sleep(2)
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        for which, python in (("armcpu", sys.executable), ("kubernetes", official), ("kubernetes_asyncio", official)):
            out = subprocess.run([python, "-c", PROBE, which, str(plane.kubeconfig)], capture_output=True, text=True, env=env, check=False,
                                 cwd=Path(REPO))
            results.append(json.loads(out.stdout) if out.returncode == 0 else {"client": which, "error": out.stderr.strip()[-400:]})
    print(json.dumps({"nodes": args.nodes, "clients": results}, indent=1))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
