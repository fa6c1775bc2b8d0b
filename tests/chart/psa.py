"""A small checker of the Pod Security Standards, levels "baseline" and "restricted"
(https://kubernetes.io/docs/concepts/security/pod-security-standards/), for pod specs as the
chart and the operator render them. It returns the violations, one string each; [] means
Pod Security Admission at level "restricted" admits the pod.
"""
from __future__ import annotations

RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}
VOLUME_TYPE_KEYS = {
    "awsElasticBlockStore", "azureDisk", "azureFile", "cephfs", "cinder", "configMap", "csi", "downwardAPI", "emptyDir",
    "ephemeral", "fc", "flexVolume", "flocker", "gcePersistentDisk", "gitRepo", "glusterfs", "hostPath", "image", "iscsi",
    "nfs", "persistentVolumeClaim", "photonPersistentDisk", "portworxVolume", "projected", "quobyte", "rbd", "scaleIO",
    "secret", "storageos", "vsphereVolume",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
SECCOMP_ALLOWED = {"RuntimeDefault", "Localhost"}


def pod_spec_of(obj: dict) -> dict:
    """The pod spec of a Pod, Job, Deployment, StatefulSet, DaemonSet, ReplicaSet or CronJob."""
    kind = obj.get("kind")
    if kind == "Pod":
        return obj["spec"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def restricted_violations(pod: dict) -> list[str]:
    problems: list[str] = []
    psc = pod.get("securityContext") or {}
    containers = [
        (group, c)
        for group in ("initContainers", "containers", "ephemeralContainers")
        for c in pod.get(group) or ()
    ]
    if not containers:
        problems.append("no containers")

    # -- baseline --------------------------------------------------------------------------
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"spec.{field} is true")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        problems.append("pod windowsOptions.hostProcess")
    for sysctl in psc.get("sysctls") or ():
        if sysctl.get("name") not in SAFE_SYSCTLS:
            problems.append(f"unsafe sysctl {sysctl.get('name')}")
    for volume in pod.get("volumes") or ():
        types = sorted(set(volume) & VOLUME_TYPE_KEYS)
        if "hostPath" in types:
            problems.append(f"volume {volume.get('name')}: hostPath")
        for t in types:
            if t not in RESTRICTED_VOLUME_TYPES:
                problems.append(f"volume {volume.get('name')}: type {t} not allowed")
        if not types:
            problems.append(f"volume {volume.get('name')}: unknown type")

    def selinux_problems(where: str, opts: dict | None) -> None:
        opts = opts or {}
        if opts.get("type", "") not in SELINUX_TYPES:
            problems.append(f"{where}: seLinuxOptions.type {opts.get('type')}")
        if opts.get("user") or opts.get("role"):
            problems.append(f"{where}: seLinuxOptions user/role set")

    def apparmor_problems(where: str, profile: dict | None) -> None:
        if profile and profile.get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: appArmorProfile {profile.get('type')}")

    selinux_problems("pod", psc.get("seLinuxOptions"))
    apparmor_problems("pod", psc.get("appArmorProfile"))

    # -- restricted: pod level ---------------------------------------------------------------
    pod_non_root = psc.get("runAsNonRoot") is True
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in SECCOMP_ALLOWED:
        problems.append(f"pod seccompProfile {pod_seccomp}")
    if psc.get("runAsUser") == 0:
        problems.append("pod runAsUser 0")

    for group, c in containers:
        where = f"{group}[{c.get('name')}]"
        sc = c.get("securityContext") or {}
        # baseline
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            problems.append(f"{where}: windowsOptions.hostProcess")
        if sc.get("procMount", "Default") != "Default":
            problems.append(f"{where}: procMount {sc.get('procMount')}")
        for port in c.get("ports") or ():
            if port.get("hostPort"):
                problems.append(f"{where}: hostPort {port['hostPort']}")
        selinux_problems(where, sc.get("seLinuxOptions"))
        apparmor_problems(where, sc.get("appArmorProfile"))
        # restricted
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        if sc.get("runAsNonRoot") is False or not (pod_non_root or sc.get("runAsNonRoot") is True):
            problems.append(f"{where}: runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser") == 0:
            problems.append(f"{where}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp is not None and seccomp not in SECCOMP_ALLOWED:
            problems.append(f"{where}: seccompProfile {seccomp}")
        if seccomp is None and pod_seccomp is None:
            problems.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost (pod or container)")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or ()):
            problems.append(f"{where}: capabilities must drop ALL")
        added = set(caps.get("add") or ()) - {"NET_BIND_SERVICE"}
        if added:
            problems.append(f"{where}: capabilities added {sorted(added)}")
    return problems
