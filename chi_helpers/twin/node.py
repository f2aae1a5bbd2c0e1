"""The twin's nodes: an SSH server on each floating IP, answering as the series' node would.

`Nodes(world).sync()` makes the listeners match the world: one SSH server on `<floating ip>:22` for
each ACTIVE server with a floating IP bound to one of its ports, and none for a server that is gone,
not ACTIVE, or whose address was unbound. A deleted server's node also stops what it started (its
tracking stack, its notebook runs), as deleting a real server does. `stop()` stops everything.

Each node behaves as the bare-metal host sshd would present: user `cc` only, public key only, the key
being the server's key pair as Nova injected it at boot. Commands (exec requests) are answered by
`node_commands.run` and recorded, in order, in `nodes/<server id>/commands.log`. SFTP (python-chi's
`upload`, Fabric's `put`/`get`) works in the node's own file system, `nodes/<server id>/root/`, where
`/home/cc` is the home: no path ever leads outside that folder. The fault `ssh-drops` drops the next
incoming connection right after the TCP accept.
"""

from __future__ import annotations

import base64
import logging
import os
import posixpath
import select
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko
from paramiko import SFTPAttributes, SFTPHandle, SFTPServer, SFTPServerInterface
from paramiko.sftp import SFTP_OK, SFTP_OP_UNSUPPORTED, SFTP_PERMISSION_DENIED, SFTP_FAILURE

SSH_PORT = 22
USER = "cc"
HOME = "/home/cc"
BANNER = "SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13.5"  # what Ubuntu 24.04's sshd says
GONE_STATUSES = ("DELETED", "SOFT_DELETED")
LOG_CHANNEL = "paramiko.transport.twin-node"  # the server side's paramiko log


class _QuietHangUps(logging.Filter):
    """A client that closes while the server still says goodbye makes paramiko log an ERROR on the server
    side; sshd only notes it in its debug log. Everything else (a bug in the twin) is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("Connection reset by peer" in message or "Broken pipe" in message
                    or "Error reading SSH protocol banner" in message)


logging.getLogger(LOG_CHANNEL).addFilter(_QuietHangUps())


# --- what a node is ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hardware:
    """What the node's host has, and which GPU software its image brings."""

    node_type: str  # compute_liqid, gpu_mi100, or the VM flavor's name
    host_name: str  # the bare-metal node's name (liqid01), or the hypervisor's
    gpu_model: str  # as Blazar names it: A100, MI100, H100 ("" without GPUs)
    gpus: int
    software: str  # "cuda" (CC-Ubuntu24.04-CUDA), "rocm" (CC-Ubuntu24.04-ROCm) or "none"
    image: str = ""

    @property
    def vendor(self) -> str:
        if not self.gpus:
            return ""
        return "amd" if self.gpu_model.upper().startswith("MI") else "nvidia"


def hardware_of(world, server: dict) -> Hardware:
    """The host a server landed on (Blazar's host record), or its flavor's GPUs for a VM. Call under world.lock."""
    hosts = world.data.get("hosts", {})
    host = None
    for key in ("_host", "OS-EXT-SRV-ATTR:hypervisor_hostname", "OS-EXT-SRV-ATTR:host"):
        ident = server.get(key)
        if not ident:
            continue
        host = hosts.get(ident) or next((h for h in hosts.values() if ident in (
            h.get("hypervisor_hostname"), h.get("node_name"), h.get("service_name"), h.get("id"))), None)
        if host:
            break
    flavor = server.get("_flavor") or {}
    flavor_ref = server.get("flavor") or {}
    if not flavor and isinstance(flavor_ref, dict):
        flavor = world.data.get("flavors", {}).get(flavor_ref.get("id"), {}) or flavor_ref
    image_ref = server.get("image") or {}
    image = ""
    if isinstance(image_ref, dict):
        image = (world.data.get("images", {}).get(image_ref.get("id")) or {}).get("name", "")
    if host:
        node_type = host.get("node_type", "")
        host_name = host.get("node_name") or host.get("hypervisor_hostname", "")
        gpus = int(host.get("gpu.gpu_count") or 0) if str(host.get("gpu.gpu", "True")) != "False" else 0
        model = host.get("gpu.gpu_model", "") if gpus else ""
    else:
        specs = flavor.get("extra_specs") or {}
        alias = specs.get("pci_passthrough:alias", "")
        name = flavor.get("name") or flavor.get("original_name") or ""
        if alias:  # "h100:1": a GPU VM
            model, _, count = alias.partition(":")
            node_type, host_name, model, gpus = name, str(server.get("_host") or "kvm"), model.upper(), int(count or 1)
        else:  # a record without a host: the series' default host, two A100s
            node_type, host_name, model, gpus = "compute_liqid", "liqid01", "A100", 2
    lowered = image.lower()
    if "rocm" in lowered:
        software = "rocm"
    elif "cuda" in lowered:
        software = "cuda"
    elif image:
        software = "none"
    else:  # no image record: what the series would have chosen for this GPU
        software = "rocm" if model.upper().startswith("MI") else "cuda"
    return Hardware(node_type, host_name, model, gpus, software, image)


def _key_line_parts(line: str) -> tuple[str, bytes] | None:
    parts = (line or "").split()
    if len(parts) < 2:
        return None
    try:
        return parts[0], base64.b64decode(parts[1])
    except ValueError:
        return None


class Node:
    """One server as seen from inside: its files, what runs on it, what it was asked."""

    def __init__(self, world, server_id: str, name: str, address: str, public_key: str | None,
                 hardware: Hardware, folder: Path):
        self.world = world
        self.server_id = server_id
        self.name = name
        self.address = address  # its first floating IP: where its services listen
        self.public_key = public_key  # the key Nova injected at boot (cloud-init's authorized_keys)
        self.hardware = hardware
        self.folder = Path(folder)
        self.root = self.folder / "root"
        self.home = self.root / HOME.lstrip("/")
        self.stack_dir = self.folder / "stack"
        self.lock = threading.RLock()  # held while a command changes the node's state
        self.state: dict = {}  # what node_commands did here (packages, containers, ...)
        self.commands: list[dict] = []
        self.processes: list[subprocess.Popen] = []
        self._record_lock = threading.Lock()
        self.gone = False  # its server was deleted
        self.booted = time.monotonic()
        for folder in (self.home, self.root / "tmp"):
            folder.mkdir(parents=True, exist_ok=True)
        self._root_real = os.path.realpath(self.root)

    # --- paths ------------------------------------------------------------------------------------

    def virtual(self, given: str, cwd: str = HOME) -> str:
        """The absolute path on the node that `given` names (`~`, relative paths, `..` resolved)."""
        given = given or "."
        if given == "~" or given.startswith("~/"):
            given = HOME + given[1:]
        elif not given.startswith("/"):
            given = posixpath.join(cwd, given)
        normal = posixpath.normpath(given)
        return "/" + normal.lstrip("/")

    def path(self, given: str, cwd: str = HOME) -> Path:
        """Where `given` lives in this machine's copy of the node; PermissionError for anything leading out."""
        local = self.root / self.virtual(given, cwd).lstrip("/")
        real = os.path.realpath(local)
        if real != self._root_real and not real.startswith(self._root_real + os.sep):
            raise PermissionError(f"{given} leads outside the node")
        return local

    def shown(self, local: str | os.PathLike) -> str:
        """A local path inside the node as the node names it (`.../root/home/cc/x` -> `/home/cc/x`)."""
        text = str(local)
        root = str(self.root)
        if text == root:
            return "/"
        if text.startswith(root + os.sep):
            return "/" + text[len(root) + 1:]
        return text

    def unroot(self, text: str) -> str:
        """`text` with every mention of this machine's node folder replaced by the node's own paths."""
        return text.replace(str(self.root) + "/", "/").replace(str(self._root_real) + "/", "/")

    # --- keys ---------------------------------------------------------------------------------------

    def authorizes(self, key: paramiko.PKey) -> bool:
        line = self.public_key
        if not line:  # no key recorded at boot (yet): what the world holds now
            with self.world.lock:
                server = self.world.data["servers"].get(self.server_id) or {}
                pair = self.world.data["keypairs"].get(server.get("key_name") or "")
                line = (pair or {}).get("public_key")
        parts = _key_line_parts(line or "")
        return parts is not None and key.asbytes() == parts[1]

    # --- the record ---------------------------------------------------------------------------------

    def begin(self, command: str, peer: str = "") -> dict:
        with self._record_lock:
            entry = {"number": len(self.commands) + 1, "command": command, "at": self.world.now().isoformat(),
                     "from": peer, "exit_status": None, "seconds": None, "answer": None}
            self.commands.append(entry)
            self._log(f"[{entry['number']}] {entry['at']} $ {_one_line(command)}")
        return entry

    def end(self, entry: dict, status: int, seconds: float, answer: str | None) -> None:
        with self._record_lock:
            entry.update(exit_status=status, seconds=round(seconds, 3), answer=answer)
            self._log(f"[{entry['number']}] exit {status} after {seconds:.1f} s ({answer or 'no answer'})")

    def _log(self, line: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "commands.log", "a") as out:
            out.write(line + "\n")

    def note(self, what: str) -> None:
        """An event in the twin's record (refused logins, dropped connections)."""
        with self.world.lock:
            self.world.record("node", f"{self.name} ({self.address}): {what}")

    # --- what runs on it ----------------------------------------------------------------------------

    def spawn(self, command: list[str], **kwargs) -> subprocess.Popen:
        """Start a process that belongs to this node (stopped with it), in its own session."""
        process = subprocess.Popen(command, start_new_session=True, **kwargs)
        with self.lock:
            self.processes = [p for p in self.processes if p.poll() is None] + [process]
        return process

    def shutdown(self) -> None:
        """Stop everything that runs on the node (its stack, its notebook runs), as powering it off would."""
        from chi_helpers.twin import node_commands

        node_commands.shutdown(self)

    def describe(self) -> dict:
        return {"server_id": self.server_id, "name": self.name, "address": self.address,
                "node_type": self.hardware.node_type, "host": self.hardware.host_name,
                "gpus": f"{self.hardware.gpus} x {self.hardware.gpu_model}" if self.hardware.gpus else "none",
                "image": self.hardware.image, "folder": str(self.folder), "commands": len(self.commands),
                "running": [p.pid for p in self.processes if p.poll() is None], "gone": self.gone}


def _one_line(command: str) -> str:
    return command.replace("\\", "\\\\").replace("\n", "\\n")


# --- SFTP, rooted in the node's folder ---------------------------------------------------------------

def _sftp_errors(method):
    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except PermissionError:
            return SFTP_PERMISSION_DENIED
        except OSError as error:
            return SFTPServer.convert_errno(error.errno)
    guarded.__name__ = method.__name__
    return guarded


class NodeFile(SFTPHandle):
    def stat(self):
        try:
            return SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))
        except OSError as error:
            return SFTPServer.convert_errno(error.errno)

    def chattr(self, attr):
        try:
            _set_attributes(self.filename, attr)
            return SFTP_OK
        except OSError as error:
            return SFTPServer.convert_errno(error.errno)


def _set_attributes(local: str | os.PathLike, attr) -> None:
    """Modes and times only: files on the node belong to whoever the twin runs as."""
    if attr is None:
        return
    if attr._flags & attr.FLAG_PERMISSIONS:
        os.chmod(local, attr.st_mode & 0o7777)
    if attr._flags & attr.FLAG_AMTIME:
        os.utime(local, (attr.st_atime, attr.st_mtime))
    if attr._flags & attr.FLAG_SIZE:
        with open(local, "r+b") as handle:
            handle.truncate(attr.st_size)


class NodeSFTP(SFTPServerInterface):
    """The node's file system over SFTP: `/` is `nodes/<server id>/root/`, the session starts in /home/cc."""

    def __init__(self, server, node: Node, *args, **kwargs):
        super().__init__(server, *args, **kwargs)
        self.node = node

    def _local(self, path: str) -> Path:
        return self.node.path(path)

    def canonicalize(self, path):
        return self.node.virtual(path)

    @_sftp_errors
    def list_folder(self, path):
        folder = self._local(path)
        answer = []
        for name in sorted(os.listdir(folder)):
            attributes = SFTPAttributes.from_stat(os.lstat(folder / name))
            attributes.filename = name
            answer.append(attributes)
        return answer

    @_sftp_errors
    def stat(self, path):
        return SFTPAttributes.from_stat(os.stat(self._local(path)))

    @_sftp_errors
    def lstat(self, path):
        return SFTPAttributes.from_stat(os.lstat(self._local(path)))

    @_sftp_errors
    def open(self, path, flags, attr):
        local = self._local(path)
        mode = getattr(attr, "st_mode", None) if attr is not None else None
        descriptor = os.open(local, flags | getattr(os, "O_NOFOLLOW", 0), (mode & 0o777) if mode else 0o666)
        if (flags & os.O_CREAT) and attr is not None:
            attr._flags &= ~attr.FLAG_PERMISSIONS
            _set_attributes(local, attr)
        if flags & os.O_WRONLY:
            kind = "ab" if flags & os.O_APPEND else "wb"
        elif flags & os.O_RDWR:
            kind = "a+b" if flags & os.O_APPEND else "r+b"
        else:
            kind = "rb"
        handle = NodeFile(flags)
        handle.filename = str(local)
        handle.readfile = handle.writefile = os.fdopen(descriptor, kind)
        return handle

    @_sftp_errors
    def remove(self, path):
        os.remove(self._local(path))
        return SFTP_OK

    @_sftp_errors
    def rename(self, oldpath, newpath):
        old, new = self._local(oldpath), self._local(newpath)
        if os.path.lexists(new):
            return SFTP_FAILURE  # SFTP v3 rename never overwrites
        os.rename(old, new)
        return SFTP_OK

    @_sftp_errors
    def posix_rename(self, oldpath, newpath):
        os.replace(self._local(oldpath), self._local(newpath))
        return SFTP_OK

    @_sftp_errors
    def mkdir(self, path, attr):
        local = self._local(path)
        os.mkdir(local)
        if attr is not None:
            _set_attributes(local, attr)
        return SFTP_OK

    @_sftp_errors
    def rmdir(self, path):
        os.rmdir(self._local(path))
        return SFTP_OK

    @_sftp_errors
    def chattr(self, path, attr):
        _set_attributes(self._local(path), attr)
        return SFTP_OK

    def symlink(self, target_path, path):
        return SFTP_OP_UNSUPPORTED  # a link could lead out of the node

    def readlink(self, path):
        return SFTP_OP_UNSUPPORTED


# --- SSH -------------------------------------------------------------------------------------------

class NodeServer(paramiko.ServerInterface):
    """sshd's decisions for one connection."""

    def __init__(self, listener: "Listener", peer: str):
        self.listener = listener
        self.node = listener.node
        self.peer = peer

    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_none(self, username):
        return paramiko.AUTH_FAILED

    def check_auth_publickey(self, username, key):
        if username == USER and self.node.authorizes(key):
            return paramiko.AUTH_SUCCESSFUL
        self.node.note(f"refused SSH login from {self.peer}: publickey for {username} "  # as sshd's log says
                       f"({key.get_name()} {key.fingerprint}); only user {USER} with the server's key pair")
        return paramiko.AUTH_FAILED

    def check_auth_password(self, username, password):
        self.node.note(f"refused SSH login from {self.peer}: password for {username} (public keys only)")
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind, chanid):
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel, command):
        text = command.decode("utf-8", "replace") if isinstance(command, bytes) else str(command)
        self.listener.execute(channel, text, self.peer)
        return True

    def check_channel_pty_request(self, channel, term, width, height, pixelwidth, pixelheight, modes):
        return True

    def check_channel_shell_request(self, channel):
        return False  # no interactive shell on the twin: commands only

    def check_channel_env_request(self, channel, name, value):
        return name == "LANG" or name.startswith("LC_")  # Ubuntu's sshd: AcceptEnv LANG LC_*

    def check_port_forward_request(self, address, port):
        return False

    def check_channel_direct_tcpip_request(self, chanid, origin, destination):
        # `ssh -L`: Ubuntu's sshd allows it (AllowTcpForwarding yes). The node's loopback is where its
        # own services listen in the twin's copy, its address; nothing else is reached from here.
        host, port = destination
        if host not in ("127.0.0.1", "localhost", "::1"):
            return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        self.listener.forwards[chanid] = (self.node.address, port)
        return paramiko.OPEN_SUCCEEDED


class Listener:
    """An SSH server on one (address, 22), for one node."""

    def __init__(self, nodes: "Nodes", node: Node, address: str):
        self.nodes = nodes
        self.node = node
        self.address = address
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._transports: set[paramiko.Transport] = set()
        self._threads: set[threading.Thread] = set()
        self._barrier = threading.Lock()
        self.forwards: dict[int, tuple[str, int]] = {}  # channel id -> where an `ssh -L` channel leads
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((address, SSH_PORT))
            self.sock.listen(16)
            self.sock.settimeout(0.2)
        except OSError:
            self.sock.close()
            raise
        self.thread = threading.Thread(target=self._accept, name=f"twin-ssh-{address}", daemon=True)
        self.thread.start()

    def _start(self, target, *args, name: str) -> None:
        thread = threading.Thread(target=self._tracked, args=(target, *args), name=name, daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _tracked(self, target, *args) -> None:
        try:
            target(*args)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, peer = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            if self.nodes.world.take_fault("ssh-drops"):
                self.node.note(f"dropped the SSH connection from {peer[0]} (fault ssh-drops)")
                _drop(connection)
                continue
            self._start(self._serve, connection, f"{peer[0]}:{peer[1]}", name=f"twin-ssh-{self.address}-conn")

    def _serve(self, connection: socket.socket, peer: str) -> None:
        connection.settimeout(None)
        # A port check (python-chi's check_connectivity) connects and closes without a word: no SSH then.
        readable, _, _ = select.select([connection], [], [], 2.0)
        try:
            if readable and not connection.recv(1, socket.MSG_PEEK):
                connection.close()
                return
        except OSError:
            connection.close()
            return
        transport = paramiko.Transport(connection)
        transport.set_log_channel(LOG_CHANNEL)
        transport.local_version = BANNER
        transport.add_server_key(self.nodes.host_key)
        transport.set_subsystem_handler("sftp", SFTPServer, NodeSFTP, self.node)
        with self._lock:
            if self._stopping.is_set():
                transport.close()
                return
            self._transports = {t for t in self._transports if t.is_active()} | {transport}
        try:
            transport.start_server(server=NodeServer(self, peer))
        except (paramiko.SSHException, EOFError, OSError):
            transport.close()
            return
        # Channels the client opens land in the transport's queue: sessions are served by the exec
        # callback already; a forwarded one is joined to a connection on the node.
        while transport.is_active() and not self._stopping.is_set():
            channel = transport.accept(timeout=0.5)
            if channel is not None and channel.get_id() in self.forwards:
                self._start(self._forward, channel, self.forwards.pop(channel.get_id()), name="twin-ssh-forward")

    @staticmethod
    def _forward(channel: paramiko.Channel, destination: tuple[str, int]) -> None:
        try:
            target = socket.create_connection(destination, timeout=10)
        except OSError:
            channel.close()  # sshd: "connect failed: Connection refused", and the channel closes
            return
        try:
            while True:
                readable, _, _ = select.select([channel, target], [], [], 1.0)
                if channel in readable:
                    data = channel.recv(65536)
                    if not data:
                        break
                    target.sendall(data)
                if target in readable:
                    data = target.recv(65536)
                    if not data:
                        break
                    channel.sendall(data)
                if channel.closed:
                    break
        except (OSError, EOFError, paramiko.SSHException):
            pass
        finally:
            target.close()
            channel.close()

    def execute(self, channel: paramiko.Channel, command: str, peer: str) -> None:
        self._start(self._run, channel, command, peer, name=f"twin-node-{self.node.name}-command")

    def _run(self, channel: paramiko.Channel, command: str, peer: str) -> None:
        from chi_helpers.twin import node_commands

        def send(text: str, stderr: bool = False) -> None:
            if not text:
                return
            try:
                (channel.sendall_stderr if stderr else channel.sendall)(text.encode("utf-8", "replace"))
            except (OSError, EOFError, paramiko.SSHException):
                pass  # the client went away: the command goes on, as it would on the node

        # paramiko replies to the exec request only after check_channel_exec_request returns: a command
        # that ends at once could close the channel before that reply, and the client would see "Channel
        # closed". A global request is a barrier: its reply is read by the transport's thread only once
        # that thread has sent the exec request's reply.
        try:
            with self._barrier:
                channel.get_transport().global_request("keepalive@openssh.com", wait=True)
        except (OSError, EOFError, paramiko.SSHException):
            pass
        entry = self.node.begin(command, peer)
        start = time.monotonic()
        try:
            status, _, _, answer = node_commands.answer(self.node, command, out=send,
                                                       err=lambda text: send(text, True))
        except Exception as error:  # a bug in the twin: say so on stderr, as a crashing tool would
            import traceback

            send(f"twin node: internal error answering {command!r}: {type(error).__name__}: {error}\n"
                 f"{traceback.format_exc()}", True)
            status, answer = 255, "internal error"
        self.node.end(entry, status, time.monotonic() - start, answer)
        try:
            channel.send_exit_status(status)
            channel.close()
        except (OSError, EOFError, paramiko.SSHException):
            pass

    def stop(self) -> None:
        self._stopping.set()
        try:
            self.sock.close()
        except OSError:
            pass
        self.thread.join(timeout=5)
        with self._lock:
            transports = list(self._transports)
            self._transports.clear()
        for transport in transports:
            transport.close()
        for transport in transports:  # close() leaves its thread to notice within a socket timeout
            if transport is not threading.current_thread():
                transport.join(timeout=5)

    def join(self, timeout: float = 10) -> None:
        """Wait for this listener's connection and command threads (commands end once their processes do)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                threads = [t for t in self._threads if t.is_alive()]
            if not threads or time.monotonic() > deadline:
                return
            threads[0].join(timeout=max(0.0, min(0.5, deadline - time.monotonic())))


def _drop(connection: socket.socket) -> None:
    """Close at once, with a reset rather than a polite FIN, as a connection cut by the network reads."""
    try:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    connection.close()


def _host_key(folder: Path) -> paramiko.PKey:
    """The twin's one SSH host key (an Ed25519 key, as Ubuntu's sshd offers first), made on first use."""
    path = folder / "host_key"
    if not path.exists():
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        folder.mkdir(parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
        temporary = path.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(pem)
        os.replace(temporary, path)
    return paramiko.Ed25519Key(filename=str(path))


class Nodes:
    """Every node of the world, with an SSH listener on each bound floating IP."""

    def __init__(self, world):
        self.world = world
        self.folder = Path(world.state_dir) / "nodes"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.host_key = _host_key(self.folder)
        self.nodes: dict[str, Node] = {}  # server id -> node (kept after its listener stops, for the record)
        self.listeners: dict[str, Listener] = {}  # address -> listener
        self._lock = threading.RLock()
        self._stopped = False
        self._bind_failures: dict[str, str] = {}

    def _wanted(self) -> tuple[dict[str, str], dict[str, dict], set[str]]:
        """(address -> server id, server id -> what a new node needs, ids of servers that exist)."""
        world = self.world
        with world.lock:
            servers, ports = world.data["servers"], world.data["ports"]
            wanted: dict[str, str] = {}
            for fip in sorted(world.data["floatingips"].values(), key=lambda f: f.get("floating_ip_address") or ""):
                port = ports.get(fip.get("port_id") or "")
                address = fip.get("floating_ip_address")
                server = servers.get((port or {}).get("device_id") or "")
                if port and address and server and server.get("status") == "ACTIVE":
                    wanted[address] = server["id"]
            info = {}
            for server_id in set(wanted.values()):
                server = servers[server_id]
                pair = world.data["keypairs"].get(server.get("key_name") or "") or {}
                info[server_id] = {"name": server.get("name") or server_id, "public_key": pair.get("public_key"),
                                   "hardware": hardware_of(world, server)}
            existing = {i for i, s in servers.items() if str(s.get("status", "")).upper() not in GONE_STATUSES}
        return wanted, info, existing

    def sync(self) -> None:
        """Make the listeners match the world (called every 0.3 s by the twin)."""
        with self._lock:
            if self._stopped:
                return
            wanted, info, existing = self._wanted()
            for address, listener in list(self.listeners.items()):
                if wanted.get(address) != listener.node.server_id:
                    listener.stop()
                    del self.listeners[address]
            for server_id, node in self.nodes.items():
                if server_id not in existing and not node.gone:  # deleted: what ran on it stops with it
                    node.gone = True
                    node.shutdown()
            addresses: dict[str, list[str]] = {}
            for address, server_id in wanted.items():
                addresses.setdefault(server_id, []).append(address)
            for server_id, bound in addresses.items():
                node = self.nodes.get(server_id)
                if node is None:
                    details = info[server_id]
                    node = self.nodes[server_id] = Node(self.world, server_id, details["name"], bound[0],
                                                        details["public_key"], details["hardware"],
                                                        self.folder / server_id)
                if node.address not in bound:
                    node.address = bound[0]
                for address in bound:
                    if address in self.listeners:
                        continue
                    try:
                        self.listeners[address] = Listener(self, node, address)
                        self._bind_failures.pop(address, None)
                    except OSError as error:
                        if self._bind_failures.get(address) != str(error):  # say it once, retry each sync
                            self._bind_failures[address] = str(error)
                            with self.world.lock:
                                self.world.record("node", f"cannot listen on {address}:{SSH_PORT} for "
                                                          f"{node.name}: {error}")

    def node(self, server_id: str) -> Node | None:
        return self.nodes.get(server_id)

    def by_address(self, address: str) -> Node | None:
        listener = self.listeners.get(address)
        if listener:
            return listener.node
        return next((n for n in self.nodes.values() if n.address == address), None)

    def commands(self, server_id: str) -> list[dict]:
        """Every command the node was asked, in order (copies)."""
        node = self.nodes.get(server_id)
        return [dict(entry) for entry in node.commands] if node else []

    def status(self) -> list[dict]:
        with self._lock:
            return [{**node.describe(), "listening": sorted(a for a, l in self.listeners.items() if l.node is node)}
                    for node in self.nodes.values()]

    def stop(self) -> None:
        """Stop every listener and everything the nodes started; nothing is left running afterwards."""
        with self._lock:
            self._stopped = True
            listeners = list(self.listeners.values())
            self.listeners.clear()
            nodes = list(self.nodes.values())
        for listener in listeners:
            listener.stop()
        for node in nodes:
            node.shutdown()
        for listener in listeners:
            listener.join()
