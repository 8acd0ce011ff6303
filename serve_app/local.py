"""`python -m serve_app.local [CONFIG] [serve run options]`: the main job on one machine.

It is `serve run CONFIG` (default deploy/serve_config.yaml) with Ray started first on the
node address 127.0.0.1, so Ray's own ports (GCS, raylet, object manager, dashboard) are not
on the machine's network address as a plain `serve run` puts them, and with the settings
every Chorus node needs (`config.NODE_SETTINGS`) in Ray's environment. With RAY_ADDRESS set
it joins that cluster instead, as `serve run` does. Ctrl+C stops Serve and Ray.
"""

from __future__ import annotations

import os
import sys

from serve_app.config import NODE_SETTINGS

DEFAULT_CONFIG = "deploy/serve_config.yaml"
LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": one machine, node address 127.0.0.1


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-"):
        args.insert(0, DEFAULT_CONFIG)
    for name, (value, _) in NODE_SETTINGS.items():
        os.environ.setdefault(name, value)
    alone = not os.environ.get("RAY_ADDRESS")
    if alone:
        # NOTE: Ray turns a node address of 127.0.0.1 into the machine's own address unless
        # told this is no cluster (its switch for single-machine runs on macOS and Windows),
        # read when ray is imported: so before that.
        os.environ[LOCAL_ONLY] = "0"

    import ray
    from ray.serve._private.constants import SERVE_NAMESPACE
    from ray.serve.scripts import cli

    if alone:  # `serve run` uses this Ray (it starts one only if none is)
        ray.init(dashboard_host="127.0.0.1", namespace=SERVE_NAMESPACE)
    cli.main(["run", *args], prog_name="serve")


if __name__ == "__main__":
    main()
