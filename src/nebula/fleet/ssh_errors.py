"""Errors of agentless (SSH) nodes.

`transient` separates what a retry with backoff may fix (the node is down, the network
dropped, a command ran long) from what a person must fix (the key is not authorized,
the host key changed, Docker is not installed).
"""

from __future__ import annotations

from typing import ClassVar

from nebula.kernel.errors import NebulaError


class SshError(NebulaError):
    """A node reached over SSH failed us. 502: the node, not Nebula Command, is at fault."""

    code = "ssh_error"
    status = 502
    default_message = "The node could not be used over SSH."
    transient: ClassVar[bool] = False


class SshConnectFailed(SshError):
    """Refused, timed out, unreachable, or dropped: the node may come back."""

    code = "ssh_connect_failed"
    status = 503
    default_message = "The node could not be reached over SSH."
    transient = True


class SshAuthFailed(SshError):
    code = "ssh_auth_failed"
    default_message = "The node refused the SSH key."


class SshHostKeyMismatch(SshError):
    """The node's host key is not the pinned (or first seen) one: possibly an impostor."""

    code = "ssh_host_key_mismatch"
    default_message = "The node's SSH host key is not the expected one."


class SshCommandTimeout(SshError):
    code = "ssh_command_timeout"
    status = 504
    default_message = "The command on the node did not finish in time."
    transient = True


class SshOutputTooLarge(SshError):
    code = "ssh_output_too_large"
    default_message = "The command on the node printed more than allowed."


class SshCommandNotFound(SshError):
    code = "ssh_command_not_found"
    default_message = "The program is not installed on the node."


class SshUnexpectedOutput(SshError):
    """The node answered, but not in the shape expected (not Linux, an odd docker...)."""

    code = "ssh_unexpected_output"
    default_message = "The node answered in an unexpected way."


class DockerMissing(SshError):
    code = "docker_missing"
    default_message = "Docker is not installed on the node."


class DockerCommandFailed(SshError):
    """The docker CLI on the node refused or failed; the message is docker's own."""

    code = "docker_failed"
    default_message = "The docker command on the node failed."


class ContainerNotFound(DockerCommandFailed):
    code = "container_not_found"
    status = 404
    default_message = "There is no such container on the node."
