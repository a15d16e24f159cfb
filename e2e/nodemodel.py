"""A model of one GPU node: the kubelet and the NVIDIA components, as the rendered pod specs make them behave.

Test infrastructure, pure (no API calls): ``NodeModel.step`` takes the node's operand pods and what it reads from
the cluster (``World``) and returns the status each pod has now, the events the kubelet posts, and what the node
advertises.  It never looks at pod, container or template names: every decision comes from the pod spec, with
container paths resolved to host paths through the pod's ``hostPath`` volumes (a path that no hostPath volume
holds lives in the container only, and the host never sees it).

The host keeps files (``/run/nvidia/validations/*`` and any other host path), the runtime handlers configured in
its container runtime (``runc`` at first) and, on cri-o, OCI hooks.  The kubelet part:

* ``runtimeClassName``: the RuntimeClass's handler must be configured on the node, or the pod stays Pending
  (containers waiting ``ContainerCreating``, ``PodInitializing`` with init containers, as the kubelet reports)
  and one Warning event ``FailedCreatePodSandBox`` says so with containerd's message.
* Init containers run in order, each blocking the next; a script loop ``until [ -f PATH ]`` waits for the file.
  k8s-driver-manager (``driver-manager uninstall_driver``), given the node's labels: with a driver loaded (a driver
  container ran here since the last unload) it pauses the operands' deploy labels (``StepResult.labels``, which
  the simulator writes), waits until their pods are gone, unloads the driver and sets the labels back; with none
  loaded it writes them back as they are.  config-manager (``config-manager-init``) picks the sharing config for
  the node's label from the ConfigMap mounted at ``CONFIG_FILE_SRCDIR`` and fails when it finds none to pick (no
  keys, a named key missing).  Other init containers complete at once.
* Main containers then run (Ready without probes; a script's wait loops gate only what it starts next, once);
  one whose ``startupProbe`` script writes files (the driver's probe writes ``.driver-ctr-ready``) is started
  after the node's driver delay (or crash-loops on a crash-looping node) and writes them then, with what its
  ``echo``/``printf``/here-documents put there (empty when the model cannot tell).  A ``preStop``
  script's ``rm`` runs when the pod goes.  A pod whose ConfigMap volume is missing does not start (FailedMount),
  nor one with a hostPath volume of type ``Directory``, ``File``, ``Socket``, ... whose path the host lacks (the
  host starts with NODE_PATHS; DirectoryOrCreate, FileOrCreate and an untyped hostPath create theirs).

The components (facts from upstream's sources, named in each rule):

* ``nvidia-validator`` (``cmd/nvidia-validator``; by command word, component from ``COMPONENT`` or ``-c``; image
  user 1000 and ``NVIDIA_VISIBLE_DEVICES=void``, so writing a status file needs ``runAsUser: 0``):
  ``driver`` runs ``nvidia-smi``, so its container must be privileged (to open ``/dev/nvidia*``); it passes with
  a host driver (``nvidia-smi`` under ``/host``) or, when a DaemonSet labelled
  ``app.kubernetes.io/component=nvidia-driver`` owned by a ClusterPolicy/NVIDIADriver exists, once
  ``.driver-ctr-ready`` is there, and the driver root (``/run/nvidia/driver``) holds the driver; then
  ``.driver-ctr-ready`` must be a YAML map of booleans, and each feature it enables (``GDS_ENABLED``,
  ``GDRCOPY_ENABLED``, ``GPU_DIRECT_RDMA_ENABLED``) needs its kernel module loaded (the ``nvidia-fs``,
  ``gdrcopy``, ``nvidia-peermem`` components, each writing its status file); it creates the ``/dev/char`` links
  through ``/host-dev-char`` and writes ``driver-ready``.  ``toolkit`` runs ``nvidia-smi``
  in its own container: a runtime that injects GPUs (nvidia handler, or nvidia as default runtime, or cri-o's
  hook) and ``NVIDIA_VISIBLE_DEVICES=all``; writes ``toolkit-ready``.  ``cuda`` creates a workload pod from
  ``VALIDATOR_IMAGE``/``VALIDATOR_IMAGE_PULL_POLICY``/``VALIDATOR_RUNTIME_CLASS`` (validated by the API server
  through ``World.dry_run``), which must get GPUs; writes ``cuda-ready``.  ``plugin`` waits for
  ``nvidia.com/gpu`` on the node (and runs a workload pod unless ``WITH_WORKLOAD=false``); writes
  ``plugin-ready``.  ``metrics`` serves (needs ``METRICS_PORT`` and ``NODE_NAME``).  ``WITH_WAIT=true`` waits,
  otherwise an unmet check fails the container (CrashLoopBackOff, the error as its last termination message).
  A pod's init containers run once (the kubelet re-runs them only for a new sandbox): a validator or toolkit
  pod that has passed its driver check stays Running when the driver pod goes or crash-loops; a new driver
  pod's manager replaces it (as above).
* Driver container (``nvidia-driver init``): privileged (it loads kernel modules; else CrashLoopBackOff); while
  started, the driver (and its ``usr/src``) lives under ``/run/nvidia/driver`` (the host path its mounts give),
  on the host only when the mount it is under has ``mountPropagation: Bidirectional`` (it is an rbind made in the
  container; otherwise the container runs and the host's directory stays empty).
  Its sidecars ``nvidia-gds-driver install``, ``nvidia-gdrcopy-driver install`` and ``nvidia-driver
  reload_nvidia_peermem`` load nvidia_fs, gdrdrv and nvidia_peermem once their waits pass (privileged too); the
  driver manager's unload takes them with it.
* Toolkit installer (``nvidia-ctk-installer`` v1.20 env: ``RUNTIME``, ``RUNTIME_CONFIG``/``CONTAINERD_CONFIG``,
  ``RUNTIME_DROP_IN_CONFIG`` (+ ``_HOST_PATH``), ``RUNTIME_SOCKET``/``CONTAINERD_SOCKET``,
  ``CONTAINERD_RUNTIME_CLASS``/``NVIDIA_RUNTIME_NAME``, ``NVIDIA_RUNTIME_SET_AS_DEFAULT``, ``CRIO_CONFIG_MODE``,
  ``NVIDIA_DRIVER_ROOT``): once its script's waits pass, it adds the handlers ``nvidia``, ``nvidia-cdi`` and
  ``nvidia-legacy`` (driver root from its environment; a sourced file counts only under ``set -o allexport``)
  only when the config it writes resolves to the node runtime's real config and ``RUNTIME`` is the node's
  runtime; otherwise nothing changes on the host and the container just runs.  When the pod goes, it removes them.
  The runtime loads them only when restarted (``RUNTIME_RESTART_MODE``; ``none`` leaves them unloaded):
  ``systemd`` (cri-o's default) chroots to the host root at ``HOST_ROOT_MOUNT``; ``signal`` (containerd's
  default; cri-o refuses it) sends SIGHUP to the socket peer's pid, which the pod sees only with ``hostPID``
  (else the installer signals itself and exits 0: CrashLoopBackOff, no handler).  Its handlers run the binaries
  it installs under ``TOOLKIT_INSTALL_DIR``/``ROOT`` (``/usr/local/nvidia``), named by that container path:
  unless it is the host's same path, no pod of theirs (nor any pod, when one is the default) gets a sandbox
  (containerd's fork/exec error).
  With ``CDI_ENABLED`` it first writes the ``management.nvidia.com/gpu`` CDI spec to ``CDI_OUTPUT_DIR``
  (``/var/run/cdi``).  ``nvidia-cdi``, and ``nvidia`` with ``NVIDIA_CONTAINER_RUNTIME_MODE=cdi``, run in cdi
  mode: ``NVIDIA_VISIBLE_DEVICES=all`` becomes ``<NVIDIA_CONTAINER_RUNTIME_MODES_CDI_DEFAULT_KIND>=all``, and a
  container asking for it is not created unless a spec of that kind is in the host's ``/etc/cdi`` or ``/var/run/cdi``.
* Device plugin (``nvidia-device-plugin``) and GPU feature discovery (``gpu-feature-discovery``): once their
  scripts' waits pass and NVML loads at start (a GPU runtime with the driver; else CrashLoopBackOff), the node
  advertises ``nvidia.com/gpu`` / gets the GFD labels while they run (GFD's only when its ``--output-file`` lands
  in the host's NFD ``features.d``, or with ``--use-node-feature-api``).  The device plugin first watches the
  kubelet socket's directory (exits when it is not mounted), and the kubelet learns of it only when
  ``KUBELET_SOCKET`` is the host's ``/var/lib/kubelet/device-plugins/kubelet.sock`` and it serves its own socket
  in the host's ``/var/lib/kubelet/device-plugins``.  With a ``cdi-*`` ``DEVICE_LIST_STRATEGY`` it writes its CDI
  spec to ``/var/run/cdi``, and a GPU pod (the plugin validator's workload) gets only CDI device names, which
  need that spec on the host.
* DCGM exporter (``dcgm-exporter``, which embeds a host engine) and the standalone host engine (``nv-hostengine``,
  the ``dcgm`` image): they load NVML at start as GFD does (a GPU runtime with the driver; else CrashLoopBackOff).

``diagnose()`` reads the last step: deadlocks (pods waiting on each other, e.g. a toolkit waiting for
``driver-ready`` that only a validator writes, which needs the handler only that toolkit adds), pods stuck on
what no pod provides, failing containers.  ``python -m e2e.nodemodel`` runs ``gpu-operator render`` output
through it offline.
"""

from __future__ import annotations

import fnmatch
import hashlib
import posixpath
import re
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

VALIDATIONS = "/run/nvidia/validations"
DRIVER_CTR_READY = f"{VALIDATIONS}/.driver-ctr-ready"
DRIVER_INSTALL_DIR = "/run/nvidia/driver"
NVIDIA_SMI = "usr/bin/nvidia-smi"
GPU_RESOURCE = "nvidia.com/gpu"
DRIVER_COMPONENT_LABEL = ("app.kubernetes.io/component", "nvidia-driver")

CONTAINERD, CRIO = "containerd", "cri-o"
# the installer's runtime names (RUNTIME) for the node runtimes
INSTALLER_RUNTIME = {CONTAINERD: "containerd", CRIO: "crio"}
HOST_RUNTIME_CONFIG = {CONTAINERD: "/etc/containerd/config.toml", CRIO: "/etc/crio/crio.conf"}
CRIO_DROP_IN_DIR = "/etc/crio/crio.conf.d"
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
CRIO_HOOK_DIRS = ("/usr/share/containers/oci/hooks.d", "/etc/containers/oci/hooks.d")
# nvidia-ctk-installer copies its binaries to <install dir>/toolkit (TOOLKIT_INSTALL_DIR, ROOT) and names them by that
# path, as the container sees it, in the runtime config: the handlers `nvidia`, `nvidia-cdi`, `nvidia-legacy` run these
TOOLKIT_INSTALL_DIR = "/usr/local/nvidia"
RUNTIME_BINARIES = ("nvidia-container-runtime", "nvidia-container-runtime.cdi", "nvidia-container-runtime.legacy")

# k8s-device-plugin: the kubelet's socket (--kubelet-socket, KUBELET_SOCKET; pluginapi.KubeletSocket) and the directory
# the plugin serves its own socket in, where the kubelet looks for it (pluginapi.DevicePluginPath)
KUBELET_SOCKET = "/var/lib/kubelet/device-plugins/kubelet.sock"
DEVICE_PLUGIN_PATH = "/var/lib/kubelet/device-plugins"
# CDI: the runtimes' spec directories (cdi.DefaultSpecDirs; /var/run is /run). A spec file's content here is its kind.
CDI_SPEC_DIRS = ("/etc/cdi", "/run/cdi")
# the device plugin's CDI devices (internal/cdi/cdi.go: /var/run/cdi/<vendor>-<class>.json) with a cdi-* strategy
PLUGIN_CDI_KIND = "k8s.device-plugin.nvidia.com/gpu"
PLUGIN_CDI_SPEC = "/var/run/cdi/k8s.device-plugin.nvidia.com-gpu.json"
# nvidia-ctk-installer's management spec (CDI_ENABLED: CDI_OUTPUT_DIR/<vendor>-<class>.yaml, CDI_KIND) and the kind
# nvidia-container-runtime in cdi mode gives NVIDIA_VISIBLE_DEVICES names (modes.cdi.default-kind)
TOOLKIT_CDI_KIND = "management.nvidia.com/gpu"
RUNTIME_CDI_KIND = "nvidia.com/gpu"
# kernel modules the driver pod's sidecars load (upstream assets/state-driver): (program, first argument) -> module
MODULE_LOADERS = {("nvidia-gds-driver", "install"): "nvidia_fs", ("nvidia-gdrcopy-driver", "install"): "gdrdrv",
                  ("nvidia-driver", "reload_nvidia_peermem"): "nvidia_peermem"}
# .driver-ctr-ready's features (validateAdditionalDriverComponents): key -> (validator component, module it lsmods)
DRIVER_FEATURES = {"GDRCOPY_ENABLED": ("gdrcopy", "gdrdrv"), "GDS_ENABLED": ("nvidia-fs", "nvidia_fs"),
                   "GPU_DIRECT_RDMA_ENABLED": ("nvidia-peermem", "nvidia_peermem")}
FEATURE_MODULES = dict(DRIVER_FEATURES.values())
VALIDATOR_IMAGE_USER = 1000  # the nvidia-validator image's user
# GFD's --output-file (GFD_OUTPUT_FILE) default, in the directory where nfd-worker reads feature files on the host
GFD_OUTPUT_FILE = "/etc/kubernetes/node-feature-discovery/features.d/gfd"
NFD_FEATURES_DIR = "/etc/kubernetes/node-feature-discovery/features.d"
# What a GPU node has before any pod runs, as the kubelet's hostPath type check sees it (path -> kind), beyond the
# files the model tracks; per OS (NFD's os_release.ID) what its driver pod mounts with a checked type.
NODE_PATHS = {**dict.fromkeys(("/", "/dev", "/dev/char", "/etc", "/lib/modules", "/proc", "/run", "/sys",
                               "/sys/devices/system", "/sys/module/firmware_class/parameters", "/tmp", "/usr",
                               "/usr/local", "/var", "/var/lib/kubelet", "/var/lib/kubelet/pod-resources",
                               "/var/log"), "Directory"),
              "/etc/os-release": "File", "/sys/module/firmware_class/parameters/path": "File", "/dev/log": "Socket"}
OS_PATHS = {"rhel": {"/etc/pki/entitlement": "Directory", "/etc/rhsm": "Directory",
                     "/etc/yum.repos.d/redhat.repo": "File"},  # an entitled host (the driver's subscription mounts)
            "sles": {"/etc/zypp/credentials.d": "Directory"}, "sl-micro": {"/etc/zypp/credentials.d": "Directory"}}
OS_LABEL = "feature.node.kubernetes.io/system-os_release.ID"
# the kubelet's hostPath type check (pkg/volume/hostpath checkTypeInternal): the types that need the path, as what
HOSTPATH_CHECKS = {"Directory": "a directory", "File": "a file", "Socket": "a socket file",
                   "CharDevice": "a character device", "BlockDevice": "a block device"}
STATUS_FILES = {"driver": "driver-ready", "toolkit": "toolkit-ready", "cuda": "cuda-ready", "plugin": "plugin-ready",
                "nvidia-fs": "nvidia-fs-ready", "gdrcopy": "gdrcopy-ready", "nvidia-peermem": "nvidia-peermem-ready"}
VALID_COMPONENTS = {"driver", "toolkit", "cuda", "metrics", "plugin", "mofed", "vfio-pci", "vgpu-manager",
                    "vgpu-devices", "cc-manager", "nvidia-fs", "gdrcopy", "nvidia-peermem"}
# nvidia-validator's flags (cmd/nvidia-validator/main.go): name -> env variable; bool flags take no value
VALIDATOR_FLAGS = {
    "kubeconfig": "KUBECONFIG", "node-name": "NODE_NAME", "n": "NODE_NAME", "namespace": "OPERATOR_NAMESPACE",
    "ns": "OPERATOR_NAMESPACE", "with-wait": "WITH_WAIT", "w": "WITH_WAIT", "with-workload": "WITH_WORKLOAD",
    "l": "WITH_WORKLOAD", "component": "COMPONENT", "c": "COMPONENT", "cleanup-all": "CLEANUP_ALL",
    "r": "CLEANUP_ALL", "output-dir": "OUTPUT_DIR", "o": "OUTPUT_DIR", "sleep-interval-seconds":
    "SLEEP_INTERVAL_SECONDS", "s": "SLEEP_INTERVAL_SECONDS", "mig-strategy": "MIG_STRATEGY", "m": "MIG_STRATEGY",
    "metrics-port": "METRICS_PORT", "p": "METRICS_PORT", "default-gpu-workload-config":
    "DEFAULT_GPU_WORKLOAD_CONFIG", "g": "DEFAULT_GPU_WORKLOAD_CONFIG", "disable-dev-char-symlink-creation":
    "DISABLE_DEV_CHAR_SYMLINK_CREATION", "host-root": "HOST_ROOT", "driver-install-dir": "DRIVER_INSTALL_DIR",
    "driver-install-dir-ctr-path": "DRIVER_INSTALL_DIR_CTR_PATH", "driver-validation-skip-gpu-init":
    "DRIVER_VALIDATION_SKIP_GPU_INIT", "help": "", "h": "", "version": "", "v": "",
}
VALIDATOR_BOOL_FLAGS = {"with-wait", "w", "with-workload", "l", "cleanup-all", "r",
                        "disable-dev-char-symlink-creation", "driver-validation-skip-gpu-init", "help", "h",
                        "version", "v"}
# containers run without a command: what their image runs
IMAGE_ENTRYPOINTS = {"k8s-device-plugin": "nvidia-device-plugin", "gpu-feature-discovery": "gpu-feature-discovery",
                     "container-toolkit": "nvidia-toolkit", "driver": "nvidia-driver init",
                     "dcgm-exporter": "dcgm-exporter", "dcgm": "nv-hostengine"}


def missing_runtime_error(binary: str, uid: str) -> str:
    """containerd's sandbox error when a handler's runtime binary is not on the host (the shim's fork/exec)."""
    sandbox = hashlib.sha256(uid.encode()).hexdigest()
    return ("Failed to create pod sandbox: rpc error: code = Unknown desc = failed to create containerd task: failed "
            "to create shim task: OCI runtime create failed: unable to retrieve OCI runtime error (open "
            f"/run/containerd/io.containerd.runtime.v2.task/k8s.io/{sandbox}/log.json: no such file or directory): "
            f"fork/exec {binary}: no such file or directory: unknown")


def sandbox_error(handler: str, runtime: str) -> str:
    """The kubelet's FailedCreatePodSandBox message when the runtime has no such handler."""
    if runtime == CRIO:  # cri-o's wording
        return (f"Failed to create pod sandbox: rpc error: code = Unknown desc = failed to find runtime handler "
                f"{handler} from runtime list map[runc]")
    return (f'Failed to create pod sandbox: rpc error: code = Unknown desc = failed to get sandbox runtime: '
            f'no runtime for "{handler}" is configured')


# --- shell scripts: the little the model reads from them ---

KEYWORDS = {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "for", "case", "esac", "!", "{",
            "}", "exec", "time", "in"}
SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", ";;", "|&"}
_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)")


@dataclass
class Script:
    """What a shell script does that the model cares about (paths as the container sees them)."""

    commands: list[list[str]] = field(default_factory=list)  # simple commands, words expanded, keywords dropped
    waits: list[str] = field(default_factory=list)  # `until [ -f P ]` / `while [ ! -f P ]` loops
    writes: list[str] = field(default_factory=list)  # touch, > and >>, mv and cp targets
    removes: list[str] = field(default_factory=list)  # rm arguments (globs allowed)
    sources: list[tuple[str, bool]] = field(default_factory=list)  # (file, under set -o allexport)
    contents: dict[str, str] = field(default_factory=dict)  # what echo, printf and here-documents write, per file

    def programs(self) -> list[tuple[str, list[str]]]:
        return [(posixpath.basename(c[0]), c[1:]) for c in self.commands if c]


def _expand(word: str, variables: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3)
        value = variables.get(name, "")
        return value if value or m.group(2) is None else m.group(2)

    for _ in range(5):
        new = _VAR.sub(sub, word)
        if new == word:
            break
        word = new
    return word


def _split(line: str) -> list[str]:
    lex = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
    lex.whitespace_split = True
    lex.commenters = "#"
    try:
        return list(lex)
    except ValueError:  # unbalanced quotes: good enough
        return line.split()


_HEREDOC = re.compile(r"(?<!<)<<(-?)\s*(['\"]?)([A-Za-z_]\w*)\2")  # (not a <<< here-string)


def _output(cmd: list[str], heredoc: str | None) -> str | None:
    """What a simple command prints, when the model can tell: echo, printf, cat of a here-document."""
    prog, args = posixpath.basename(cmd[0]), cmd[1:]
    if prog == "echo":
        newline = "-n" not in args[:1]
        while args and args[0] in ("-n", "-e", "-E"):
            args = args[1:]
        return " ".join(args) + ("\n" if newline else "")
    if prog == "printf" and args:
        fmt, values = args[0].replace("\\n", "\n").replace("\\t", "\t"), iter(args[1:])
        return re.sub(r"%[sd%]", lambda m: "%" if m.group() == "%%" else next(values, ""), fmt)
    if prog == "cat" and len(args) == 0 and heredoc is not None:
        return heredoc
    return None


def parse_script(text: str, env: dict[str, str] | None = None) -> Script:
    variables = dict(env or {})
    out = Script()
    allexport = False
    group: list[str] | None = None  # what a { ...; } group prints so far
    lines = text.replace("\\\n", " ").splitlines()
    n = 0
    while n < len(lines):
        line = lines[n]
        n += 1
        heredoc: str | None = None
        m = _HEREDOC.search(line)
        if m:  # the here-document's lines are its text, not commands
            body = []
            while n < len(lines) and (lines[n].lstrip("\t") if m.group(1) else lines[n]) != m.group(3):
                body.append(lines[n].lstrip("\t") if m.group(1) else lines[n])
                n += 1
            n += 1
            heredoc = "".join(f"{b}\n" for b in body)
            if not m.group(2):  # an unquoted delimiter: the text is expanded
                heredoc = _expand(heredoc, variables)
            line = line[:m.start()] + line[m.end():]
        words: list[str] = []
        pieces: list[list[str]] = []
        for tok in _split(line):
            if tok in SEPARATORS:
                pieces.append(words)
                words = []
            else:
                words.append(tok)
        pieces.append(words)
        for piece in pieces:
            keywords = []
            while piece and piece[0] in KEYWORDS:
                keywords.append(piece.pop(0))
            printed: str | None = None
            if "}" in keywords and group is not None:  # `} > FILE`: the group's output goes there
                printed, group = "".join(group), None
            if "{" in keywords:
                group = []
            if not piece:
                continue
            if all(re.fullmatch(r"\w+=.*", w) for w in piece):  # NAME=value assignments
                for w in piece:
                    name, _, value = w.partition("=")
                    variables[name] = _expand(value, variables)
                continue
            words = [_expand(w, variables) for w in piece]
            while words and re.fullmatch(r"\w+=.*", words[0]):
                words.pop(0)  # FOO=bar cmd
            # redirections
            cmd: list[str] = []
            targets: list[tuple[str, bool]] = []  # (file, appended)
            i = 0
            while i < len(words):
                w = words[i]
                if w in (">", ">>") and i + 1 < len(words):
                    target = words[i + 1]
                    if target.startswith("/") and target != "/dev/null":
                        out.writes.append(target)
                        targets.append((target, w == ">>"))
                    i += 2
                    continue
                if w in ("<", ">&", "<&") and i + 1 < len(words):
                    i += 2
                    continue
                if w.isdigit() and i + 1 < len(words) and words[i + 1] in (">", ">>", ">&", "<"):
                    i += 1
                    continue
                if w in ("}",):
                    i += 1
                    continue
                cmd.append(w)
                i += 1
            if cmd:
                printed = _output(cmd, heredoc)
                if printed is not None and not targets and group is not None:
                    group.append(printed)
            for target, appended in targets:
                if printed is None:
                    out.contents.pop(target, None)  # what it holds is not known
                else:
                    out.contents[target] = (out.contents.get(target, "") if appended else "") + printed
            if not cmd:
                continue
            loop = next((k for k in keywords if k in ("until", "while")), None)
            test = _file_test(cmd)
            if loop and test is not None:
                negated, path = test
                if (loop == "until") != negated:
                    out.waits.append(path)
                continue
            out.commands.append(cmd)
            prog, args = posixpath.basename(cmd[0]), cmd[1:]
            plain = [a for a in args if not a.startswith("-")]
            if prog == "touch":
                out.writes += [a for a in plain if a.startswith("/")]
            elif prog in ("mv", "cp") and len(plain) >= 2:
                if plain[-1].startswith("/"):
                    out.writes.append(plain[-1])
                    if plain[0] in out.contents:
                        out.contents[plain[-1]] = out.contents[plain[0]]
                if prog == "mv":
                    out.removes += [a for a in plain[:-1] if a.startswith("/")]
                    out.contents.pop(plain[0], None)
            elif prog == "rm":
                out.removes += [a for a in plain if a.startswith("/")]
            elif prog in (".", "source") and plain:
                out.sources.append((plain[0], allexport))
            elif prog == "set" and ("-a" in args or args[:2] == ["-o", "allexport"]):
                allexport = True
            elif prog == "set" and ("+a" in args or args[:2] == ["+o", "allexport"]):
                allexport = False
    # mv'd temporaries are not left behind
    out.writes = [w for w in dict.fromkeys(out.writes) if w not in out.removes or w in _mv_targets(out)]
    return out


def _mv_targets(script: Script) -> set[str]:
    return {c[-1] for c in script.commands if c and posixpath.basename(c[0]) in ("mv", "cp")}


def _file_test(cmd: list[str]) -> tuple[bool, str] | None:
    """``[ -f P ]``, ``[ ! -e P ]``, ``test -f P``: (negated, P)."""
    words = list(cmd)
    if words[0] == "[":
        if words[-1] != "]":
            return None
        words = words[1:-1]
    elif words[0] == "test":
        words = words[1:]
    else:
        return None
    negated = False
    if words and words[0] == "!":
        negated, words = True, words[1:]
    if len(words) == 2 and words[0] in ("-f", "-e", "-s", "-d"):
        return negated, words[1]
    return None


def _argv_script(argv: list[str]) -> str:
    """The shell text a command line runs: ``sh -c TEXT`` gives TEXT, anything else is one command."""
    if len(argv) >= 3 and posixpath.basename(argv[0]) in ("sh", "bash", "ash", "dash") and \
            argv[1].startswith("-") and "c" in argv[1]:
        return argv[2]
    if len(argv) == 2 and posixpath.basename(argv[0]) in ("sh", "bash", "ash", "dash") and argv[1] in ("-c", "-xc"):
        return ""
    return shlex.join(argv)


# --- pods ---

def _uid(pod: dict[str, Any]) -> str:
    return str(pod["metadata"].get("uid") or pod["metadata"].get("name"))


def _name(pod: dict[str, Any]) -> str:
    return str(pod["metadata"].get("name") or "")


def _spec(pod: dict[str, Any]) -> dict[str, Any]:
    return pod.get("spec") or {}


def _canonical(path: str) -> str:
    path = posixpath.normpath(path)
    if path == "/var/run" or path.startswith("/var/run/"):
        path = "/run" + path[len("/var/run"):]  # a symlink on every distribution
    return path


def _mount_of(c: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The volume mount a container path is under (the deepest), if any."""
    path = posixpath.normpath(path)
    best: dict[str, Any] | None = None
    for m in c.get("volumeMounts") or []:
        mp = posixpath.normpath(m.get("mountPath") or "/")
        if (path == mp or path.startswith(mp.rstrip("/") + "/")) and (
                best is None or len(mp) > len(posixpath.normpath(best["mountPath"]))):
            best = m
    return best


def host_path(pod: dict[str, Any], c: dict[str, Any], path: str, *, write: bool = False) -> tuple[str | None, str]:
    """The host path a container path lands on: (path or None when it stays in the container, a problem or "")."""
    path = posixpath.normpath(path)
    best = _mount_of(c, path)
    if best is None:
        return None, ""
    volume = next((v for v in _spec(pod).get("volumes") or [] if v.get("name") == best.get("name")), None)
    if not volume or not volume.get("hostPath"):
        return None, ""
    base = str(volume["hostPath"].get("path") or "/")
    if best.get("subPath"):
        base = posixpath.join(base, best["subPath"])
    rest = posixpath.relpath(path, posixpath.normpath(best["mountPath"]))
    target = _canonical(base if rest == "." else posixpath.join(base, rest))
    if write and best.get("readOnly"):
        return target, f"open {path}: read-only file system"
    return target, ""


def config_file(pod: dict[str, Any], c: dict[str, Any], path: str, world: World) -> str | None:
    """The content of a file that a ConfigMap volume puts at ``path`` in the container, if any."""
    path = posixpath.normpath(path)
    for m in c.get("volumeMounts") or []:
        mp = posixpath.normpath(m.get("mountPath") or "/")
        if not (path == mp or path.startswith(mp.rstrip("/") + "/")):
            continue
        volume = next((v for v in _spec(pod).get("volumes") or [] if v.get("name") == m.get("name")), None)
        cm = (volume or {}).get("configMap")
        if not cm:
            continue
        rel = m.get("subPath") or ""
        if path != mp:
            rel = posixpath.join(rel, posixpath.relpath(path, mp)) if rel else posixpath.relpath(path, mp)
        key = rel
        for item in cm.get("items") or []:
            if item.get("path") == rel:
                key = item.get("key", rel)
        data = world.config_maps.get((pod["metadata"].get("namespace") or "", cm.get("name") or ""))
        if data is not None and key in data:
            return data[key]
    return None


def script_of(pod: dict[str, Any], c: dict[str, Any], argv: list[str], world: World) -> str:
    """The shell text an argv runs, with the ConfigMap-mounted scripts it names appended."""
    text = _argv_script(argv)
    parts = [text]
    for word in re.findall(r"(/[\w./-]+)", text):
        content = config_file(pod, c, word, world)
        if content:
            parts.append(content)
    return "\n".join(parts)


def env_of(pod: dict[str, Any], c: dict[str, Any], world: World, node: str, host_ip: str = "") -> dict[str, str]:
    env: dict[str, str] = {}
    ns = pod["metadata"].get("namespace") or ""
    for src in c.get("envFrom") or []:
        ref = src.get("configMapRef")
        if ref:
            for k, v in (world.config_maps.get((ns, ref.get("name") or "")) or {}).items():
                env[(src.get("prefix") or "") + k] = v
    fields = {"metadata.namespace": ns, "metadata.name": _name(pod), "spec.nodeName": node,
              "status.hostIP": host_ip, "spec.serviceAccountName": _spec(pod).get("serviceAccountName") or ""}
    for e in c.get("env") or []:
        value = e.get("value")
        vf = e.get("valueFrom") or {}
        if value is None and vf.get("fieldRef"):
            value = fields.get(vf["fieldRef"].get("fieldPath") or "", "")
        elif value is None and vf.get("configMapKeyRef"):
            ref = vf["configMapKeyRef"]
            value = (world.config_maps.get((ns, ref.get("name") or "")) or {}).get(ref.get("key") or "", "")
        env[e["name"]] = _expand(str(value or ""), env)  # $(VAR) references are rare here; ${} is not k8s syntax
    return env


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "t", "true", "yes", "y", "on")


# k8s-driver-manager's cli.BoolFlags (cmd/driver-manager/main.go, in its order): env variable, flag name, default
MANAGER_BOOL_FLAGS = (("DRAIN_USE_FORCE", "drain-use-force", False),
                      ("DRAIN_DELETE_EMPTYDIR_DATA", "drain-delete-emptydir-data", False),
                      ("ENABLE_AUTO_DRAIN", "enable-auto-drain", True),
                      ("ENABLE_GPU_POD_EVICTION", "enable-gpu-pod-eviction", True),
                      ("GPU_DIRECT_RDMA_ENABLED", "gpu-direct-rdma-enabled", False),
                      ("USE_HOST_MOFED", "use-host-mofed", False),
                      ("FORCE_REINSTALL", "force-reinstall", False))
_GO_BOOLS = {**dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
             **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False)}  # strconv.ParseBool


def manager_flags(env: dict[str, str]) -> tuple[dict[str, bool], str]:
    """urfave/cli v2's BoolFlag.Apply for MANAGER_BOOL_FLAGS: an absent variable gives the default, "" false, else
    strconv.ParseBool; the first value it refuses is the error the program exits with before it runs."""
    flags: dict[str, bool] = {}
    for var, name, default in MANAGER_BOOL_FLAGS:
        value = env.get(var)
        if value is not None and value != "" and value not in _GO_BOOLS:
            return flags, (f'could not parse "{value}" as bool value from environment variable "{var}" for flag '
                           f'{name}: strconv.ParseBool: parsing "{value}": invalid syntax')
        flags[var] = default if value is None else _GO_BOOLS.get(value, False)
    return flags, ""


def _first(env: dict[str, str], *names: str) -> str | None:
    for n in names:
        if env.get(n):
            return env[n]
    return None


def _flag(args: list[str], name: str) -> str | None:
    """A ``--name value`` / ``--name=value`` flag's value (urfave/cli: a flag wins over its env variable)."""
    for i, a in enumerate(args):
        if a in (f"--{name}", f"-{name}") and i + 1 < len(args):
            return args[i + 1]
        for prefix in (f"--{name}=", f"-{name}="):
            if a.startswith(prefix):
                return a[len(prefix):]
    return None


def _privileged(c: dict[str, Any]) -> bool:
    """A privileged container: every device (the device cgroup lets it open /dev/nvidia*) and every capability."""
    return bool((c.get("securityContext") or {}).get("privileged"))


def _mounted(c: dict[str, Any], path: str) -> bool:
    """Whether a volume is mounted at ``path`` or above it (a directory no image of ours has otherwise)."""
    path = posixpath.normpath(path)
    return any(path == mp or path.startswith(mp.rstrip("/") + "/")
               for mp in (posixpath.normpath(m.get("mountPath") or "/") for m in c.get("volumeMounts") or []))


def _unpropagated_driver_root(c: dict[str, Any]) -> str:
    """Why the driver's root does not reach the host, or "": nvidia-driver mounts it in its own mount namespace
    (_mount_rootfs: mount --rbind / /run/nvidia/driver), which the host sees only through a Bidirectional mount."""
    m = _mount_of(c, DRIVER_INSTALL_DIR)
    if m is None or m.get("mountPropagation") == "Bidirectional":
        return ""
    return (f"its root file system (mount --rbind / {DRIVER_INSTALL_DIR}) stays in the container: the mount of "
            f"volume {m.get('name')} at {m.get('mountPath')} has mountPropagation "
            f"{m.get('mountPropagation') or 'None'}, not Bidirectional, so the host's {DRIVER_INSTALL_DIR} stays "
            "empty")


def _cdi_spec_path(kind: str, ext: str = ".yaml") -> str:
    """The host path of a kind's spec under /var/run/cdi (cdi.GenerateSpecName: <vendor>-<class>)."""
    return f"/run/cdi/{kind.replace('/', '-')}{ext}"


_YAML_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
# yaml.v3 also takes YAML 1.1's words when it decodes into a bool
_YAML11_BOOLS = {**dict.fromkeys(("y", "Y", "yes", "Yes", "YES", "on", "On", "ON"), True),
                 **dict.fromkeys(("n", "N", "no", "No", "NO", "off", "Off", "OFF"), False)}


def driver_ctr_features(text: str) -> tuple[list[str], str]:
    """The validator components ``.driver-ctr-ready`` switches on (validateAdditionalDriverComponents: yaml.v3
    Unmarshal into map[string]bool), or yaml's error."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        return [], f"yaml: line {mark.line + 1 if mark else 1}: {getattr(e, 'problem', None) or e}"

    def short(n: yaml.Node) -> str:
        return "!!" + str(n.tag).rsplit(":", 1)[-1]

    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")):
        return [], ""
    if not isinstance(node, yaml.MappingNode):
        value = f" `{node.value}`" if isinstance(node, yaml.ScalarNode) else ""
        return [], (f"yaml: unmarshal errors:\n  line {node.start_mark.line + 1}: cannot unmarshal "
                    f"{short(node)}{value} into map[string]bool")
    enabled, errors = [], []
    for key, value in node.value:
        if isinstance(value, yaml.ScalarNode) and value.tag.endswith(":null"):
            continue
        words = {**(_YAML_BOOLS if isinstance(value, yaml.ScalarNode) and value.style is None else {}),
                 **_YAML11_BOOLS}
        if not isinstance(value, yaml.ScalarNode) or value.value not in words:
            shown = f" `{value.value}`" if isinstance(value, yaml.ScalarNode) else ""
            errors.append(f"  line {value.start_mark.line + 1}: cannot unmarshal {short(value)}{shown} into bool")
        elif words[value.value] and str(key.value) in DRIVER_FEATURES:
            enabled.append(DRIVER_FEATURES[str(key.value)][0])
    if errors:
        return [], "yaml: unmarshal errors:\n" + "\n".join(errors)
    return enabled, ""


def _image_base(image: str) -> str:
    image = image.split("@", 1)[0]
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        name = image
    return name.rsplit("/", 1)[-1]


_VERSION_RE = re.compile(r"^(\d+\.\d+(?:\.\d+)?)")


def driver_version_from_image(image: str) -> str | None:
    """``nvcr.io/nvidia/driver:595.91.07-ubuntu22.04`` -> ``595.91.07``; None when the tag has no version."""
    image = image.split("@", 1)[0]
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return None
    m = _VERSION_RE.match(tag)
    return m.group(1) if m else None


# --- what a container is ---

VALIDATOR, DRIVER, TOOLKIT, DEVICE_PLUGIN, GFD, DRIVER_MANAGER, NVML_USER, CONFIG_MANAGER, OTHER = (
    "nvidia-validator", "driver", "toolkit", "device-plugin", "gpu-feature-discovery", "driver-manager", "nvml-user",
    "config-manager", "other")

# k8s-driver-manager's uninstall_driver (cmd/driver-manager/main.go): with a driver loaded it sets these deploy
# labels to PAUSED (evictAllGPUOperatorComponents, maybeSetPaused: "true" -> PAUSED, "" and "false" kept, another
# value gets "_" + PAUSED), mig-manager and client only when set; waits for the pods of these `app` labels to
# terminate (waitForPodsToTerminate; the optional ones when their label was set); unloads the driver; and sets the
# labels back from the values it read first (rescheduleGPUOperatorComponents, maybeSetTrue; dra-driver too).
PAUSED_FOR_DRIVER = "paused-for-driver-upgrade"
_DEPLOY = "nvidia.com/gpu.deploy."
MANAGER_PAUSES = tuple(_DEPLOY + op for op in (
    "operator-validator", "container-toolkit", "device-plugin", "gpu-feature-discovery", "dcgm-exporter", "dcgm",
    "nvsm", "sandbox-validator", "sandbox-device-plugin", "vgpu-device-manager", "dra-validator", "dcgm-dra",
    "dcgm-exporter-dra"))
MANAGER_PAUSES_WHEN_SET = (_DEPLOY + "mig-manager", _DEPLOY + "client")
MANAGER_RESTORES_TOO = _DEPLOY + "dra-driver"
MANAGER_WAITS_FOR = ("nvidia-operator-validator", "nvidia-container-toolkit-daemonset",
                     "nvidia-device-plugin-daemonset", "gpu-feature-discovery", "nvidia-dcgm-exporter", "nvidia-dcgm",
                     "nvidia-dcgm-exporter-dra", "nvidia-dcgm-dra")
MANAGER_WAITS_WHEN_SET = {_DEPLOY + "mig-manager": "nvidia-mig-manager",
                          _DEPLOY + "sandbox-validator": "nvidia-sandbox-validator",
                          _DEPLOY + "sandbox-device-plugin": "nvidia-sandbox-device-plugin-daemonset",
                          _DEPLOY + "vgpu-device-manager": "nvidia-vgpu-device-manager"}
UPGRADE_ENABLED_ANNOTATION = "nvidia.com/gpu-driver-upgrade-enabled"  # "true": the operator's upgrade policy evicts
UNLOAD_BUSY = "Could not unload NVIDIA driver kernel modules, driver is in use"  # cleanupDriver: EBUSY
UNLOAD_EPERM = "delete_module nvidia: operation not permitted"  # without CAP_SYS_MODULE
DRIVER_IN_USE = "failed to uninstall nvidia driver components: " + UNLOAD_BUSY
# waitForPodsToTerminate past its grace period (WaitForPodTermination: wait.PollUntilContextTimeout)
WAIT_TIMED_OUT = "failed to evict GPU operator components: context deadline exceeded"
GPU_PODS_LEFT = "cannot proceed until all GPU pods are drained from the node"  # nvDrainNode failed, no auto-drain
DRAIN_FAILED = "failed to drain node: "  # DrainNode (ENABLE_AUTO_DRAIN) failed
# DRIVER_CONFIG_DIGEST as the driver container stores it (nvidia-driver init: _store_driver_digest); it stays there
DRIVER_STATE_FILE = "/run/nvidia/nvidia-driver.state"
CONFIG_DIGEST = "DRIVER_CONFIG_DIGEST"


def uses_gpu(pod: dict[str, Any]) -> bool:
    """podUsesGPU: a container requests or limits an nvidia.com/gpu* or nvidia.com/mig-* resource (not another
    nvidia.com/ one, such as the network operator's RDMA devices; DRA claims are not modelled)."""
    return any(str(k).startswith(("nvidia.com/gpu", "nvidia.com/mig-")) for c in _spec(pod).get("containers") or []
               for part in ("limits", "requests") for k in ((c.get("resources") or {}).get(part) or {}))


def drain_status(pod: dict[str, Any], *, force: bool, delete_empty_dir: bool,
                 ignore_daemonsets: bool) -> tuple[bool, str]:
    """kubectl's drain filters, in order (k8s.io/kubectl/pkg/drain filters.go, as vendored by k8s-driver-manager):
    whether the pod may be deleted, and the error that refuses it ("" when it is only passed over)."""
    finished = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
    ref = next((o for o in pod["metadata"].get("ownerReferences") or [] if o.get("controller")), None)
    if ref is not None and ref.get("kind") == "DaemonSet" and ref.get("apiVersion", "apps/v1") == "apps/v1" \
            and not finished:  # (the DaemonSet taken to exist)
        return False, "" if ignore_daemonsets else "DaemonSet-managed Pods (use --ignore-daemonsets to ignore)"
    if "kubernetes.io/config.mirror" in (pod["metadata"].get("annotations") or {}):
        return False, ""
    if any("emptyDir" in v for v in _spec(pod).get("volumes") or []) and not finished and not delete_empty_dir:
        return False, "Pods with local storage (use --delete-emptydir-data to override)"
    if ref is None and not finished and not force:
        return False, "Pods that declare no controller (use --force to override)"
    return True, ""


def paused_value(value: str) -> str:
    """maybeSetPaused."""
    if value in ("", "false") or PAUSED_FOR_DRIVER in value:
        return value
    return PAUSED_FOR_DRIVER if value == "true" else f"{value}_{PAUSED_FOR_DRIVER}"


def unpaused_value(value: str) -> str:
    """maybeSetTrue."""
    if value == PAUSED_FOR_DRIVER:
        return "true"
    return re.sub(PAUSED_FOR_DRIVER + "_?", "", value).strip("_")


@dataclass
class Ctr:
    """One container as the model reads it."""

    spec: dict[str, Any]
    init: bool
    index: int
    env: dict[str, str]
    script: Script
    role: str
    args: list[str]  # the role program's arguments
    probe_writes: list[str]  # files the startupProbe script writes
    prestop_removes: list[str]
    probe_contents: dict[str, str] = field(default_factory=dict)  # what it writes there, where the model can tell
    module: str = ""  # the kernel module it loads (MODULE_LOADERS)

    @property
    def name(self) -> str:
        return str(self.spec.get("name") or "")

    @property
    def where(self) -> str:
        return f"{'init container' if self.init else 'container'} {self.name}"


def read_container(pod: dict[str, Any], c: dict[str, Any], init: bool, index: int, world: World, node: str,
                   host_ip: str = "") -> Ctr:
    env = env_of(pod, c, world, node, host_ip)
    argv = list(c.get("command") or []) + list(c.get("args") or [])
    if not c.get("command"):
        entry = IMAGE_ENTRYPOINTS.get(_image_base(str(c.get("image") or "")))
        if entry:
            argv = entry.split() + list(c.get("args") or [])
    script = parse_script(script_of(pod, c, argv, world), env) if argv else Script()
    role, args = OTHER, []
    for prog, pargs in script.programs():
        if prog == "nvidia-validator":
            role, args = VALIDATOR, pargs
        elif prog == "nvidia-driver" and pargs[:1] == ["init"]:
            role, args = DRIVER, pargs
        elif prog in ("nvidia-toolkit", "nvidia-ctk-installer"):
            role, args = TOOLKIT, pargs
        elif prog == "nvidia-device-plugin":
            role, args = DEVICE_PLUGIN, pargs
        elif prog == "gpu-feature-discovery":
            role, args = GFD, pargs
        elif prog == "driver-manager" and pargs[:1] == ["uninstall_driver"]:
            role, args = DRIVER_MANAGER, pargs
        elif prog in ("dcgm-exporter", "nv-hostengine"):
            role, args = NVML_USER, pargs
        elif prog == "config-manager":
            role, args = CONFIG_MANAGER, pargs
        else:
            continue
        break
    module = next((m for (prog, first), m in MODULE_LOADERS.items()
                   for p, pargs in script.programs() if p == prog and pargs[:1] == [first]), "")
    if role == OTHER and not init and any(k in env for k in ("RUNTIME_CONFIG", "CONTAINERD_CONFIG", "CRIO_CONFIG",
                                                               "RUNTIME_DROP_IN_CONFIG", "CRIO_CONFIG_MODE")):
        role = TOOLKIT  # upstream's toolkit env on a container running the installer through its image
    probe_writes: list[str] = []
    probe_contents: dict[str, str] = {}
    probe = (c.get("startupProbe") or {}).get("exec") or {}
    if probe.get("command"):
        probe_script = parse_script(script_of(pod, c, list(probe["command"]), world), env)
        probe_writes, probe_contents = probe_script.writes, probe_script.contents
    removes: list[str] = []
    pre = ((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}
    if pre.get("command"):
        removes = parse_script(script_of(pod, c, list(pre["command"]), world), env).removes
    return Ctr(c, init, index, env, script, role, args, probe_writes, removes, probe_contents, module)


# --- the host and the cluster ---

@dataclass
class Handler:
    """A runtime handler configured in the node's container runtime (or cri-o's OCI hook)."""

    name: str
    nvidia: bool = False
    driver_root: str = "/"
    default: bool = False
    owners: set[str] = field(default_factory=set)  # pods whose installer added it
    cdi_kind: str = ""  # in cdi mode: the kind NVIDIA_VISIBLE_DEVICES names resolve to (a spec must provide it)
    missing: str = ""  # the runtime binary it runs, when the host does not have it


@dataclass
class Host:
    name: str
    runtime: str = CONTAINERD
    gpus: int = 0
    files: dict[str, str] = field(default_factory=dict)
    handlers: dict[str, Handler] = field(default_factory=dict)
    hooks: dict[str, Handler] = field(default_factory=dict)  # cri-o OCI hook file -> what it injects
    driver_loaded: bool = False  # a driver container's kernel modules (they stay when its pod goes)
    modules: set[str] = field(default_factory=set)  # the sidecars' modules (nvidia_fs, ...), unloaded with the driver
    # other paths the host has (path -> hostPath type: Directory, File, Socket, ...): NODE_PATHS, and what the kubelet
    # or the runtime created for a pod's hostPath volumes
    paths: dict[str, str] = field(default_factory=dict)

    def path_type(self, path: str) -> str | None:
        """What ``path`` is on the host (a hostPath type), or None when it does not exist."""
        path = _canonical(path)
        if path in self.paths:
            return self.paths[path]
        if path in self.files:
            return "Socket" if self.files[path] == "socket" else "File"
        if any(p.startswith(path.rstrip("/") + "/") for p in [*self.files, *self.paths]):
            return "Directory"
        return None

    def has(self, path: str | None) -> bool:
        """A file, or a directory holding one."""
        if path is None:
            return False
        path = _canonical(path)
        return path in self.files or any(f.startswith(path + "/") for f in self.files)

    def cdi_kinds(self) -> set[str]:
        """The CDI kinds the specs in the runtimes' spec directories provide."""
        return {kind for path, kind in self.files.items() if posixpath.dirname(path) in CDI_SPEC_DIRS}

    def driver_at(self, root: str) -> str | None:
        """The driver version whose nvidia-smi is under ``root`` on the host."""
        return self.files.get(_canonical(posixpath.join(root, NVIDIA_SMI)))


def new_host(name: str, runtime: str = CONTAINERD, gpus: int = 0, host_driver: str | None = None,
             os_id: str = "") -> Host:
    if runtime not in (CONTAINERD, CRIO):
        raise ValueError(f"runtime must be {CONTAINERD} or {CRIO}, not {runtime!r}")
    host = Host(name, runtime, gpus, handlers={"runc": Handler("runc")},
                paths={**NODE_PATHS, **OS_PATHS.get(os_id, {})})
    host.files[HOST_RUNTIME_CONFIG[runtime]] = "# the node's runtime config\n"
    host.files[KUBELET_SOCKET] = "socket"
    if runtime == CONTAINERD:
        host.files[CONTAINERD_SOCKET] = "socket"
    else:
        host.files["/run/crio/crio.sock"] = "socket"
    if host_driver:
        host.files["/" + NVIDIA_SMI] = host_driver
    return host


def os_of(node: dict[str, Any]) -> str:
    """The node's OS ID, as NFD labels it (os_release.ID), or ""."""
    return str(((node.get("metadata") or {}).get("labels") or {}).get(OS_LABEL) or "")


def runtime_of(node: dict[str, Any]) -> str:
    """containerd or cri-o, from the Node's ``status.nodeInfo.containerRuntimeVersion``."""
    version = str(((node.get("status") or {}).get("nodeInfo") or {}).get("containerRuntimeVersion") or "")
    kind = version.split("://", 1)[0]
    return CRIO if kind in ("cri-o", "crio") else CONTAINERD


@dataclass
class World:
    """What the node's components read from the cluster."""

    runtime_classes: dict[str, str] = field(default_factory=dict)  # RuntimeClass name -> handler
    config_maps: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)  # (namespace, name) -> data
    daemonsets: list[dict[str, Any]] = field(default_factory=list)
    # a server-side dry-run create of a pod: None when the API server accepts it, else its message
    dry_run: Callable[[dict[str, Any]], str | None] = field(default=lambda pod: None)
    version: str = ""  # changes when any of the above changes (containers are read again then)


def offline_dry_run(pod: dict[str, Any]) -> str | None:
    """The API server's answer to a pod create, for the checks that matter here (tests without a cluster)."""
    spec = pod.get("spec") or {}
    errors = []
    for kind in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(kind) or []):
            if not c.get("image"):
                errors.append(f"spec.{kind}[{i}].image: Required value")
            policy = c.get("imagePullPolicy")
            if policy and policy not in ("Always", "IfNotPresent", "Never"):
                errors.append(f'spec.{kind}[{i}].imagePullPolicy: Unsupported value: "{policy}": supported values: '
                              '"Always", "IfNotPresent", "Never"')
    if not errors:
        return None
    name = pod["metadata"].get("name") or pod["metadata"].get("generateName", "")
    return f'Pod "{name}" is invalid: [{", ".join(errors)}]' if len(errors) > 1 else \
        f'Pod "{name}" is invalid: {errors[0]}'


# --- what pods wait for ---

@dataclass(frozen=True)
class Need:
    """Why a pod (or one of its containers' effects) does not get further."""

    kind: str  # file | handler | runtime-binary | runtimeclass | configmap | hostpath | gpu-resource | gpu-runtime
    # | evict | module | privileged | error
    target: str  # host path, handler name, ...
    where: str  # "init container x", "container y", "sandbox"
    message: str = ""

    def describe(self) -> str:
        if self.kind == "file":
            return f"waits for {self.target}"
        if self.kind == "handler":
            return f'cannot start: runtime handler "{self.target}" is not configured on the node'
        if self.kind == "runtime-binary":
            return f"cannot start: {self.message}"
        if self.kind == "runtimeclass":
            return f'cannot start: RuntimeClass "{self.target}" not found'
        if self.kind == "configmap":
            return f'cannot start: ConfigMap "{self.target}" not found'
        if self.kind == "hostpath":
            return f"cannot start: {self.message}"
        if self.kind == "gpu-resource":
            return f"waits for {GPU_RESOURCE} on the node"
        if self.kind == "gpu-runtime":
            return "gets no GPUs: no runtime on the node injects them"
        if self.kind == "evict":
            why = self.message or f"their deploy labels {PAUSED_FOR_DRIVER}"
            return f"waits for pods {self.target} to leave the node ({why})"
        if self.kind == "module":
            return f"waits for the kernel module {self.target}"
        if self.kind == "privileged":
            return f"is not privileged: {self.message}"
        return f"fails: {self.message}"


@dataclass
class Finding:
    kind: str  # deadlock | stuck | failing
    pods: list[str]
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass
class Event:
    pod: dict[str, Any]
    type: str
    reason: str
    message: str


@dataclass
class StepResult:
    statuses: dict[str, dict[str, Any]]  # pod uid -> the status it has now (see pod_status)
    events: list[Event]
    gpus: int | None  # nvidia.com/gpu to advertise (None: none)
    gfd: bool  # a GPU feature discovery pod runs
    driver_version: str | None  # the driver GFD would see
    again: float | None  # seconds until something changes by itself
    plugin_pods: frozenset[str] = frozenset()  # uids of the running device plugin pods
    gfd_pods: frozenset[str] = frozenset()  # uids of the running GFD pods
    labels: dict[str, str] = field(default_factory=dict)  # node labels k8s-driver-manager sets (a merge patch)
    evict: list[dict[str, Any]] = field(default_factory=list)  # GPU pods k8s-driver-manager deletes


@dataclass
class _Memo:
    uid: str
    name: str
    first_seen: float
    created: float
    sandbox: bool = False
    init_done: int = 0
    entered: int = -1
    events: set[str] = field(default_factory=set)
    crash: tuple[float, int] | None = None
    restarts: int = 0
    dry_runs: dict[str, str | None] = field(default_factory=dict)
    need: Need | None = None  # the pod's first blocker
    effect_needs: list[Need] = field(default_factory=list)  # running containers whose effect waits
    init_states: dict[int, dict[str, Any]] = field(default_factory=dict)
    main_states: dict[int, dict[str, Any]] = field(default_factory=dict)
    started_main: bool = False
    waited: set[int] = field(default_factory=set)  # main containers whose script waits (and NVML) have passed
    probed: bool = False  # the startup probe has succeeded (it runs until then, not after)
    paused: dict[str, str] | None = None  # k8s-driver-manager: the deploy labels it paused, as they were
    failed: str = ""  # k8s-driver-manager: why it exited (it crash-loops; each restart tries again)
    waiting: tuple[str, float] | None = None  # k8s-driver-manager: the app whose pods it waits for, since when
    retry_at: float | None = None  # k8s-driver-manager: when its wait times out, or its restart after that
    gone: bool = False
    pod: dict[str, Any] = field(default_factory=dict)  # as last seen (its preStop runs when it goes)


def _now_wall() -> float:
    import time

    return time.time()


class NodeModel:
    """One node: its host state, and the pods on it stepped to where the specs let them get.

    ``manager_grace_seconds``: how long k8s-driver-manager waits for each app's operand pods to go (upstream's
    defaultGracePeriod, 5 minutes); past it, it sets the labels back and fails, and its restart
    (``crash_restart_seconds`` later) reads the labels and pauses them again."""

    def __init__(self, host: Host, *, driver_ready_delay: float = 0.0, crash_restart_seconds: float = 2.0,
                 manager_grace_seconds: float = 300.0) -> None:
        self.host = host
        self.driver_ready_delay = driver_ready_delay
        self.crash_restart_seconds = crash_restart_seconds
        self.manager_grace_seconds = manager_grace_seconds
        self.crash_loop = False
        self._memos: dict[str, _Memo] = {}
        self._live: dict[str, dict[str, str]] = {}  # pod uid -> files it provides while running
        self._gpu_owners: set[str] = set()
        self._gfd_owners: set[str] = set()
        self._pods: list[dict[str, Any]] = []
        self._world = World()
        self._ctrs: dict[str, tuple[list[Ctr], list[Ctr]]] = {}
        self._ctrs_version: dict[str, str] = {}
        self._labels: dict[str, str] | None = None  # the node's labels, when a step is given them
        self._node_labels: dict[str, str] = {}  # the node's labels as config-manager reads them
        self._label_patch: dict[str, str] = {}
        self._all_pods: list[dict[str, Any]] = []  # this step's pods, those being deleted too
        self._others: list[dict[str, Any]] = []  # the node's other pods (not run here: GPU workloads, GPU clients)
        self._annotations: dict[str, str] = {}
        self._evict: dict[str, dict[str, Any]] = {}

    # --- stepping ---
    def step(self, pods: Iterable[dict[str, Any]], world: World, now: float,
             wall_now: float | None = None, labels: dict[str, str] | None = None,
             annotations: dict[str, str] | None = None, others: Iterable[dict[str, Any]] = (),
             node_labels: dict[str, str] | None = None) -> StepResult:
        """Advance the node to ``now`` (monotonic seconds) with these pods (all of the node's operand pods).
        ``labels``: the node's labels, for k8s-driver-manager (without them it completes at once, unless a driver
        is on the host); ``annotations``, ``others`` (the node's pods the model does not run, which the manager
        evicts or waits for): what k8s-driver-manager reads too. ``node_labels``: the node's labels for
        config-manager (``labels`` when not given)."""
        wall = _now_wall() if wall_now is None else wall_now
        self._world = world
        self._labels = None if labels is None else dict(labels)
        self._node_labels = dict(node_labels if node_labels is not None else labels or {})
        self._label_patch = {}
        self._annotations = dict(annotations or {})
        self._others = list(others)
        self._evict = {}
        pods = sorted(pods, key=lambda p: (p["metadata"].get("creationTimestamp") or "", _name(p)))
        self._all_pods = pods
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        live_uids = {_uid(p) for p in live}
        all_uids = {_uid(p) for p in pods}
        for uid, memo in list(self._memos.items()):
            if uid not in live_uids and not memo.gone:
                self._terminate(uid, next((p for p in pods if _uid(p) == uid), memo.pod or None))
            if uid not in all_uids:
                self._memos.pop(uid, None)
                self._ctrs.pop(uid, None)
                self._ctrs_version.pop(uid, None)
        for p in live:
            uid = _uid(p)
            if uid not in self._memos:
                created = _parse_time(p["metadata"].get("creationTimestamp"))
                age = max(0.0, wall - created) if created is not None else 0.0
                self._memos[uid] = _Memo(uid, _name(p), first_seen=now, created=now - age)
            self._memos[uid].pod = p
            if uid not in self._ctrs or self._ctrs_version.get(uid) != world.version:
                self._ctrs_version[uid] = world.version
                spec = _spec(p)
                self._ctrs[uid] = (
                    [read_container(p, c, True, i, world, self.host.name) for i, c in
                     enumerate(spec.get("initContainers") or [])],
                    [read_container(p, c, False, i, world, self.host.name) for i, c in
                     enumerate(spec.get("containers") or [])])
        self._pods = live
        wake: list[float] = []
        for _ in range(50):
            before = self._fingerprint()
            wake = []
            for p in live:
                again = self._advance(p, self._memos[_uid(p)], now)
                if again is not None:
                    wake.append(again)
            if self._fingerprint() == before:
                break
        events = []
        statuses = {}
        for p in pods:
            m = self._memos.get(_uid(p))
            if m is None or m.gone:
                continue
            statuses[m.uid] = self._run_of(p, m)
            if not m.sandbox and m.need and m.need.kind in ("handler", "runtime-binary", "runtimeclass", "configmap",
                                                            "hostpath"):
                key = f"sandbox:{m.need.kind}:{m.need.target}"
                if key not in m.events:
                    m.events.add(key)
                    if m.need.kind in ("configmap", "hostpath"):
                        events.append(Event(p, "Warning", "FailedMount", m.need.message))
                    else:
                        message = (sandbox_error(m.need.target, self.host.runtime) if m.need.kind == "handler"
                                   else m.need.message)
                        events.append(Event(p, "Warning", "FailedCreatePodSandBox", message))
        return StepResult(
            statuses=statuses, events=events,
            gpus=self.host.gpus if self._gpu_owners and self.host.gpus else None,
            gfd=bool(self._gfd_owners), driver_version=self.driver_version(),
            again=min(wake) if wake else None,
            plugin_pods=frozenset(self._gpu_owners), gfd_pods=frozenset(self._gfd_owners),
            labels=dict(self._label_patch), evict=list(self._evict.values()))

    def driver_version(self) -> str | None:
        return self.host.driver_at(DRIVER_INSTALL_DIR) or self.host.driver_at("/")

    def _fingerprint(self) -> tuple[Any, ...]:
        return (
            tuple(sorted(self.host.files.items())), tuple(sorted(self.host.paths.items())),
            tuple(sorted((n, h.default, h.driver_root, h.cdi_kind, h.missing, tuple(sorted(h.owners)))
                         for n, h in self.host.handlers.items())), tuple(sorted(self.host.modules)),
            tuple(sorted(self.host.hooks)),
            tuple(sorted(self._gpu_owners)), tuple(sorted(self._gfd_owners)), self.host.driver_loaded,
            tuple(sorted(self._label_patch.items())),
            tuple((m.uid, m.sandbox, m.init_done, m.need, tuple(m.effect_needs), m.started_main,
                   tuple(sorted(m.waited)), m.probed) for m in self._memos.values()),
        )

    def _terminate(self, uid: str, pod: dict[str, Any] | None) -> None:
        """The pod goes: preStop hooks run, what it provided while running goes with it."""
        memo = self._memos[uid]
        memo.gone = True
        inits, mains = self._ctrs.get(uid, ([], []))
        if pod is not None and memo.started_main:
            for c in mains:
                for pattern in c.prestop_removes:
                    self._remove(pod, c, pattern)
        for path in self._live.pop(uid, {}):
            self.host.files.pop(path, None)
        for name, h in list(self.host.handlers.items()):
            if uid in h.owners:
                h.owners.discard(uid)
                if not h.owners:
                    del self.host.handlers[name]
        for path, h in list(self.host.hooks.items()):
            if uid in h.owners:
                del self.host.hooks[path]
                self.host.files.pop(path, None)
        self._gpu_owners.discard(uid)
        self._gfd_owners.discard(uid)

    def _remove(self, pod: dict[str, Any], c: Ctr, pattern: str) -> None:
        target, _ = host_path(pod, c.spec, posixpath.dirname(pattern))
        if target is None:
            return
        glob = posixpath.join(target, posixpath.basename(pattern))
        hidden = posixpath.basename(pattern).startswith(".")
        for path in [p for p in self.host.files if fnmatch.fnmatchcase(p, glob) and
                     posixpath.dirname(p) == target and (hidden or not posixpath.basename(p).startswith("."))]:
            del self.host.files[path]  # (as the shell globs: * does not match a leading dot)

    def _advance(self, pod: dict[str, Any], memo: _Memo, now: float) -> float | None:
        uid = memo.uid
        inits, mains = self._ctrs[uid]
        memo.effect_needs = []
        # the sandbox
        if not memo.sandbox:
            ns = pod["metadata"].get("namespace") or ""
            for v in _spec(pod).get("volumes") or []:
                cm = v.get("configMap")
                if cm and not cm.get("optional") and (ns, cm.get("name") or "") not in self._world.config_maps:
                    memo.need = Need("configmap", cm.get("name") or "", "sandbox",
                                     f'MountVolume.SetUp failed for volume "{v.get("name")}" : configmap '
                                     f'"{cm.get("name")}" not found')
                    return None
            missing = self._mount_host_paths(pod)
            if missing is not None:
                memo.need = missing
                return None
            rc = _spec(pod).get("runtimeClassName")
            runtime = next((h for h in self.host.handlers.values() if h.default), None)
            if rc:
                handler = self._world.runtime_classes.get(rc)
                if handler is None:
                    memo.need = Need("runtimeclass", rc, "sandbox",
                                     f'Failed to create pod sandbox: runtimeclass.node.k8s.io "{rc}" not found')
                    return None
                if handler not in self.host.handlers:
                    memo.need = Need("handler", handler, "sandbox")
                    return None
                runtime = self.host.handlers[handler]
            if runtime is not None and runtime.missing:  # the sandbox runs in it too
                memo.need = Need("runtime-binary", runtime.name, "sandbox", missing_runtime_error(runtime.missing, uid))
                return None
            memo.sandbox = True
        # init containers
        while memo.init_done < len(inits):
            c = inits[memo.init_done]
            if memo.entered != c.index:
                memo.entered = c.index
                self._on_start(pod, c)
            if c.spec.get("restartPolicy") == "Always":  # a sidecar: started, the next one goes
                memo.init_states[c.index] = {"running": True, "ready": True}
                memo.init_done += 1
                continue
            need, error = self._run_init(pod, c, memo, now)
            if need is None and not error:
                memo.init_states[c.index] = {"done": True}
                memo.init_done += 1
                continue
            memo.need = need
            memo.init_states[c.index] = {"error": error} if error else {"running": True, "ready": False}
            return None if memo.retry_at is None else max(0.0, memo.retry_at - now)
        memo.need = None
        memo.started_main = True
        # main containers
        wake: list[float] = []
        for c in mains:
            state, again = self._run_main(pod, c, memo, now)
            memo.main_states[c.index] = state
            if again is not None:
                wake.append(again)
        return min(wake) if wake else None

    def _mount_host_paths(self, pod: dict[str, Any]) -> Need | None:
        """The kubelet's hostPath volume setup: DirectoryOrCreate and FileOrCreate create the path, no type leaves it
        to the runtime (which creates a directory); the other types need it as that kind, else FailedMount."""
        volumes = [v for v in _spec(pod).get("volumes") or [] if v.get("hostPath")]
        for v in volumes:
            path, kind = _canonical(str(v["hostPath"].get("path") or "/")), v["hostPath"].get("type") or ""
            if kind in ("", "DirectoryOrCreate", "FileOrCreate") and self.host.path_type(path) is None:
                self.host.paths[path] = "File" if kind == "FileOrCreate" else "Directory"
        for v in volumes:
            path, kind = str(v["hostPath"].get("path") or "/"), v["hostPath"].get("type") or ""
            if kind in HOSTPATH_CHECKS and self.host.path_type(path) != kind:
                return Need("hostpath", _canonical(path), "sandbox",
                            f'MountVolume.SetUp failed for volume "{v.get("name")}" : hostPath type check failed: '
                            f"{path} is not {HOSTPATH_CHECKS[kind]}")
        return None

    # --- containers ---
    def _validator_env(self, c: Ctr) -> tuple[dict[str, str], str]:
        """The validator's settings (env, then flags) and a flag error."""
        env = dict(c.env)
        args = list(c.args)
        i = 0
        while i < len(args):
            a = args[i]
            if not a.startswith("-") or a in ("-", "--"):
                i += 1
                continue
            name, eq, value = a.lstrip("-").partition("=")
            if name not in VALIDATOR_FLAGS:
                return env, f"flag provided but not defined: -{name}"
            if not eq:
                if name in VALIDATOR_BOOL_FLAGS:
                    value = "true"
                elif i + 1 < len(args):
                    i += 1
                    value = args[i]
            if VALIDATOR_FLAGS[name]:
                env[VALIDATOR_FLAGS[name]] = value
            i += 1
        return env, ""

    def _user(self, pod: dict[str, Any], c: Ctr) -> int:
        sc = c.spec.get("securityContext") or {}
        psc = _spec(pod).get("securityContext") or {}
        for v in (sc.get("runAsUser"), psc.get("runAsUser")):
            if v is not None:
                return int(v)
        return VALIDATOR_IMAGE_USER if c.role == VALIDATOR else 0

    def _write(self, pod: dict[str, Any], c: Ctr, path: str, content: str = "") -> str:
        """Write a file from a container: "" or the error."""
        target, problem = host_path(pod, c.spec, path, write=True)
        if problem:
            return problem
        if self._user(pod, c) != 0:
            return f"open {path}: permission denied"
        if target is not None:
            self.host.files[target] = content
        return ""

    def _on_start(self, pod: dict[str, Any], c: Ctr) -> None:
        """A validator deletes its status file before it validates."""
        if c.role != VALIDATOR:
            return
        env, _ = self._validator_env(c)
        name = STATUS_FILES.get(env.get("COMPONENT", ""))
        if name:
            target, _ = host_path(pod, c.spec, posixpath.join(env.get("OUTPUT_DIR") or VALIDATIONS, name))
            if target is not None:
                self.host.files.pop(target, None)

    def _script_need(self, pod: dict[str, Any], c: Ctr) -> Need | None:
        for path in c.script.waits:
            target, _ = host_path(pod, c.spec, path)
            if not self.host.has(target):
                return Need("file", target or f"{path} (in the container only)", c.where)
        return None

    def _run_init(self, pod: dict[str, Any], c: Ctr, memo: _Memo, now: float) -> tuple[Need | None, str]:
        need = self._script_need(pod, c)
        if need:
            return need, ""
        if c.role == VALIDATOR:
            return self._run_validator(pod, c, memo)
        if c.role == DRIVER_MANAGER:
            return self._run_driver_manager(pod, c, memo, now)
        if c.role == CONFIG_MANAGER:
            return self._run_config_manager(pod, c)
        return None, ""

    def _run_config_manager(self, pod: dict[str, Any], c: Ctr) -> tuple[Need | None, str]:
        """config-manager at pod start (k8s-device-plugin cmd/config-manager; advertise.config_key): it picks the
        file in CONFIG_FILE_SRCDIR (the ConfigMap mounted there; another volume holds no files here) that the
        node's NODE_LABEL names, else DEFAULT_CONFIG, else a fallback, and exits when there is none to pick."""
        from e2e import advertise as adv
        from gpu_operator import sharing

        srcdir = posixpath.normpath(c.env.get("CONFIG_FILE_SRCDIR") or "/")
        mount = next((m for m in c.spec.get("volumeMounts") or []
                      if posixpath.normpath(m.get("mountPath") or "/") == srcdir and not m.get("subPath")), None)
        volume: dict[str, Any] = next((v for v in _spec(pod).get("volumes") or []
                                       if mount and v.get("name") == mount.get("name")), {})
        files: dict[str, str] = {}
        cm = volume.get("configMap")
        if cm:
            data = self._world.config_maps.get((pod["metadata"].get("namespace") or "", cm.get("name") or "")) or {}
            items = cm.get("items")
            files = {i.get("path") or "": data[i["key"]] for i in items if i.get("key") in data} if items else data
        chosen = adv.config_key(files, self._node_labels, c.env.get("NODE_LABEL") or sharing.NODE_LABEL,
                                c.env.get("DEFAULT_CONFIG", ""), c.env.get("FALLBACK_STRATEGIES") or "empty")
        if chosen.error:
            return Need("error", "", c.where, chosen.error), chosen.error
        return None, ""

    def _run_driver_manager(self, pod: dict[str, Any], c: Ctr, memo: _Memo, now: float) -> tuple[Need | None, str]:
        """k8s-driver-manager uninstall_driver (see MANAGER_PAUSES): a driver on the host labels the node
        pre-installed and fails; with a driver loaded, pause the operands' deploy labels, wait for their pods to go
        (each app's for up to ``manager_grace_seconds``, else set the labels back and fail); then, when the loaded
        driver has this pod's DRIVER_CONFIG_DIGEST (shouldSkipUninstall), set the labels back and keep it; else
        evict the GPU pods (nvDrainNode: none when the drain filters refuse one), unload the driver (a GPU pod
        left holds it: fail, or drain the node with ENABLE_AUTO_DRAIN), set the labels back."""
        flags, bad = manager_flags(c.env)
        if bad:  # urfave/cli refused a flag's value: it exits before it reads anything
            return Need("error", "", c.where, bad), bad
        labels = self._labels
        host_smi, _ = host_path(pod, c.spec, "/host/" + NVIDIA_SMI)
        if host_smi is not None and self.host.files.get(host_smi):  # isHostDriver: chroot /host nvidia-smi
            if labels is not None:
                self._set_labels({_DEPLOY + "driver": "pre-installed"})
            return Need("error", "", c.where, "driver is pre-installed on host"), "driver is pre-installed on host"
        if labels is None:
            return None, ""  # no node labels given (offline): nothing to evict
        gpu_pods = [p for p in self._all_pods + self._others if uses_gpu(p)]
        policy = self._annotations.get(UPGRADE_ENABLED_ANNOTATION) == "true"  # the upgrade policy evicts instead
        eviction = not policy and flags["ENABLE_GPU_POD_EVICTION"]
        auto_drain = not policy and flags["ENABLE_AUTO_DRAIN"]
        force, empty_dir = flags["DRAIN_USE_FORCE"], flags["DRAIN_DELETE_EMPTYDIR_DATA"]
        # up front only with eviction on (or auto-drain beside a DRA driver); auto-drain alone follows a failed unload
        up_front = eviction or (auto_drain and bool(labels.get(MANAGER_RESTORES_TOO)))
        deletable = all(drain_status(p, force=force, delete_empty_dir=empty_dir, ignore_daemonsets=True)[0]
                        for p in gpu_pods)  # nvDrainNode's filters pass every GPU pod
        # each restart runs it again; the model runs it again once that gets further than the last failure
        if memo.failed == GPU_PODS_LEFT:
            retry = deletable
        elif memo.failed.startswith(DRAIN_FAILED):
            retry = (not gpu_pods and _privileged(c.spec)) or (bool(gpu_pods) and up_front and deletable) or \
                not self._drain_pods(c, force, empty_dir)[0]
        elif memo.failed.endswith(UNLOAD_BUSY):
            retry = not gpu_pods and _privileged(c.spec)
        else:
            retry = memo.failed == WAIT_TIMED_OUT and memo.retry_at is not None and now >= memo.retry_at
        if memo.failed and not retry:
            return Need("error", "", c.where, memo.failed), memo.failed  # crash-looping
        memo.failed = ""
        memo.retry_at = None
        custom = c.env.get("NODE_LABEL_FOR_GPU_POD_EVICTION", "")
        if memo.paused is None:
            keys = list(MANAGER_PAUSES) + [k for k in (*MANAGER_PAUSES_WHEN_SET, custom) if k and labels.get(k)]
            if not self.host.driver_loaded:  # rescheduleGPUOperatorComponents from what is there
                self._set_labels({k: unpaused_value(labels.get(k, "")) for k in [*keys, MANAGER_RESTORES_TOO]})
                return None, ""
            memo.paused = {k: labels.get(k, "") for k in keys}
            self._set_labels({k: paused_value(v) for k, v in memo.paused.items()})
        # waitForPodsToTerminate: one app after another (upstream's order), each for up to the grace period
        apps = [*MANAGER_WAITS_FOR, *(app for k, app in MANAGER_WAITS_WHEN_SET.items() if memo.paused.get(k))]
        by_app = {app: sorted(_name(p) for p in self._all_pods
                              if (p["metadata"].get("labels") or {}).get("app") == app) for app in apps}
        if memo.paused.get(_DEPLOY + "client"):  # WaitForPodsWithNodeSelector: DaemonSet pods selecting the label
            by_app[_DEPLOY + "client"] = sorted(
                _name(p) for p in self._all_pods + self._others if _DEPLOY + "client" in
                (_spec(p).get("nodeSelector") or {}) and any(
                    o.get("controller") and o.get("kind") == "DaemonSet"
                    for o in p["metadata"].get("ownerReferences") or []))
        staying = sorted(n for a, names in by_app.items() if a in apps for n in names) + \
            by_app.get(_DEPLOY + "client", [])
        if staying:
            app = next(a for a, names in by_app.items() if names)
            if memo.waiting is None or memo.waiting[0] != app:
                memo.waiting = (app, now)
            memo.retry_at = memo.waiting[1] + self.manager_grace_seconds
            if now < memo.retry_at:
                return Need("evict", ", ".join(staying), c.where), ""
            memo.failed, memo.retry_at = WAIT_TIMED_OUT, now + self.crash_restart_seconds
            return self._manager_failed(c, memo, labels)
        memo.waiting = memo.retry_at = None
        state_file, _ = host_path(pod, c.spec, DRIVER_STATE_FILE)
        digest = c.env.get(CONFIG_DIGEST, "")
        if digest and state_file is not None and self.host.files.get(state_file, "").strip() == digest and \
                not flags["FORCE_REINSTALL"]:  # shouldSkipUninstall: no eviction, no unload
            return self._manager_done(memo, labels)
        if gpu_pods and up_front:  # nvDrainNode
            if deletable:  # the node cordoned, its GPU pods deleted
                self._evict.update({_uid(p): p for p in gpu_pods if not p["metadata"].get("deletionTimestamp")})
                return Need("evict", ", ".join(sorted(_name(p) for p in gpu_pods)), c.where,
                            "k8s-driver-manager deletes the GPU pods"), ""
            if not auto_drain:  # "failed to delete all GPU pods": fewer can go than use GPUs
                memo.failed = GPU_PODS_LEFT
                return self._manager_failed(c, memo, labels)
            drained = self._drain_node(c, memo, labels, force, empty_dir)
            if drained is not None:
                return drained
        if gpu_pods or not _privileged(c.spec):  # cleanupDriver: delete_module fails (EBUSY, or EPERM)
            reason = UNLOAD_BUSY if gpu_pods else UNLOAD_EPERM
            if not auto_drain:
                memo.failed = "failed to uninstall nvidia driver components: " + reason
                return self._manager_failed(c, memo, labels)
            drained = self._drain_node(c, memo, labels, force, empty_dir)  # then cleanupDriver again
            if drained is not None:
                return drained
            memo.failed = "failed to cleanup NVIDIA driver: " + reason
            return self._manager_failed(c, memo, labels)
        self.host.driver_loaded = False  # cleanupDriver: the modules unloaded
        self.host.modules.clear()
        return self._manager_done(memo, labels)

    def _drain_node(self, c: Ctr, memo: _Memo, labels: dict[str, str], force: bool,
                    empty_dir: bool) -> tuple[Need | None, str] | None:
        """DrainNode (drain.RunNodeDrain, DaemonSet pods not ignored): the node's pods DRAIN_POD_SELECTOR_LABEL
        selects (all when empty) are deleted, or none is when the drain filters refuse one: fail "failed to drain
        node". None once those it deletes are gone."""
        memo.failed, going = self._drain_pods(c, force, empty_dir)
        if memo.failed:
            return self._manager_failed(c, memo, labels)
        if going:
            self._evict.update({_uid(p): p for p in going if not p["metadata"].get("deletionTimestamp")})
            return Need("evict", ", ".join(sorted(_name(p) for p in going)), c.where,
                        "k8s-driver-manager drains the node"), ""
        return None

    def _drain_pods(self, c: Ctr, force: bool, empty_dir: bool) -> tuple[str, list[dict[str, Any]]]:
        """DrainNode's GetPodsForDeletion: its error ("failed to drain node: ..."), or "" and the pods it deletes."""
        from gpu_operator.upgrade.selector import SelectorError, parse_selector

        try:
            selector = parse_selector(c.env.get("DRAIN_POD_SELECTOR_LABEL", ""))
        except SelectorError as e:
            return f"{DRAIN_FAILED}{e}", []
        refused: dict[str, list[str]] = {}
        going = []
        for p in sorted(self._all_pods + self._others, key=lambda p: (p["metadata"].get("namespace") or "", _name(p))):
            if not selector.matches(p["metadata"].get("labels") or {}):
                continue
            ok, error = drain_status(p, force=force, delete_empty_dir=empty_dir, ignore_daemonsets=False)
            if error:
                refused.setdefault(error, []).append(f"{p['metadata'].get('namespace') or ''}/{_name(p)}")
            elif ok:
                going.append(p)
        if refused:  # GetPodsForDeletion's errors (utilerrors.NewAggregate)
            errors = [f"cannot delete {why}: {', '.join(names)}" for why, names in refused.items()]
            return DRAIN_FAILED + (errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]"), []
        return "", going

    def _manager_done(self, memo: _Memo, labels: dict[str, str]) -> tuple[Need | None, str]:
        """rescheduleGPUOperatorComponents: the labels set back from the values it read; it exits 0."""
        assert memo.paused is not None
        restore = {**memo.paused, MANAGER_RESTORES_TOO: labels.get(MANAGER_RESTORES_TOO, "")}
        self._set_labels({k: unpaused_value(v) for k, v in restore.items()})
        return None, ""

    def _manager_failed(self, c: Ctr, memo: _Memo, labels: dict[str, str]) -> tuple[Need | None, str]:
        """cleanupOnFailure: the labels set back from the values it read; it exits with ``memo.failed``."""
        assert memo.paused is not None
        restore = {**memo.paused, MANAGER_RESTORES_TOO: labels.get(MANAGER_RESTORES_TOO, "")}
        self._set_labels({k: unpaused_value(v) for k, v in restore.items()})
        memo.paused = memo.waiting = None
        return Need("error", "", c.where, memo.failed), memo.failed

    def _set_labels(self, want: dict[str, str]) -> None:
        """k8s-driver-manager's label writes (UpdateNodeLabels: every key it names, even an unchanged one)."""
        assert self._labels is not None
        self._labels.update(want)
        self._label_patch.update(want)

    def _run_main(self, pod: dict[str, Any], c: Ctr, memo: _Memo, now: float) -> tuple[dict[str, Any], float | None]:
        uid = memo.uid
        if (c.role == DRIVER or c.module) and not _privileged(c.spec):  # no CAP_SYS_MODULE: it cannot insmod
            error = f"modprobe: ERROR: could not insert '{c.module or 'nvidia'}': Operation not permitted"
            memo.effect_needs.append(Need("error", "", c.where, error))
            return {"error": error, "restarts": 1}, None
        if c.probe_writes:  # a driver-like container: started after the delay, or crash-looping
            if self.crash_loop:
                if memo.crash is None:
                    memo.crash = (now, memo.restarts)
                start, base = memo.crash
                elapsed = max(0.0, now - start)
                period = self.crash_restart_seconds
                memo.restarts = max(base + 1 + int(elapsed // period), memo.restarts)
                memo.probed = False
                memo.waited.clear()
                self._drop_live(uid)
                return {"crash": memo.restarts}, period - (elapsed % period)
            memo.crash = None
            ready_at = min(memo.first_seen, memo.created + 1.0) + self.driver_ready_delay
            if now < ready_at:
                self._drop_live(uid)
                return {"running": True, "ready": False, "restarts": memo.restarts}, ready_at - now
            if not memo.probed:
                memo.probed = True
                for path in c.probe_writes:
                    self._write(pod, c, path, c.probe_contents.get(path, ""))
        state: dict[str, Any] = {"running": True, "ready": True, "restarts": memo.restarts}
        if c.index not in memo.waited:  # the script's loops run once, before what it then starts
            need = self._script_need(pod, c)
            if need:
                memo.effect_needs.append(need)
                return state, None
            memo.waited.add(c.index)
        if c.role == DRIVER:
            self.host.driver_loaded = True
            state_file, _ = host_path(pod, c.spec, DRIVER_STATE_FILE, write=True)
            if state_file is not None:  # _store_driver_digest (a new pod with the same digest: userspace only)
                self.host.files[state_file] = c.env.get(CONFIG_DIGEST, "")
            version = driver_version_from_image(str(c.spec.get("image") or "")) or "0.0"
            target, _ = host_path(pod, c.spec, DRIVER_INSTALL_DIR)
            unpropagated = _unpropagated_driver_root(c.spec) if target is not None else ""
            if unpropagated:  # it runs, and the validator never finds the driver
                memo.effect_needs.append(Need("error", "", c.where, unpropagated))
            elif target is not None:  # its root file system: nvidia-smi, and the sources the sidecars build against
                for path in (posixpath.join(target, NVIDIA_SMI), posixpath.join(target, f"usr/src/nvidia-{version}")):
                    self.host.files[_canonical(path)] = version
                    self._live.setdefault(uid, {})[_canonical(path)] = version
        elif c.module:
            self.host.modules.add(c.module)
        elif c.role == TOOLKIT:
            error, exits = self._install_toolkit(pod, c, uid)
            if error:
                return {"error": error, "restarts": 1}, None
            if exits:
                return {"completed": True}, None  # exit code 0, restarted: CrashLoopBackOff
        elif c.role in (DEVICE_PLUGIN, GFD, NVML_USER):
            if -1 - c.index not in memo.waited:  # at start: the kubelet's socket directory, NVML, the CDI spec
                failed = self._plugin_start(pod, c) if c.role == DEVICE_PLUGIN else None
                failed = failed or self._nvml(pod, c)
                if failed is None and c.role == DEVICE_PLUGIN:
                    failed = self._plugin_cdi_spec(pod, c)
                if failed is None and c.role == GFD and self._gfd_output(pod, c)[1]:
                    failed = Need("error", "", c.where, self._gfd_output(pod, c)[0])
                if failed is not None:
                    memo.effect_needs.append(failed)
                    return {"error": failed.message, "restarts": 1}, None
                memo.waited.add(-1 - c.index)
            if c.role == NVML_USER:  # it runs; the model tracks nothing it serves
                return state, None
            problem = self._plugin_registration(pod, c) if c.role == DEVICE_PLUGIN else self._gfd_output(pod, c)[0]
            if problem:  # it runs (the plugin tries again every 30 s; GFD's labels stay where NFD does not look)
                (self._gpu_owners if c.role == DEVICE_PLUGIN else self._gfd_owners).discard(uid)
                memo.effect_needs.append(Need("error", "", c.where, problem))
                return state, None
            (self._gpu_owners if c.role == DEVICE_PLUGIN else self._gfd_owners).add(uid)
        elif c.role == VALIDATOR:
            env, flag_error = self._validator_env(c)
            error = flag_error or self._validator_flags(env)
            if error:
                return {"error": error, "restarts": 1}, None
            if env.get("COMPONENT") != "metrics":  # the others validate and exit
                need, error = self._run_validator(pod, c, memo)
                if need or error:
                    memo.effect_needs.append(need or Need("error", "", c.where, error))
                    return ({"error": error, "restarts": 1} if error else state), None
                return {"completed": True}, None
        return state, None

    def _drop_live(self, uid: str) -> None:
        for path in self._live.pop(uid, {}):
            self.host.files.pop(path, None)

    # --- nvidia-validator ---
    def _validator_flags(self, env: dict[str, str]) -> str:
        component = env.get("COMPONENT", "")
        if not component:
            return "invalid -c <component-name> flag: must not be empty string"
        if component not in VALID_COMPONENTS:
            return f"invalid -c <component-name> flag value: {component}"
        if component == "plugin" and not env.get("NODE_NAME"):
            return "invalid -n <node-name> flag: must not be empty string for plugin validation"
        if component in ("plugin", "cuda") and not env.get("OPERATOR_NAMESPACE"):
            return f"invalid -ns <namespace> flag: must not be empty string for {component} validation"
        if component == "metrics":
            if env.get("METRICS_PORT", "0") in ("", "0"):
                return "invalid -p <port> flag: must not be empty or 0 for the metrics component"
            if not env.get("NODE_NAME"):
                return "invalid -n <node-name> flag: must not be empty string for metrics exporter"
        return ""

    def _run_validator(self, pod: dict[str, Any], c: Ctr, memo: _Memo) -> tuple[Need | None, str]:
        env, flag_error = self._validator_env(c)
        error = flag_error or self._validator_flags(env)
        if error:
            return Need("error", "", c.where, error), error
        component = env["COMPONENT"]
        wait = _bool(env.get("WITH_WAIT"), False)
        need: Need | None = None
        content = ""
        out_dir = env.get("OUTPUT_DIR") or VALIDATIONS
        if component == "driver":
            need, content, features = self._driver_check(pod, c)
            for feature in features if need is None else []:  # each validated feature writes its status file
                error = self._write(pod, c, posixpath.join(out_dir, STATUS_FILES[feature]))
                if error:
                    msg = f"unable to create status file {posixpath.join(out_dir, STATUS_FILES[feature])}: {error}"
                    return Need("error", "", c.where, msg), msg
            if need is None and not _bool(env.get("DISABLE_DEV_CHAR_SYMLINK_CREATION"), False):
                links, problem = host_path(pod, c.spec, "/host-dev-char", write=True)
                if links is None or problem:
                    msg = ("error creating symlinks: open /host-dev-char: no such file or directory: Failed to "
                           "create symlinks under /dev/char that point to all possible NVIDIA character devices")
                    return Need("error", "", c.where, msg), msg
                self.host.files[posixpath.join(links, "nvidia-symlinks")] = ""
        elif component == "toolkit":
            runtime = self._gpu_runtime(pod, c)
            if runtime is None:
                need = Need("gpu-runtime", "", c.where,
                            'toolkit is not ready: exec: "nvidia-smi": executable file not found in $PATH')
            elif not self.host.driver_at(runtime.driver_root):
                need = Need("file", _canonical(posixpath.join(runtime.driver_root, NVIDIA_SMI)), c.where,
                            f"toolkit is not ready: runtime {runtime.name} finds no driver under {runtime.driver_root}")
            else:  # (the container is not even created)
                need = self._cdi_need(runtime, c.where, "")
        elif component in FEATURE_MODULES:
            need = self._module_need(component, c.where)
        elif component in ("cuda", "plugin"):
            if component == "plugin" and not (self._gpu_owners and self.host.gpus):
                return Need("gpu-resource", GPU_RESOURCE, c.where), ""  # it retries for a while
            if _bool(env.get("WITH_WORKLOAD"), True):
                need = self._workload(pod, c, env, component, memo)
                if need is not None and need.kind == "error":
                    return need, need.message
        if need is not None:
            if need.kind == "error":
                return need, need.message
            if wait or need.kind in ("handler", "gpu-resource"):
                return need, ""
            return need, need.message or f"{component} is not ready: {need.describe()}"
        name = STATUS_FILES.get(component)
        if name:
            error = self._write(pod, c, posixpath.join(out_dir, name), content)
            if error:
                msg = f"unable to create status file {posixpath.join(out_dir, name)}: {error}"
                return Need("error", "", c.where, msg), msg
        return None, ""

    def _driver_check(self, pod: dict[str, Any], c: Ctr) -> tuple[Need | None, str, list[str]]:
        """The driver component's check: (what it waits for, the driver-ready content once it passes, the
        .driver-ctr-ready features it validated too)."""
        env, _ = self._validator_env(c)
        # nvidia-smi opens /dev/nvidia*, which the device cgroup of an unprivileged container refuses
        privileged = _privileged(c.spec)
        host_root, _ = host_path(pod, c.spec, "/host")
        if host_root is not None and self.host.driver_at(host_root) and privileged:
            host_root_flag = env.get("HOST_ROOT") or "/"
            return None, _driver_ready(True, host_root_flag), []
        managed = self._driver_managed(env.get("OPERATOR_NAMESPACE", ""))
        ready, _ = host_path(pod, c.spec, DRIVER_CTR_READY)
        if managed and not self.host.has(ready):
            return Need("file", ready or f"{DRIVER_CTR_READY} (in the container only)", c.where,
                        "error checking driver container status: exit status 1"), "", []
        ctr_root = env.get("DRIVER_INSTALL_DIR_CTR_PATH") or DRIVER_INSTALL_DIR
        root, _ = host_path(pod, c.spec, ctr_root)
        if root is None or not self.host.driver_at(root):
            where = _canonical(posixpath.join(root, NVIDIA_SMI)) if root else f"{ctr_root} (in the container only)"
            return Need("file", where, c.where, "error validating driver: failed to locate nvidia-smi"), "", []
        if not privileged:
            denied = ("error validating driver: exit status 4 (nvidia-smi: Insufficient Permissions: an unprivileged "
                      "container cannot open /dev/nvidia*)")
            return Need("privileged", "", c.where, denied), "", []
        features: list[str] = []
        if managed:  # validateAdditionalDriverComponents
            features, error = driver_ctr_features(self.host.files.get(str(ready), ""))
            if error:
                return Need("error", "", c.where, f"error validating driver installation: {error}"), "", []
            for feature in features:
                need = self._module_need(feature, c.where)
                if need is not None:
                    return need, "", []
        return None, _driver_ready(False, env.get("DRIVER_INSTALL_DIR") or DRIVER_INSTALL_DIR), features

    def _module_need(self, component: str, where: str) -> Need | None:
        """The nvidia-fs, gdrcopy and nvidia-peermem components: `lsmod | grep <module>`."""
        module = FEATURE_MODULES[component]
        if module in self.host.modules:
            return None
        return Need("module", module, where, f"error validating {component} driver installation: exit status 1")

    def _driver_managed(self, namespace: str) -> bool:
        key, value = DRIVER_COMPONENT_LABEL
        for ds in self._world.daemonsets:
            meta = ds.get("metadata") or {}
            if namespace and meta.get("namespace") != namespace:
                continue
            if (meta.get("labels") or {}).get(key) != value:
                continue
            for ref in meta.get("ownerReferences") or []:
                if ref.get("controller") and str(ref.get("apiVersion", "")).startswith("nvidia.com/") and \
                        ref.get("kind") in ("ClusterPolicy", "NVIDIADriver"):
                    return True
        return False

    def _gpu_runtime(self, pod: dict[str, Any], c: Ctr) -> Handler | None:
        """The handler that gives this container GPUs, if any (and it asks for them)."""
        visible = c.env.get("NVIDIA_VISIBLE_DEVICES", "void" if c.role == VALIDATOR else "all")
        if visible.strip().lower() in ("", "void", "none"):
            return None
        return self._runtime_for(_spec(pod).get("runtimeClassName"))

    def _runtime_for(self, runtime_class: str | None) -> Handler | None:
        if runtime_class:
            handler = self.host.handlers.get(self._world.runtime_classes.get(runtime_class, ""))
            if handler is not None and handler.nvidia:
                return handler
        else:
            default = next((h for h in self.host.handlers.values() if h.default), None)
            if default is not None:
                return default
        if self.host.runtime == CRIO and self.host.hooks:
            return next(iter(self.host.hooks.values()))
        return None

    def _workload(self, pod: dict[str, Any], c: Ctr, env: dict[str, str], component: str,
                  memo: _Memo) -> Need | None:
        """The cuda/plugin workload pod: accepted by the API server, started, and given GPUs."""
        namespace = env["OPERATOR_NAMESPACE"]
        validator_ds = next((d for d in self._world.daemonsets if (d.get("metadata") or {}).get("namespace") ==
                             namespace and d["metadata"].get("name") == "nvidia-operator-validator"), None)
        if validator_ds is None:
            msg = ('unable to retrieve the operator validator daemonset: daemonsets.apps "nvidia-operator-validator" '
                   'not found')
            return Need("error", "", c.where, msg)
        workload = workload_pod(component, namespace, self.host.name, env, validator_ds)
        key = f"{c.where}"
        if key not in memo.dry_runs:
            memo.dry_runs[key] = self._world.dry_run(workload)
        rejected = memo.dry_runs[key]
        if rejected:
            # (upstream prints the pod's name, empty before the API server generates one)
            return Need("error", "", c.where, f"failed to create {component} validation pod "
                        f"{workload['metadata'].get('name', '')}, err {rejected}")
        rc = env.get("VALIDATOR_RUNTIME_CLASS") or None
        if rc:
            handler = self._world.runtime_classes.get(rc)
            if handler is None or handler not in self.host.handlers:
                return Need("handler", handler or rc, c.where)  # the workload pod waits in ContainerCreating
        gave_up = f"gave up waiting for pod {workload['metadata']['generateName']} to be available: "
        runtime = self._runtime_for(rc)
        if runtime is None:
            return Need("gpu-runtime", "", c.where,
                        f"{gave_up}vectorAdd found no CUDA device (runtime class {rc or 'none'} injects no GPUs)")
        if runtime.missing:
            return Need("runtime-binary", runtime.name, c.where,
                        gave_up + missing_runtime_error(runtime.missing, workload["metadata"]["generateName"]))
        if not self.host.driver_at(runtime.driver_root):
            return Need("file", _canonical(posixpath.join(runtime.driver_root, NVIDIA_SMI)), c.where,
                        f"the workload pod finds no driver under {runtime.driver_root}")
        cdi, visible = self._allocations() if component == "plugin" else (False, True)
        if cdi and PLUGIN_CDI_KIND not in self.host.cdi_kinds():  # the plugin's devices are CDI names only
            return Need("file", _canonical(PLUGIN_CDI_SPEC), c.where,
                        f"{gave_up}failed to create containerd container: CDI device injection failed: unresolvable "
                        f"CDI devices {PLUGIN_CDI_KIND}=GPU-<uuid>")
        return self._cdi_need(runtime, c.where, gave_up) if visible else None

    def _nvml(self, pod: dict[str, Any], c: Ctr) -> Need | None:
        runtime = self._gpu_runtime(pod, c)
        if runtime is None or not self.host.driver_at(runtime.driver_root):
            return Need("gpu-runtime", "", c.where, "failed to initialize NVML: ERROR_LIBRARY_NOT_FOUND")
        return self._cdi_need(runtime, c.where, "")

    def _cdi_need(self, runtime: Handler, where: str, prefix: str) -> Need | None:
        """A runtime in cdi mode turns NVIDIA_VISIBLE_DEVICES=all into <its kind>=all, which a spec must resolve."""
        if not runtime.cdi_kind or runtime.cdi_kind in self.host.cdi_kinds():
            return None
        return Need("file", _cdi_spec_path(runtime.cdi_kind), where,
                    f"{prefix}failed to create containerd task: OCI runtime create failed: failed to inject CDI "
                    f"devices: unresolvable CDI devices {runtime.cdi_kind}=all")

    # --- k8s-device-plugin ---
    @staticmethod
    def _plugin_setting(c: Ctr, flag: str, env: str, default: str) -> str:
        value = _flag(c.args, flag)
        return value if value is not None else c.env.get(env, default)

    def _plugin_cdi(self, c: Ctr) -> tuple[bool, bool]:
        """(its Allocate names CDI devices, it sets NVIDIA_VISIBLE_DEVICES too) from its device-list strategy."""
        strategies = [s.strip() for s in self._plugin_setting(c, "device-list-strategy", "DEVICE_LIST_STRATEGY",
                                                              "envvar").split(",") if s.strip()]
        cdi = [s.startswith("cdi-") for s in strategies]
        return any(cdi), not all(cdi)

    def _plugin_start(self, pod: dict[str, Any], c: Ctr) -> Need | None:
        """start(): it watches the kubelet socket's directory first, and exits when that does not exist."""
        socket = self._plugin_setting(c, "kubelet-socket", "KUBELET_SOCKET", KUBELET_SOCKET)
        if socket and not _mounted(c.spec, posixpath.dirname(socket)):
            return Need("error", "", c.where, f"failed to create FS watcher for {DEVICE_PLUGIN_PATH}/: no such file "
                                              "or directory")
        return None

    def _plugin_cdi_spec(self, pod: dict[str, Any], c: Ctr) -> Need | None:
        """With a cdi-* strategy it writes its spec under /var/run/cdi (CreateSpecFile; nothing removes it)."""
        if not self._plugin_cdi(c)[0]:
            return None
        target, problem = host_path(pod, c.spec, PLUGIN_CDI_SPEC, write=True)
        if problem:
            return Need("error", "", c.where, f"unable to create cdi spec file: failed to save CDI spec: {problem}")
        if target is not None:
            self.host.files[target] = PLUGIN_CDI_KIND
        return None

    def _plugin_registration(self, pod: dict[str, Any], c: Ctr) -> str:
        """Why the kubelet does not learn of the plugin's resource: Register dials the kubelet socket, and the kubelet
        then dials the plugin's socket, which it serves in DEVICE_PLUGIN_PATH."""
        socket = self._plugin_setting(c, "kubelet-socket", "KUBELET_SOCKET", KUBELET_SOCKET)
        if not socket:
            return "Skipping registration with Kubelet (the kubelet socket is empty)"
        if host_path(pod, c.spec, socket)[0] != KUBELET_SOCKET:
            return (f"Could not register device plugin: context deadline exceeded (no kubelet at {socket}); "
                    "retrying in 30s")
        if host_path(pod, c.spec, DEVICE_PLUGIN_PATH)[0] != DEVICE_PLUGIN_PATH:
            return (f"the kubelet cannot reach the plugin's socket: {DEVICE_PLUGIN_PATH} in the container is not "
                    "the host's")
        return ""

    # --- gpu-feature-discovery ---
    def _gfd_output(self, pod: dict[str, Any], c: Ctr) -> tuple[str, bool]:
        """Why GFD's labels do not reach the node ("" when they do), and whether it exits on it. It writes them to
        --output-file (-o, GFD_OUTPUT_FILE; empty: stdout), which nfd-worker reads only in the host's features.d;
        with --use-node-feature-api (GFD_USE_NODE_FEATURE_API) it creates a NodeFeature object instead."""
        api = next((a.partition("=") for a in c.args if a.lstrip("-").partition("=")[0] == "use-node-feature-api"),
                   None)
        if _bool(c.env.get("GFD_USE_NODE_FEATURE_API") if api is None else (api[2] if api[1] else "true"), False):
            return "", False
        out = next((v for name in ("output-file", "output", "o") if (v := _flag(c.args, name)) is not None),
                   c.env.get("GFD_OUTPUT_FILE", GFD_OUTPUT_FILE))
        if not out:
            return "its labels go to stdout (the output file is empty), not to nfd-worker", False
        target, problem = host_path(pod, c.spec, out, write=True)
        if problem:
            return f"error writing labels to {out}: {problem}", True
        if target is None or posixpath.dirname(target) != NFD_FEATURES_DIR:
            return (f"its labels file {out} is {target or 'in the container only'}, not in the host's "
                    f"{NFD_FEATURES_DIR}, where nfd-worker reads them"), False
        return "", False

    def _allocations(self) -> tuple[bool, bool]:
        """What a GPU pod's Allocate gets from the running device plugins: (CDI devices, NVIDIA_VISIBLE_DEVICES)."""
        cdi = env = False
        for uid in self._gpu_owners:
            for c in self._ctrs.get(uid, ([], []))[1]:
                if c.role == DEVICE_PLUGIN:
                    names_cdi, sets_env = self._plugin_cdi(c)
                    cdi, env = cdi or names_cdi, env or sets_env
        return cdi, env

    # --- the toolkit installer ---
    def _install_toolkit(self, pod: dict[str, Any], c: Ctr, uid: str) -> tuple[str, str]:
        """Run the installer: (why it fails, why it exits 0 early)."""
        env = self._sourced_env(pod, c)
        spec, kind, error = toolkit_cdi_spec(pod, c, env)  # first, whatever the runtime config then does
        if error:
            return error, ""
        if spec is not None:
            self.host.files[spec] = kind  # (the installer's cleanup leaves it)
        plan = toolkit_plan(pod, c, self.host, env)
        if plan.error:
            return plan.error, ""
        for path in plan.writes:
            self.host.files[path] = "nvidia runtimes"
        for planned in plan.handlers:
            have = self.host.handlers.get(planned.name)
            if have is None or not have.nvidia:
                have = self.host.handlers[planned.name] = Handler(planned.name, True)
            have.driver_root, have.default, have.cdi_kind = planned.driver_root, planned.default, planned.cdi_kind
            have.missing = planned.missing
            have.owners.add(uid)
        if plan.hook:
            self.host.hooks[plan.hook.name] = Handler("oci-hook", True, plan.hook.driver_root, False, {uid})
            self.host.files[plan.hook.name] = "nvidia hook"
        return "", plan.exits

    def _sourced_env(self, pod: dict[str, Any], c: Ctr) -> dict[str, str]:
        """The installer's environment: the container's, plus files the script sources under allexport."""
        env = dict(c.env)
        for path, exported in c.script.sources:
            if not exported:
                continue
            target, _ = host_path(pod, c.spec, path)
            content = self.host.files.get(target or "")
            for line in (content or "").splitlines():
                name, eq, value = line.partition("=")
                if eq and re.fullmatch(r"\w+", name):
                    env[name] = value
        return env

    # --- statuses ---
    def _run_of(self, pod: dict[str, Any], memo: _Memo) -> dict[str, Any]:
        inits, mains = self._ctrs[memo.uid]
        has_init = bool(inits)
        default = "PodInitializing" if has_init else "ContainerCreating"
        init_statuses: list[dict[str, Any]] = []
        main_statuses: list[dict[str, Any]] = []
        for c in inits:
            if not memo.sandbox or c.index > memo.init_done or (c.index == memo.init_done and
                                                                c.index not in memo.init_states):
                init_statuses.append(_waiting(c.spec, "PodInitializing"))
                continue
            state = memo.init_states.get(c.index, {})
            if c.index < memo.init_done and state.get("done"):
                init_statuses.append(_completed(c.spec))
            elif state.get("error"):
                init_statuses.append(_crash_looping(c.spec, pod, 1, state["error"]))
            elif state.get("running"):
                init_statuses.append(_running(c.spec, ready=bool(state.get("ready")), restarts=0,
                                              started=True))
            else:
                init_statuses.append(_completed(c.spec))
        initialized = memo.sandbox and memo.init_done >= len(inits)
        for c in mains:
            mstate = memo.main_states.get(c.index) if initialized else None
            if mstate is None:
                main_statuses.append(_waiting(c.spec, default))
                continue
            state = mstate
            if "crash" in state:
                main_statuses.append(_crash_looping(c.spec, pod, state["crash"]))
            elif "error" in state:
                main_statuses.append(_crash_looping(c.spec, pod, state.get("restarts", 1), state["error"]))
            elif state.get("completed"):
                main_statuses.append(_crash_looping(c.spec, pod, 1, "", exit_code=0))
            else:
                main_statuses.append(_running(c.spec, ready=bool(state.get("ready")),
                                              restarts=int(state.get("restarts") or 0)))
        return {"sandbox": memo.sandbox, "initialized": initialized, "init": init_statuses, "main": main_statuses,
                "ip": _pod_ip(memo.uid)}

    # --- diagnosis ---
    def waiting(self) -> set[str]:
        """Uids of the pods a main container of which still runs its script's wait loops: the kubelet reports them
        Running, but what the script then starts (nvidia-mig-manager, ...) has not started."""
        out = set()
        for p in self._pods:
            memo = self._memos[_uid(p)]
            if memo.started_main and any(c.script.waits and c.index not in memo.waited
                                         for c in self._ctrs[memo.uid][1]):
                out.add(memo.uid)
        return out

    def blockers(self) -> dict[str, Need]:
        """Pod name -> what it (or a running container's effect) waits for or fails on."""
        out = {}
        for p in self._pods:
            memo = self._memos[_uid(p)]
            need = memo.need or (memo.effect_needs[0] if memo.effect_needs else None)
            if need is not None:
                out[memo.name] = need
        return out

    def providers(self, need: Need) -> list[tuple[str, str, str]]:
        """Pods on the node that could provide what is needed: (pod name, container, how)."""
        out = []
        for p in self._pods:
            if need.kind == "hostpath":  # another pod's volume that creates it (or a path under it)
                for v in _spec(p).get("volumes") or []:
                    hp = v.get("hostPath") or {}
                    path = _canonical(str(hp.get("path") or "/"))
                    if hp and hp.get("type", "") in ("", "DirectoryOrCreate", "FileOrCreate") and \
                            (path == need.target or path.startswith(need.target + "/")):
                        out.append((_name(p), f"volume {v.get('name')}", "creates"))
                continue
            inits, mains = self._ctrs[_uid(p)]
            for c in inits + mains:
                how = self._provides(p, c, need)
                if how:
                    out.append((_name(p), c.where, how))
        return out

    def _provides(self, pod: dict[str, Any], c: Ctr, need: Need) -> str:
        if need.kind == "file":
            if need.target in self._static_writes(pod, c):
                return "writes"
            return ""
        if need.kind == "handler" and c.role == TOOLKIT:
            plan = toolkit_plan(pod, c, self.host, self._sourced_env(pod, c))
            return "adds" if any(h.name == need.target for h in plan.handlers) else ""
        if need.kind == "gpu-runtime" and c.role == TOOLKIT:
            plan = toolkit_plan(pod, c, self.host, self._sourced_env(pod, c))
            return "adds" if plan.hook or any(h.default for h in plan.handlers) else ""
        if need.kind == "gpu-resource" and c.role == DEVICE_PLUGIN:
            return "advertises"
        if need.kind == "module" and c.module == need.target:
            return "loads"
        return ""

    def _static_writes(self, pod: dict[str, Any], c: Ctr) -> set[str]:
        paths = list(c.script.writes) + list(c.probe_writes)
        if c.role == VALIDATOR:
            env, _ = self._validator_env(c)
            name = STATUS_FILES.get(env.get("COMPONENT", ""))
            if name:
                paths.append(posixpath.join(env.get("OUTPUT_DIR") or VALIDATIONS, name))
        if c.role == DEVICE_PLUGIN and self._plugin_cdi(c)[0]:
            paths.append(PLUGIN_CDI_SPEC)
        out = set()
        for path in paths:
            target, problem = host_path(pod, c.spec, path, write=True)
            if target is not None and not problem:
                out.add(target)
        if c.role == DRIVER:
            target, _ = host_path(pod, c.spec, DRIVER_INSTALL_DIR)
            if target is not None and not _unpropagated_driver_root(c.spec):
                out |= {_canonical(posixpath.join(target, NVIDIA_SMI)), _canonical(posixpath.join(target, "usr/src"))}
        if c.role == TOOLKIT:
            spec = toolkit_cdi_spec(pod, c, self._sourced_env(pod, c))[0]
            if spec is not None:
                out.add(spec)
        return out

    def toolkit_notes(self) -> list[str]:
        """Why each toolkit container on the node adds no runtime handler (empty when they all do)."""
        notes = []
        for p in self._pods:
            for c in self._ctrs[_uid(p)][1]:
                if c.role == TOOLKIT:
                    plan = toolkit_plan(p, c, self.host, self._sourced_env(p, c))
                    why = plan.error or plan.noop or plan.exits or plan.missing
                    if why:
                        notes.append(f"pod {_name(p)} {c.where}: {why}")
        return notes

    def diagnose(self) -> list[Finding]:
        """Deadlocks (cycles of pods waiting on each other) and pods stuck on something no pod provides."""
        blocked = self.blockers()
        edges: dict[str, list[tuple[str, str, str]]] = {}
        for pod, need in blocked.items():
            edges[pod] = [p for p in self.providers(need) if p[0] != pod]  # its own containers ran before
        findings: list[Finding] = []
        seen_cycles: set[frozenset[str]] = set()

        def hop(pod: str) -> str:
            need = blocked[pod]
            provs = edges[pod]
            text = f"pod {pod} ({need.where}) {need.describe()}" if need.where != "sandbox" else \
                f"pod {pod} {need.describe()}"
            if provs:
                who = ", ".join(f"pod {p} ({w})" for p, w, _ in provs)
                verb = provs[0][2]
                text += f", which {'only ' if len({p for p, _, _ in provs}) == 1 else ''}{who} {verb}"
            return text

        def walk(start: str, path: list[str]) -> None:
            for prov, _, _ in edges.get(path[-1], []):
                if prov not in blocked:
                    continue
                if not all(p in blocked for p, _, _ in edges[path[-1]]):
                    continue  # another provider is not blocked: it may still deliver
                if prov == start:
                    key = frozenset(path)
                    if key not in seen_cycles:
                        seen_cycles.add(key)
                        findings.append(Finding("deadlock", list(path),
                                                "deadlock: " + "; ".join(hop(p) for p in path)))
                elif prov not in path and len(path) < 8:
                    walk(start, path + [prov])

        for pod in blocked:
            walk(pod, [pod])
        in_cycle = {p for f in findings for p in f.pods}
        notes = self.toolkit_notes()
        for pod, need in blocked.items():
            if pod in in_cycle:
                continue
            if need.kind in ("error", "privileged"):
                findings.append(Finding("failing", [pod], f"pod {pod} ({need.where}) {need.describe()}"))
            elif not edges[pod]:
                extra = f" ({'; '.join(notes)})" if notes and need.kind in ("handler", "runtime-binary",
                                                                            "gpu-runtime") else ""
                findings.append(Finding("stuck", [pod], f"{hop(pod)}; no pod on the node provides it{extra}"))
            elif all(p in blocked for p, _, _ in edges[pod]):
                findings.append(Finding("blocked", [pod], f"{hop(pod)}, which is blocked itself"))
        return findings


@dataclass
class _PlannedHandler:
    name: str
    driver_root: str
    default: bool
    cdi_kind: str = ""
    missing: str = ""  # the binary it runs, when the host does not have it


@dataclass
class ToolkitPlan:
    handlers: list[_PlannedHandler] = field(default_factory=list)
    hook: _PlannedHandler | None = None
    writes: list[str] = field(default_factory=list)
    noop: str = ""  # why the host does not change
    error: str = ""  # why the installer fails
    exits: str = ""  # why the installer exits 0 (and is restarted) once it has written the config, no handler loaded
    missing: str = ""  # why the handlers' runtime binaries are not on the host


def toolkit_cdi_spec(pod: dict[str, Any], c: Ctr, env: dict[str, str]) -> tuple[str | None, str, str]:
    """The management CDI spec nvidia-ctk-installer (v1.20) writes with CDI_ENABLED (generateCDISpec: saved as
    CDI_OUTPUT_DIR/<vendor>-<class>.yaml, CDI_KIND): (its host path or None, its kind, the installer's error)."""
    out_dir = env.get("CDI_OUTPUT_DIR", "/var/run/cdi")
    if not _bool(_first(env, "CDI_ENABLED", "ENABLE_CDI"), False) or not out_dir:
        return None, "", ""
    kind = env.get("CDI_KIND") or TOOLKIT_CDI_KIND
    target, problem = host_path(pod, c.spec, posixpath.join(out_dir, kind.replace("/", "-") + ".yaml"), write=True)
    if problem:
        return None, kind, ("error generating CDI specification: failed to save CDI spec for management containers: "
                            f"{problem}")
    return target, kind, ""


def _restart_problem(service: str, mode: str, pod: dict[str, Any], c: Ctr, env: dict[str, str]) -> tuple[str, str]:
    """nvidia-ctk-installer's Options.Restart after it wrote the config: (its error, why the runtime does not load
    the config). `none` skips the restart, and neither containerd nor cri-o reads its config again by itself."""
    if mode not in ("signal", "systemd", "none"):
        return f"unable to restart {service}: invalid restart mode specified: {mode}", ""
    if mode == "none":
        return "", f"RUNTIME_RESTART_MODE=none: {service} is not restarted, so it never loads the handlers"
    if mode == "signal" and service == "crio":
        return "unable to restart crio: supporting crio via signal is unsupported", ""
    if mode == "systemd":  # chroot HOST_ROOT_MOUNT systemctl restart <service>
        host_root = env.get("HOST_ROOT_MOUNT") or "/host"
        if host_path(pod, c.spec, host_root)[0] != "/":
            return (f"unable to restart {service}: error restarting {service} using systemd: chroot: cannot change "
                    f"root directory to '{host_root}'"), ""
    return "", ""


def toolkit_plan(pod: dict[str, Any], c: Ctr, host: Host, env: dict[str, str]) -> ToolkitPlan:
    """What nvidia-ctk-installer (v1.20) does to this host with this container's environment and mounts."""
    runtime = env.get("RUNTIME") or "docker"
    want = INSTALLER_RUNTIME[host.runtime]
    if _bool(env.get("NO_RUNTIME_CONFIG"), False) or _bool(env.get("ENABLE_NRI_PLUGIN"), False):
        return ToolkitPlan(noop="the installer does not configure the runtime (NRI plugin or no-runtime-config)")
    if runtime != want:
        return ToolkitPlan(noop=f"RUNTIME={runtime}, but the node runs {host.runtime}")
    name = _first(env, "NVIDIA_RUNTIME_NAME", "CONTAINERD_RUNTIME_CLASS", "DOCKER_RUNTIME_NAME") or "nvidia"
    if name in ("nvidia-cdi", "nvidia-legacy"):
        name = "nvidia"
    as_default = _bool(_first(env, "NVIDIA_RUNTIME_SET_AS_DEFAULT", "CONTAINERD_SET_AS_DEFAULT",
                              "DOCKER_SET_AS_DEFAULT"), True)
    driver_root = _first(env, "NVIDIA_DRIVER_ROOT", "DRIVER_ROOT") or "/"
    # nvidia-cdi runs nvidia-container-runtime.cdi (cdi mode), nvidia-legacy legacy mode, the runtime itself the
    # configured mode (auto: jit-cdi, which needs no spec); cdi mode resolves names with modes.cdi.default-kind
    cdi_mode = (env.get("NVIDIA_CONTAINER_RUNTIME_MODE") or "auto") == "cdi"
    kind = env.get("NVIDIA_CONTAINER_RUNTIME_MODES_CDI_DEFAULT_KIND") or RUNTIME_CDI_KIND
    handlers = [_PlannedHandler(n, driver_root, as_default and n == name,
                                kind if n == "nvidia-cdi" or (n == name and cdi_mode) else "")
                for n in (name, "nvidia-cdi", "nvidia-legacy")]
    top = _first(env, "RUNTIME_CONFIG", "CONTAINERD_CONFIG", "DOCKER_CONFIG") or HOST_RUNTIME_CONFIG[host.runtime]
    dropin_env = env.get("RUNTIME_DROP_IN_CONFIG")
    if runtime == "crio":
        dropin = dropin_env if dropin_env is not None else f"{CRIO_DROP_IN_DIR}/99-nvidia.toml"
        restart = env.get("RUNTIME_RESTART_MODE") or "systemd"
        if (env.get("CRIO_CONFIG_MODE") or "config") == "hook":
            hooks = env.get("CRIO_HOOKS_DIR") or CRIO_HOOK_DIRS[0]
            path = posixpath.join(hooks, env.get("CRIO_HOOK_FILENAME") or "oci-nvidia-hook.json")
            target, problem = host_path(pod, c.spec, path, write=True)
            if problem:
                return ToolkitPlan(error=f"error creating hook: {problem}")
            if target is None or posixpath.dirname(target) not in CRIO_HOOK_DIRS:
                return ToolkitPlan(noop=f"the OCI hook {path} lands at {target or 'a path in the container'}, "
                                        f"where cri-o does not look ({', '.join(CRIO_HOOK_DIRS)})")
            return ToolkitPlan(hook=_PlannedHandler(target, driver_root, False), writes=[target])
        dest = dropin or top
        target, problem = host_path(pod, c.spec, dest, write=True)
        if problem:
            return ToolkitPlan(error=f"unable to flush config: {problem}")
        ok = target is not None and (target == HOST_RUNTIME_CONFIG[CRIO] or
                                     posixpath.dirname(target) == CRIO_DROP_IN_DIR)
        if not ok:
            return ToolkitPlan(noop=f"the config it writes ({dest}) is {target or 'in the container only'}, not "
                                    f"cri-o's {HOST_RUNTIME_CONFIG[CRIO]} or a file in {CRIO_DROP_IN_DIR}/")
        error, noop = _restart_problem("crio", restart, pod, c, env)
        if error or noop:
            return ToolkitPlan(error=error, noop=noop, writes=[] if error else [str(target)])
        return ToolkitPlan(handlers=handlers, writes=[str(target)])
    # containerd
    dropin = dropin_env if dropin_env is not None else "/etc/containerd/conf.d/99-nvidia.toml"
    top_host, problem = host_path(pod, c.spec, top, write=True)
    if problem:
        return ToolkitPlan(error=f"unable to flush config: {problem}")
    if top_host != HOST_RUNTIME_CONFIG[CONTAINERD]:
        return ToolkitPlan(noop=f"RUNTIME_CONFIG {top} is {top_host or 'in the container only'}, not the host's "
                                f"{HOST_RUNTIME_CONFIG[CONTAINERD]}")
    writes = [top_host]
    if dropin:
        drop_host, problem = host_path(pod, c.spec, dropin, write=True)
        if problem:
            return ToolkitPlan(error=f"unable to flush config: {problem}")
        imported = env.get("RUNTIME_DROP_IN_CONFIG_HOST_PATH") or dropin
        if drop_host is None:
            return ToolkitPlan(noop=f"the drop-in config {dropin} stays in the container")
        if _canonical(imported) != drop_host:
            return ToolkitPlan(noop=f"config.toml imports {imported}, but the drop-in lands at {drop_host} on the host")
        writes.append(drop_host)
    restart = env.get("RUNTIME_RESTART_MODE") or "signal"
    error, noop = _restart_problem("containerd", restart, pod, c, env)
    if error or noop:
        return ToolkitPlan(error=error, noop=noop, writes=[] if error else writes)
    if restart == "signal":
        socket = _first(env, "RUNTIME_SOCKET", "CONTAINERD_SOCKET", "DOCKER_SOCKET") or CONTAINERD_SOCKET
        sock_host, _ = host_path(pod, c.spec, socket)
        if sock_host != CONTAINERD_SOCKET:
            return ToolkitPlan(error=f"unable to restart containerd: unable to dial: dial unix {socket}: connect: "
                                     "no such file or directory")
        if not _spec(pod).get("hostPID"):  # SignalContainerd: kill(<the socket peer's pid>, SIGHUP)
            return ToolkitPlan(writes=writes, exits=(
                "containerd is not signalled: without hostPID its pid is not in the pod's PID namespace (the "
                "socket's SCM_CREDENTIALS read pid 0), so kill(0, SIGHUP) hits the installer's own process group: "
                "\"Signal received, exiting early\""))
    root = _first(env, "TOOLKIT_INSTALL_DIR", "ROOT") or TOOLKIT_INSTALL_DIR
    installed, _ = host_path(pod, c.spec, root)
    if installed == _canonical(root):
        return ToolkitPlan(handlers=handlers, writes=writes)
    for h, binary in zip(handlers, RUNTIME_BINARIES, strict=True):
        h.missing = posixpath.join(root, "toolkit", binary)
    return ToolkitPlan(handlers=handlers, writes=writes, missing=(
        f"it installs the toolkit in {root}, which is {installed or 'in the container only'}, not the host's "
        f"{root}: the runtime config names binaries the host does not have ({handlers[0].missing}, ...)"))


def workload_pod(component: str, namespace: str, node: str, env: dict[str, str],
                 validator_ds: dict[str, Any]) -> dict[str, Any]:
    """The pod nvidia-validator's cuda/plugin component creates (shape of upstream's validator manifests)."""
    app = "nvidia-cuda-validator" if component == "cuda" else "nvidia-device-plugin-validator"
    image = env.get("VALIDATOR_IMAGE", "")
    policy = env.get("VALIDATOR_IMAGE_PULL_POLICY") or ""
    template = (validator_ds.get("spec") or {}).get("template") or {}
    init: dict[str, Any] = {"name": f"{component}-validation", "image": image, "imagePullPolicy": "IfNotPresent",
                            "command": ["sh", "-c"], "args": ["vectorAdd"]}
    main: dict[str, Any] = {"name": app, "image": image, "imagePullPolicy": "IfNotPresent", "command": ["sh", "-c"],
                            "args": [f"echo {component} workload validation is successful"]}
    if policy:
        init["imagePullPolicy"] = main["imagePullPolicy"] = policy
    if component == "cuda":
        init["env"] = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]
        init["securityContext"] = main["securityContext"] = {"privileged": True}
    else:
        init["resources"] = {"limits": {GPU_RESOURCE: "1"}, "requests": {GPU_RESOURCE: "1"}}
        init["securityContext"] = main["securityContext"] = {"allowPrivilegeEscalation": False}
    spec: dict[str, Any] = {"restartPolicy": "OnFailure", "serviceAccountName": "nvidia-operator-validator",
                            "nodeName": node, "tolerations": (template.get("spec") or {}).get("tolerations") or [],
                            "initContainers": [init], "containers": [main]}
    if env.get("VALIDATOR_RUNTIME_CLASS"):
        spec["runtimeClassName"] = env["VALIDATOR_RUNTIME_CLASS"]
    if env.get("VALIDATOR_IMAGE_PULL_SECRETS"):
        spec["imagePullSecrets"] = [{"name": s} for s in env["VALIDATOR_IMAGE_PULL_SECRETS"].split(",")]
    meta: dict[str, Any] = {"generateName": f"{app}-", "namespace": namespace, "labels": {"app": app}}
    refs = (validator_ds.get("metadata") or {}).get("ownerReferences")
    if refs:
        meta["ownerReferences"] = refs
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def _driver_ready(host_driver: bool, root: str) -> str:
    """driver-ready as the validator writes it (plain NAME=value lines) for a driver under ``root``: the host's
    root (HOST_ROOT) or a driver container's install dir. getDriverInfo takes the dev root from the driver root
    when that holds a ``dev`` directory, as a driver container's does (it rbinds its whole root, /dev included)."""
    ctr_path = "/host" if host_driver else "/driver-root"
    values = [("IS_HOST_DRIVER", str(host_driver).lower()), ("NVIDIA_DRIVER_ROOT", root),
              ("DRIVER_ROOT_CTR_PATH", ctr_path), ("NVIDIA_DEV_ROOT", root), ("DEV_ROOT_CTR_PATH", ctr_path)]
    return "".join(f"{k}={v}\n" for k, v in values)


def _parse_time(ts: str | None) -> float | None:
    from datetime import datetime

    if not ts:
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _pod_ip(uid: str) -> str:
    n = int(hashlib.sha256(uid.encode()).hexdigest()[:8], 16)
    return f"10.{192 + n % 32}.{(n >> 5) % 256}.{(n >> 13) % 250 + 1}"


# --- container statuses (API shapes, without times; see pod_status) ---

def image_id(image: str) -> str:
    """A stable fake ``imageID`` as containerd reports it: ``repo@sha256:<digest>``."""
    if "@sha256:" in image:
        return image
    name, sep, tag = image.rpartition(":")
    repo = name if sep and "/" not in tag else image
    return f"{repo}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


def _base(c: dict[str, Any], restarts: int) -> dict[str, Any]:
    image = c.get("image", "")
    return {"name": c["name"], "image": image, "imageID": image_id(image), "restartCount": restarts}


def _running(c: dict[str, Any], *, ready: bool, restarts: int, started: bool | None = None) -> dict[str, Any]:
    cs = _base(c, restarts)
    cs.update({"ready": ready, "started": ready if started is None else started, "state": {"running": {}}})
    return cs


def _waiting(c: dict[str, Any], reason: str, message: str = "", restarts: int = 0) -> dict[str, Any]:
    cs = _base(c, restarts)
    waiting = {"reason": reason, "message": message} if message else {"reason": reason}
    cs.update({"ready": False, "started": False, "state": {"waiting": waiting}})
    if reason in ("PodInitializing", "ContainerCreating"):
        cs["imageID"] = ""
    return cs


def _completed(c: dict[str, Any]) -> dict[str, Any]:
    cs = _base(c, 0)
    cs.update({"ready": True, "started": False, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}})
    return cs


def _crash_looping(c: dict[str, Any], pod: dict[str, Any], restarts: int, error: str = "",
                   exit_code: int = 1) -> dict[str, Any]:
    meta = pod["metadata"]
    backoff = min(10 * 2 ** max(restarts - 1, 0), 300)
    message = (f"back-off {backoff // 60}m{backoff % 60}s restarting failed container={c['name']} "
               f"pod={meta['name']}_{meta.get('namespace', '')}({meta.get('uid', '')})")
    cs = _waiting(c, "CrashLoopBackOff", message, restarts)
    cs["imageID"] = image_id(c.get("image", ""))
    last: dict[str, Any] = {"exitCode": exit_code, "reason": "Error" if exit_code else "Completed"}
    if error:
        last["message"] = error
    cs["lastState"] = {"terminated": last}
    return cs


def pod_status(pod: dict[str, Any], run: dict[str, Any], host_ip: str | None, now: str) -> dict[str, Any]:
    """The pod's API status for a model run; what did not change keeps its timestamps."""
    old = pod.get("status") or {}
    spec = pod.get("spec") or {}
    inits, mains = run["init"], run["main"]
    initialized = bool(run["initialized"])
    containers_ready = initialized and all(cs["ready"] for cs in mains)
    want = {"PodScheduled": True, "PodReadyToStartContainers": bool(run["sandbox"]), "Initialized": initialized,
            "ContainersReady": containers_ready, "Ready": containers_ready}
    for gate in spec.get("readinessGates") or []:
        want[gate["conditionType"]] = containers_ready
    conditions = {c["type"]: c for c in old.get("conditions") or []}
    for t, ok in want.items():
        value = "True" if ok else "False"
        c = conditions.get(t)
        if c is None or c.get("status") != value:
            c = {"type": t, "status": value, "lastTransitionTime": now}
            if not ok and t in ("ContainersReady", "Ready"):
                c["reason"] = "ContainersNotReady" if initialized else "ContainersNotInitialized"
            elif not ok and t == "Initialized":
                c["reason"] = "ContainersNotInitialized"
            conditions[t] = c
    olds = {cs.get("name"): cs for cs in old.get("containerStatuses") or []}
    old_inits = {cs.get("name"): cs for cs in old.get("initContainerStatuses") or []}
    uid = str(pod["metadata"].get("uid") or "")
    status: dict[str, Any] = {
        "phase": "Running" if initialized else "Pending",
        "startTime": old.get("startTime") or now,
        "conditions": list(conditions.values()),
        "containerStatuses": [_keep_times(cs, olds.get(cs["name"]), now, uid) for cs in mains],
        "initContainerStatuses": [_keep_times(cs, old_inits.get(cs["name"]), now, uid) for cs in inits],
    }
    host_ip = old.get("hostIP") or host_ip
    if host_ip:
        status["hostIP"] = host_ip
        status["hostIPs"] = [{"ip": host_ip}]
    if run["sandbox"]:
        if old.get("podIP"):
            status["podIP"], status["podIPs"] = old["podIP"], old.get("podIPs") or [{"ip": old["podIP"]}]
        elif host_ip and spec.get("hostNetwork"):
            status["podIP"], status["podIPs"] = host_ip, [{"ip": host_ip}]
        else:
            status["podIP"], status["podIPs"] = run["ip"], [{"ip": run["ip"]}]
    return status


def _keep_times(cs: dict[str, Any], old: dict[str, Any] | None, now: str, uid: str) -> dict[str, Any]:
    """Fill in a container status's times and containerID, keeping the old ones when its state did not change."""
    same_restarts = old is not None and int(old.get("restartCount") or 0) == cs["restartCount"]
    if old is not None and old.get("lastState"):
        if "lastState" not in cs:
            cs["lastState"] = old["lastState"]  # a container that ran before keeps its last termination
        elif same_restarts and _last_message(old) == _last_message(cs):
            cs["lastState"] = old["lastState"]
    if old is not None and same_restarts and _state_key(old.get("state")) == _state_key(cs["state"]):
        cs["state"] = old["state"]
    else:
        for kind, detail in cs["state"].items():
            if kind == "running":
                detail.setdefault("startedAt", now)
            elif kind == "terminated":
                detail.setdefault("startedAt", now)
                detail.setdefault("finishedAt", now)
                detail.setdefault("containerID", _container_id(uid, cs["name"], cs["restartCount"]))
    for detail in (cs.get("lastState") or {}).values():
        detail.setdefault("startedAt", now)
        detail.setdefault("finishedAt", now)
        detail.setdefault("containerID", _container_id(uid, cs["name"], max(cs["restartCount"] - 1, 0)))
    if "running" in cs["state"]:
        cs["containerID"] = _container_id(uid, cs["name"], cs["restartCount"])
    return cs


def _last_message(cs: dict[str, Any]) -> str:
    return str(((cs.get("lastState") or {}).get("terminated") or {}).get("message") or "")


def _container_id(uid: str, name: str, restarts: int) -> str:
    return "containerd://" + hashlib.sha256(f"{uid}/{name}/{restarts}".encode()).hexdigest()


def _state_key(state: dict[str, Any] | None) -> tuple[str, str]:
    for kind, detail in (state or {}).items():
        return kind, str((detail or {}).get("reason") or "")
    return "", ""


def status_key(status: dict[str, Any]) -> tuple[Any, ...]:
    """What the model decides about a pod status (not its timestamps)."""
    def containers(key: str) -> tuple[Any, ...]:
        return tuple(sorted(
            (str(cs.get("name")), bool(cs.get("ready")), int(cs.get("restartCount") or 0), _state_key(cs.get("state")),
             cs.get("image"), _last_message(cs))
            for cs in status.get(key) or []))

    conditions = tuple(sorted((str(c.get("type")), str(c.get("status"))) for c in status.get("conditions") or []))
    return (status.get("phase"), conditions, containers("containerStatuses"), containers("initContainerStatuses"),
            bool(status.get("podIP")))


def same_status(want: dict[str, Any], have: dict[str, Any]) -> bool:
    return status_key(want) == status_key(have)


def ready(status: dict[str, Any]) -> bool:
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])



# --- offline check of rendered manifests ---

def check_rendered(docs: list[dict[str, Any]], node: dict[str, Any], *, host_driver: str | None = None,
                   gpus: int = 8) -> tuple[NodeModel, StepResult, list[dict[str, Any]]]:
    """Run a node through the start-up with the DaemonSets of ``gpu-operator render`` output that select it."""
    name = node["metadata"]["name"]
    labels = dict(node["metadata"].get("labels") or {})
    for d in docs:  # the render's label patches
        if d.get("kind") == "Node" and d["metadata"].get("name") == name:
            labels.update({k: v for k, v in (d["metadata"].get("labels") or {}).items() if v is not None})
    config_maps = {(d["metadata"].get("namespace") or "gpu-operator", d["metadata"]["name"]): d.get("data") or {}
                   for d in docs if d.get("kind") == "ConfigMap"}
    daemonsets = [d for d in docs if d.get("kind") == "DaemonSet"]
    for d in daemonsets:
        d["metadata"].setdefault("namespace", "gpu-operator")
    world = World(runtime_classes={d["metadata"]["name"]: d.get("handler", "") for d in docs
                                   if d.get("kind") == "RuntimeClass"},
                  config_maps=config_maps, daemonsets=daemonsets, dry_run=offline_dry_run)
    pods = []
    for d in daemonsets:
        tpl = (d.get("spec") or {}).get("template") or {}
        selector = (tpl.get("spec") or {}).get("nodeSelector") or {}
        if all(labels.get(k) == v for k, v in selector.items()):
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {**(tpl.get("metadata") or {}), "name": f"{d['metadata']['name']}-{name}",
                                "namespace": d["metadata"]["namespace"], "uid": f"{d['metadata']['name']}/{name}"},
                   "spec": {**(tpl.get("spec") or {}), "nodeName": name}}
            pods.append(pod)
    model = NodeModel(new_host(name, runtime_of(node), gpus, host_driver, os_of(node)))
    result = model.step(pods, world, now=0.0, wall_now=0.0, node_labels=labels)
    return model, result, pods


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    import yaml

    from gpu_operator.nodes import NodeFacts

    parser = argparse.ArgumentParser(prog="python -m e2e.nodemodel",
                                     description="Run `gpu-operator render` output through the node model.")
    parser.add_argument("rendered", help="multi-document YAML from gpu-operator render")
    parser.add_argument("--nodes", required=True,
                        help="the file given to render: its Nodes and ConfigMaps (YAML, a List or documents)")
    parser.add_argument("--policy", help="the policy file given to render: its ConfigMaps are read too")
    parser.add_argument("--host-driver", help="the nodes have this driver pre-installed")
    args = parser.parse_args(argv)
    with open(args.rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    given: dict[str, list[dict[str, Any]]] = {}
    for path in filter(None, [args.nodes, args.policy]):
        with open(path) as f:
            given[path] = [n for d in yaml.safe_load_all(f) if d for n in (d.get("items") or [d])]
    nodes = [n for n in given[args.nodes] if n.get("kind") == "Node"]
    # render prints only its own objects: the files' ConfigMaps stand for the operand namespace's, as render takes
    # them (the render's own, later, win a name both have)
    namespace = next((d["metadata"].get("namespace") for d in docs if d.get("kind") == "DaemonSet"), None)
    docs = [{**d, "metadata": {**d["metadata"], "namespace": namespace or "gpu-operator"}}
            for objs in given.values() for d in objs
            if d.get("kind") == "ConfigMap" and (d.get("metadata") or {}).get("name")] + docs
    stuck = False
    for node in nodes:
        if not NodeFacts.from_node(node).has_gpu:  # the operator's view: any of NFD's NVIDIA PCI labels
            continue
        model, result, pods = check_rendered(docs, node, host_driver=args.host_driver)
        print(f"node {node['metadata']['name']} ({model.host.runtime}):")
        for p in pods:
            run = result.statuses[_uid(p)]
            st = pod_status(p, run, None, "")
            where = [f"{cs['name']}={next(iter(cs['state']))}" for cs in st["initContainerStatuses"] +
                     st["containerStatuses"]]
            print(f"  {'ready    ' if ready(st) else 'NOT READY'} {_name(p)}: {' '.join(where)}")
            stuck |= not ready(st)
        for finding in model.diagnose():
            print(f"  {finding.kind}: {finding.text}")
        print(f"  files: {', '.join(sorted(p for p in model.host.files if p.startswith(VALIDATIONS)))}")
        print(f"  handlers: {', '.join(sorted(model.host.handlers))}; {GPU_RESOURCE}={result.gpus}")
    sys.stdout.flush()
    return 1 if stuck else 0


if __name__ == "__main__":
    raise SystemExit(main())
