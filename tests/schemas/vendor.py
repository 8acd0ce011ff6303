"""Vendor a CRD's schema for the manifest tests: `python tests/schemas/vendor.py CRD.yaml
VERSION OUT.json.xz` keeps spec.versions[VERSION].schema.openAPIV3Schema, compact and xz'd.

Vendored here (from each project's repository at the tag named in the file name):
- kuberay-v1.7.0-rayservice.json.xz: ray-project/kuberay v1.7.0,
  ray-operator/config/crd/bases/ray.io_rayservices.yaml, version v1
- prometheus-operator-v0.93.0-podmonitor.json.xz: prometheus-operator/prometheus-operator
  v0.93.0, example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml, version v1
"""

from __future__ import annotations

import json
import lzma
import sys

import yaml


def main(crd: str, version: str, out: str) -> None:
    with open(crd) as f:
        versions = yaml.safe_load(f)["spec"]["versions"]
    schema = next(v for v in versions if v["name"] == version)["schema"]["openAPIV3Schema"]
    data = json.dumps(schema, separators=(",", ":"), sort_keys=True).encode()
    with open(out, "wb") as f:
        f.write(lzma.compress(data, preset=9))


if __name__ == "__main__":
    main(*sys.argv[1:4])
