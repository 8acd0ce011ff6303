"""`python -m serve_app.local [CONFIG] [serve run options]`: the main job on one machine.

It is `serve run CONFIG` (default deploy/serve_config.yaml) with Ray started first on the
node address 127.0.0.1, so Ray's own ports (GCS, raylet, object manager, dashboard) are not
on the machine's network address as a plain `serve run` puts them, and with the settings
every Chorus node needs (`config.NODE_SETTINGS`) in Ray's environment. With RAY_ADDRESS set
it joins that cluster instead, as `serve run` does. CHORUS_HTTP_HOST and CHORUS_HTTP_PORT
override the config's http_options. Ctrl+C or SIGTERM stops Serve and Ray.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile

import yaml

from serve_app.config import NODE_SETTINGS, env

DEFAULT_CONFIG = "deploy/serve_config.yaml"
LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": one machine, node address 127.0.0.1
# On one machine, behind HAProxy: a stopping ingress replica stays open at least this long
# (Ray's default is 30 s, for load balancers in front of a cluster to deregister it; Serve's
# own HAProxy, the only one here, does within a second). With 30, every Ctrl+C, `docker
# stop` and test app took over 30 s to stop. In-flight requests are still waited for.
# Serve's controller checks every replica, node and autoscaling decision each loop (Ray's
# default: every 0.1 s, asking the GCS for the nodes' resources each time): on one machine
# of a few cores at 0.5 s, Ray's idle CPU fell from 0.185 to 0.148 of a core (controller
# 0.039 to 0.016, GCS 0.019 to 0.009), for state changes seen up to 0.4 s later.
# Ray's log monitor lists its log folder every 0.1 s while it holds under 1,000 files (then
# every LOG_NAME_UPDATE_INTERVAL_S): listed every 5 s, an idle server's log monitor fell from
# 11 to 4 ms of CPU a second here, for a new process's log lines reaching `serve run`'s
# output up to 5 s later (lines of files already listed still come within 0.1 s).
ONE_MACHINE = {
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0",
    "LOG_NAME_UPDATE_INTERVAL_S": "5",
}


def with_address(config: str) -> str:
    """`config`, or a copy of it listening where CHORUS_HTTP_HOST / CHORUS_HTTP_PORT say
    (e.g. 0.0.0.0 in a container on a bridge network)."""
    host, port = env("HTTP_HOST"), env("HTTP_PORT")
    if not (host or port):
        return config
    with open(config) as f:
        raw = yaml.safe_load(f)
    http = raw.setdefault("http_options", {})
    if host:
        http["host"] = host
    if port:
        http["port"] = int(port)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(raw, f)
    return f.name


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-"):
        args.insert(0, DEFAULT_CONFIG)
    args[0] = with_address(args[0])
    for name, (value, _) in NODE_SETTINGS.items():
        os.environ.setdefault(name, value)
    alone = not os.environ.get("RAY_ADDRESS")
    if alone:
        # NOTE: Ray turns a node address of 127.0.0.1 into the machine's own address unless
        # told this is no cluster (its switch for single-machine runs on macOS and Windows),
        # read when ray is imported: so before that.
        os.environ[LOCAL_ONLY] = "0"
        for name, value in ONE_MACHINE.items():
            os.environ.setdefault(name, value)

    import ray
    from ray.serve._private.constants import SERVE_NAMESPACE
    from ray.serve.scripts import cli

    # NOTE: `serve run` uses this Ray (it starts or joins one only if none is).
    if alone:
        # "local": its own Ray, even when another one on this machine is still up.
        ray.init(address="local", dashboard_host="127.0.0.1", namespace=SERVE_NAMESPACE)
    else:
        ray.init(address=os.environ["RAY_ADDRESS"], namespace=SERVE_NAMESPACE)
    # NOTE: `docker stop` and Kubernetes send SIGTERM: shut Serve and Ray down as Ctrl+C
    # does (ray.init's own handler exits at once, leaving Serve's replicas to be killed).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    cli.main(["run", *args], prog_name="serve")


if __name__ == "__main__":
    main()
