"""Joining a multi-process JAX runtime, and what only one process of it does.

A run across hosts is one program started on every host: each process joins the
``jax.distributed`` runtime (:func:`initialize`), after which ``jax.devices()`` lists the
devices of every process and one mesh spans them all
(:mod:`digits_jax.training.sharding`). Every process computes every step; files other
than checkpoints are written by process 0 alone (:func:`is_writer`), and the processes
wait for each other (:func:`barrier`) where one must see what another wrote. With one
process nothing here changes anything.

A process that dies (a node lost, an OOM kill) would leave the others waiting inside
JAX's runtime until it aborts them. A watchdog (:class:`PeerWatchdog`) watches the peers
instead: each process keeps a connection to process 0 and sends a heartbeat every
second; when a peer's connection closes, or stays silent for the timeout, every
surviving process writes an ``error:`` line naming it and exits with
:data:`LOST_PEER_EXIT`.
"""

from __future__ import annotations

import logging
import os
import re
import selectors
import socket
import sys
import threading
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from digits_jax.config import ConfigError

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
# The exit status of a process that stops because a peer was lost (docs/scaling.md).
LOST_PEER_EXIT = 3


class DistributedError(RuntimeError):
  """The process could not join the multi-process runtime."""


# Environment variables by which a cluster announces itself, as JAX's own detection reads
# them (jax.distributed.initialize fills in the address, count and id from the same).
CLUSTER_ENV = {
  "SLURM": "SLURM_JOB_ID",
  "Open MPI": "OMPI_MCA_orte_hnp_uri",
  "Cloud TPU (GKE)": "TPU_WORKER_HOSTNAMES",
}


def detected_cluster() -> str | None:
  """The cluster whose environment variables are set (SLURM, Open MPI, ...), or ``None``.

  Read from :data:`CLUSTER_ENV`, public variables, rather than JAX's private detection; a
  cluster not listed (a Cloud TPU VM outside GKE, say) joins with ``--distributed=on``.
  """
  for name, variable in CLUSTER_ENV.items():
    if os.environ.get(variable):
      return name
  return None


def _check_arguments(
  coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> None:
  if coordinator_address is not None and not re.fullmatch(r".+:\d+", coordinator_address):
    raise ConfigError(
      f"--coordinator_address={coordinator_address!r} is not HOST:PORT; give process 0's "
      "host and a free port, e.g. --coordinator_address=10.0.0.1:1234"
    )
  if num_processes is not None and num_processes < 1:
    raise ConfigError(f"--num_processes={num_processes}: a run needs at least one process")
  if process_id is not None and process_id < 0:
    raise ConfigError(f"--process_id={process_id}: process ids start at 0")
  if num_processes is not None and process_id is not None and process_id >= num_processes:
    raise ConfigError(
      f"--process_id={process_id} is out of range for --num_processes={num_processes}: "
      f"give each process its own id from 0 to {num_processes - 1}"
    )


def _host_port(address: str) -> tuple[str, int]:
  host, port = address.rsplit(":", 1)
  return host.strip("[]"), int(port)


def _check_coordinator(address: str, process_id: int | None, timeout_s: float) -> None:
  """Fails with a clear message where JAX's runtime would abort the process instead.

  Process 0 must be able to listen on the port; any other process waits (up to
  ``timeout_s``) for something to answer at ``address``.
  """
  host, port = _host_port(address)
  if process_id == 0:
    try:
      with socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True):
        pass
    except (OSError, ValueError) as e:
      raise DistributedError(
        f"process 0 cannot listen on port {port} of --coordinator_address={address} ({e}); "
        "choose a free port, the same for every process"
      ) from e
    return
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host, port), timeout=1.0):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise DistributedError(
          f"nothing answers at --coordinator_address={address} after {timeout_s:g} s ({e}); "
          "start process 0 with the same address (its host and a free port), check that "
          "this host can reach it, or raise --distributed_timeout"
        ) from e
      time.sleep(0.2)


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  mode: str = "auto",
  timeout_s: int = 60,
) -> bool:
  """Joins this process to a ``jax.distributed`` runtime when asked to; call before any JAX work.

  Args:
    coordinator_address: ``HOST:PORT`` of process 0, where the runtime's coordinator runs.
    num_processes: how many processes the run has.
    process_id: this process's id, 0 to ``num_processes - 1``.
    mode: ``auto`` joins when any of the three is given or JAX detects a cluster
      (:func:`detected_cluster`), which then supplies what is not given; ``on`` always
      joins; ``off`` never does (and refuses the three).
    timeout_s: how long to wait for every process to join before failing, and, once
      joined, for a silent peer before stopping (:class:`PeerWatchdog`).

  Returns:
    Whether this process is now part of a multi-process runtime.

  Raises:
    ConfigError: inconsistent arguments (a process id out of range, an address that is
      not ``HOST:PORT``, an unknown mode, arguments missing with no cluster to supply them).
    DistributedError: the runtime could not be joined within ``timeout_s``.
  """
  if mode not in MODES:
    raise ConfigError(f"distributed mode must be one of {', '.join(MODES)}, got {mode!r}")
  given = {
    "--coordinator_address": coordinator_address,
    "--num_processes": num_processes,
    "--process_id": process_id,
  }
  named = [k for k, v in given.items() if v is not None]
  if mode == "off":
    if named:
      raise ConfigError(f"{', '.join(named)} given with --distributed=off; drop one or the other")
    return False
  if jax.distributed.is_initialized():
    return True
  cluster = detected_cluster()
  if mode == "auto" and not named and cluster is None:
    return False
  _check_arguments(coordinator_address, num_processes, process_id)
  missing = [k for k, v in given.items() if v is None]
  if missing and cluster is None:
    raise ConfigError(
      f"a multi-process run needs {', '.join(missing)} as well: JAX detects no cluster "
      "(SLURM, Cloud TPU, Open MPI, ...) here to supply them"
    )
  if timeout_s < 1:
    raise ConfigError(f"--distributed_timeout={timeout_s}: give at least 1 second")
  # Collectives between CPU processes need an implementation; gloo ships with jaxlib.
  if "jax_cpu_collectives_implementation" in jax.config.values:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  where = coordinator_address or f"the coordinator {cluster} names"
  if coordinator_address is not None:
    _check_coordinator(coordinator_address, process_id, timeout_s)
  # JAX's runtime aborts the process (no exception) when the others do not all join in
  # time; this line says what it was waiting for.
  log.info(
    "process %s of %s: joining the run's processes at %s (waiting up to %d s)",
    "?" if process_id is None else process_id,
    "?" if num_processes is None else num_processes,
    where,
    timeout_s,
  )
  try:
    jax.distributed.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
      initialization_timeout=timeout_s,
      # The watchdog below reports a lost peer first; JAX's runtime aborts only later.
      heartbeat_timeout_seconds=max(100, 2 * timeout_s + 30),
    )
  except Exception as e:  # jaxlib raises its own runtime errors for unreachable peers
    text = " ".join(str(e).split())[:300]
    raise DistributedError(
      f"could not join the run's processes at {where} within {timeout_s} s "
      f"({type(e).__name__}: {text}); check that every process was started with the same "
      "--coordinator_address and --num_processes and its own --process_id, that process 0 "
      "runs and its address is reachable from this host, or raise --distributed_timeout"
    ) from e
  log.info(
    "process %d of %d joined the runtime at %s; %d devices in all, %d here",
    jax.process_index(),
    jax.process_count(),
    where,
    jax.device_count(),
    jax.local_device_count(),
  )
  if jax.process_count() > 1:
    coordinator_host = None if coordinator_address is None else _host_port(coordinator_address)[0]
    PeerWatchdog.start(coordinator_host, timeout_s)
  return True


def is_writer() -> bool:
  """Whether this process writes the run's files: process 0 (the only one, usually)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process has reached the barrier ``name`` (nothing with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _broadcast_text(text: str, size: int = 256) -> str:
  """Process 0's ``text`` on every process (at most ``size`` bytes of UTF-8)."""
  data = np.zeros(size, np.uint8)
  raw = text.encode()[:size]
  data[: len(raw)] = np.frombuffer(raw, np.uint8)
  out = np.asarray(multihost_utils.broadcast_one_to_all(data)).astype(np.uint8)
  return out.tobytes().rstrip(b"\0").decode()


class PeerWatchdog:
  """Notices a lost peer process and ends this one with an ``error:`` line.

  Process 0 listens on a free port (told to the others through a JAX broadcast); every
  other process connects to it. Both ends send a heartbeat line every second; a peer whose
  connection closes, or that sends nothing for ``timeout_s``, is lost. Process 0 then
  tells the others which process was lost (``L <id>``) before it exits, so every survivor
  names the same one. A process whose main thread has ended reports nothing: it is exiting
  anyway. One that ends normally goes on sending heartbeats while JAX's runtime shuts
  down, which waits for every process to end, so its peers never take it for lost.

  Runs in a daemon thread; one per process.
  """

  _instance: PeerWatchdog | None = None

  def __init__(self, index: int, count: int, timeout_s: float, interval_s: float = 1.0):
    self.index = index
    self.count = count
    self.timeout_s = timeout_s
    self.interval_s = min(interval_s, timeout_s / 4)
    self.selector = selectors.DefaultSelector()
    self.peers: dict[socket.socket, list] = {}  # socket -> [peer id, last seen, unread bytes]
    self.started = time.monotonic()

  @classmethod
  def start(cls, coordinator_host: str | None, timeout_s: float) -> PeerWatchdog:
    """Connects this process to its peers and starts watching them (once per process)."""
    if cls._instance is not None:
      return cls._instance
    dog = cls(jax.process_index(), jax.process_count(), timeout_s)
    listener = None
    port = 0
    if dog.index == 0:
      try:
        listener = socket.create_server(("", 0), family=socket.AF_INET6, dualstack_ipv6=True)
      except (OSError, ValueError):
        listener = socket.create_server(("", 0))
      port = listener.getsockname()[1]
    address = _broadcast_text(f"{coordinator_host or socket.gethostname()} {port}")
    host, port_text = address.rsplit(" ", 1)
    if listener is not None:
      listener.setblocking(False)
      dog.selector.register(listener, selectors.EVENT_READ, "listener")
    else:
      try:
        conn = socket.create_connection((host, int(port_text)), timeout=timeout_s)
      except OSError as e:
        raise DistributedError(
          f"process {dog.index} cannot reach process 0's watchdog at {host}:{port_text} ({e}); "
          "check that the hosts can reach each other on any port"
        ) from e
      conn.sendall(f"{dog.index}\n".encode())
      dog._add(conn, 0)
    cls._instance = dog
    threading.Thread(target=dog._run, name="peer-watchdog", daemon=True).start()
    return dog

  def _add(self, conn: socket.socket, peer: int | None) -> None:
    conn.setblocking(False)
    self.peers[conn] = [peer, time.monotonic(), b""]
    self.selector.register(conn, selectors.EVENT_READ, "peer")

  def _send_all(self, line: str) -> None:
    for conn in list(self.peers):
      try:
        conn.sendall(line.encode())
      except OSError:
        pass  # its loss shows on the reading side

  def _run(self) -> None:
    next_beat = 0.0
    while True:
      now = time.monotonic()
      if now >= next_beat:
        self._send_all("h\n")
        next_beat = now + self.interval_s
      for key, _ in self.selector.select(timeout=self.interval_s / 2):
        if key.data == "listener":
          try:
            conn, _ = key.fileobj.accept()
          except OSError:
            continue
          self._add(conn, None)
        else:
          self._read(key.fileobj)
      now = time.monotonic()
      for state in list(self.peers.values()):
        if now - state[1] > self.timeout_s:
          self._lost(state[0], f"sent nothing for {self.timeout_s:g} s")
      if self.index == 0:
        known = {state[0] for state in self.peers.values()}
        missing = [i for i in range(1, self.count) if i not in known]
        if missing and now - self.started > self.timeout_s:
          self._lost(missing[0], f"did not connect within {self.timeout_s:g} s")

  def _read(self, conn: socket.socket) -> None:
    state = self.peers[conn]
    try:
      data = conn.recv(4096)
    except BlockingIOError:
      return
    except OSError:
      data = b""
    if not data:
      self.selector.unregister(conn)
      del self.peers[conn]
      conn.close()
      self._lost(state[0], "its connection closed")
      return
    state[1] = time.monotonic()
    state[2] += data
    *lines, state[2] = state[2].split(b"\n")
    for line in lines:
      text = line.decode(errors="replace").strip()
      if state[0] is None:  # the first line of a new connection: the peer's id
        state[0] = int(text) if text.isdigit() else -1
      elif text.startswith("L "):
        self._lost(int(text[2:]), "process 0 lost it", relayed=True)

  def _lost(self, peer: int | None, how: str, relayed: bool = False) -> None:
    if not threading.main_thread().is_alive():
      return  # this process is exiting anyway
    if peer is None or peer < 0:
      return  # a connection that never said who it is: not one of ours
    if self.index == 0 and not relayed:
      self._send_all(f"L {peer}\n")
    message = (
      f"error: process {peer} of {self.count} was lost ({how}); process {self.index} stops "
      f"too. Start all processes again: the run resumes from its last checkpoint"
    )
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except Exception:  # a closed or broken stream must not keep this process alive
        pass
    try:
      # JAX's coordination agent notices the same loss on its own threads and logs it
      # (UNAVAILABLE, "Polled an error ..."); those lines, written between this message
      # and the exit, would bury it. Standard error goes to /dev/null for every other
      # thread first, so the message is the last line a user reads.
      saved = os.dup(2)
      null = os.open(os.devnull, os.O_WRONLY)
      os.dup2(null, 2)
      os.write(saved, (message + "\n").encode())
    finally:
      os._exit(LOST_PEER_EXIT)
