"""LocalService: the model image run as a local container (the docker target)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import pulumi
import pulumi_docker as docker

from . import specs


@dataclass
class LocalServiceArgs:
    image: pulumi.Input[str]
    """The locally loaded image (version tag), as an output of the build (ModelImage.ref) so the
    container is created after it. Required."""
    port: int
    """Host port on 127.0.0.1 mapped to the server's 8080. Required."""
    drain_seconds: int = 20
    """Server drain after SIGTERM; docker waits longer before killing. Default 20."""
    auth_token: Optional[pulumi.Input[str]] = None
    """Bearer token (a Pulumi secret). Default None."""
    extra_env: Sequence[str] = ()
    """More `SERVEDMODEL_NAME=value` settings (served name, gRPC port, batching). Default ()."""
    grpc_port: int = 0
    """The server's gRPC port, published on 127.0.0.1 at the same number; 0: off. Default 0."""
    user: str = str(specs.RUN_AS)
    """The container's user: the image's (10001), or the uid:gid that owns the mounted files
    (components/local_files.py). Default "10001"."""
    mounts: Sequence[tuple[str, str]] = ()
    """(file on this machine, absolute path; path in the container) pairs, bind-mounted read-only:
    the model's local key, the clients document. Default ()."""
    labels: dict[str, pulumi.Input[str]] = field(default_factory=dict)
    """Container labels; an Output among them (the clients document's checksum) makes the
    container wait for what produced it, and a change of it replaces the container. Default {}."""


class LocalService(pulumi.ComponentResource):
    """One container with port mapping, a health check on /v2/health/ready and a restart policy.

    Outputs: `url` (http://127.0.0.1:PORT), `container_name`.
    """

    url: pulumi.Output[str]
    container_name: pulumi.Output[str]

    def __init__(self, name: str, args: LocalServiceArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("servedmodel:index:LocalService", name, None, opts)
        envs: list[pulumi.Input[str]] = [
            "SERVEDMODEL_HOST=0.0.0.0",
            f"SERVEDMODEL_PORT={specs.SERVER_PORT}",
            "SERVEDMODEL_DEVICE=cpu",
            f"SERVEDMODEL_DRAIN_SECONDS={args.drain_seconds}",
        ]
        envs += [e for e in args.extra_env if e not in envs]
        if args.auth_token is not None:
            envs.append(pulumi.Output.secret(pulumi.Output.concat("SERVEDMODEL_AUTH_TOKEN=", args.auth_token)))
        ports: list[docker.ContainerPortArgsDict] = [
            {"internal": specs.SERVER_PORT, "external": args.port, "ip": "127.0.0.1"}]
        if args.grpc_port:
            ports.append({"internal": args.grpc_port, "external": args.grpc_port, "ip": "127.0.0.1"})
        container = docker.Container(
            # Named after the host port it holds, not the served name: a rename of the served
            # name then replaces this container (delete first, below) instead of creating a second
            # one on the same port while the first still holds it (creates run before deletes).
            # The alias carries stacks made before this naming over without a replacement.
            f"port-{args.port}",
            image=args.image,
            ports=ports,
            envs=envs,
            healthcheck={"tests": specs.docker_healthcheck_test(), "interval": "5s", "timeout": "3s",
                         "retries": 3, "start_period": "60s"},
            restart="unless-stopped",
            must_run=True,
            wait=True,  # `up` fails unless the container turns healthy
            wait_timeout=120,
            user=args.user,
            mounts=[{"type": "bind", "source": source, "target": target, "read_only": True}
                    for source, target in args.mounts] or None,
            labels=[{"label": k, "value": v} for k, v in sorted(args.labels.items())] or None,
            read_only=True,
            tmpfs={"/tmp": "rw,size=256m"},
            capabilities={"drops": ["ALL"]},
            security_opts=["no-new-privileges"],
            stop_timeout=args.drain_seconds + 10,
            # A new image replaces the container (image is ForceNew), and the new one needs the
            # same host port: delete the old one first. pulumi-docker asks for this too
            # (provider/resources.go, docker_container DeleteBeforeReplace); stated here so it
            # holds whatever the provider version.
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True,
                                        aliases=[pulumi.Alias(name=f"{name}-container")]),
        )
        self.url = pulumi.Output.from_input(f"http://127.0.0.1:{args.port}")
        self.container_name = container.name
        self.register_outputs({"url": self.url, "container_name": self.container_name})
