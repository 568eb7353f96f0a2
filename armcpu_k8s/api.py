"""armcpu's Kubernetes API types: the one source the CRDs in ``crds/`` are generated from.

Field names of ``NodeCpuProfile.spec`` are the profile JSON keys (docs/profile-format.md) on
purpose: ``kubectl get nodecpuprofile n -o json | jq .spec`` is a file ``armcpu baseline`` reads.
CEL rules (``x-kubernetes-validations``) sit next to the fields they check so that the generated
schema rejects at admission what a schema can say.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from armcpu_k8s.group import API_VERSION, GROUP, VERSION

__all__ = ["API_VERSION", "GROUP", "VERSION"]  # re-exported: crdgen and the tests name them through api

HEX64 = r"^0x[0-9a-fA-F]{1,16}$"
HEX32 = r"^0x[0-9a-fA-F]{1,8}$"
REGISTER_NAME = r"^[A-Za-z][A-Za-z0-9_]{1,40}$"
MAX_REGISTERS = 256  # armcpu.profile._MAX_REGISTERS
# register-keyed maps: a key is a register name (one agent's profile must not carry an 800 KB key into every status)
REGISTER_KEYS: JsonDict = {"rule": "self.all(k, size(k) <= 41)", "message": "register names are at most 41 characters"}


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def cel(rule: str, message: str, field_path: str | None = None, reason: str | None = None) -> dict[str, str]:
    """One x-kubernetes-validations entry."""
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    if reason:
        out["reason"] = reason
    return out


# ---------------------------------------------------------------- NodeCpuProfile


class CoreSpec(_Schema):
    """One distinct core type of the node (big.LITTLE nodes list several)."""

    midr: str = Field(pattern=HEX32, description="MIDR_EL1 of these cores (implementer, part, variant, revision).")
    revidr: str = Field("0x0", pattern=HEX64, description="REVIDR_EL1 of these cores (implementation-defined errata bits).")
    aidr: str = Field("0x0", pattern=HEX64, description="AIDR_EL1 of these cores, when the kernel exposes it.")
    cpus: list[int] = Field(default_factory=list, max_length=4096, description="Logical CPU numbers with this core type.")


class KvmSpec(_Schema):
    """What the KVM probe learnt besides register values."""

    vcpu_features: list[str] = Field(default_factory=list, max_length=16, description="vCPU features the scratch vCPU was created with.",
                                     json_schema_extra={"items": {"type": "string", "maxLength": 32}})
    writable_imp_id_regs: bool | None = Field(None, description="KVM_CAP_ARM_WRITABLE_IMP_ID_REGS: MIDR/REVIDR/AIDR can be set per VM.")
    reg_mask_ranges: bool | None = Field(None, description="KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES: writable masks were reported.")
    vendor_hyp_bmap_2: str | None = Field(None, pattern=HEX64, description="KVM_REG_ARM_VENDOR_HYP_BMAP_2 (errata hypercalls), if present.")


class VerificationSpec(_Schema):
    """This node's kernel's verdict on one model: the agent wrote the model into a scratch vCPU and a guest read it back."""

    key: str = Field(pattern=r"^[0-9a-f]{16}$", description="Hash of every register of the model, identity included (armcpu.verification).")
    model: str = Field("", max_length=253, description="The CpuModel the model was verified for.")
    revision: int = Field(0, ge=0, description="That CpuModel's revision.")
    boot_id: str = Field("", max_length=64, description="The kernel boot the verdict belongs to (/proc/sys/kernel/random/boot_id).")
    accepted: bool = Field(description="KVM accepted every register of the model (KVM_SET_ONE_REG before the first run).")
    guest_read_matches: bool | None = Field(None, description="The guest read exactly the model; null when it did not run.")
    disagreements: list[str] = Field(default_factory=list, max_length=16, description="Each refused or differing field, as the agent saw it.",
                                     json_schema_extra={"items": {"type": "string", "maxLength": 256}})


class NodeCpuProfileSpec(_Schema):
    """A node's CPU as a guest sees it, in the profile format of docs/profile-format.md."""

    format: int = Field(1, ge=1, le=1, description="Profile format version.")
    name: str = Field(max_length=253, description="The node name.")
    midr: str = Field(pattern=HEX32, description="MIDR_EL1 of the first core type.")
    registers: dict[str, str] = Field(
        max_length=MAX_REGISTERS,
        description="ID register values (hex) as the probe read them; absent registers read as zero.",
        json_schema_extra={"additionalProperties": {"type": "string", "pattern": HEX64}, "x-kubernetes-validations": [REGISTER_KEYS]},
    )
    writable_masks: dict[str, str] | None = Field(
        None,
        max_length=MAX_REGISTERS,
        description="Bits KVM lets userspace write (KVM_ARM_GET_REG_WRITABLE_MASKS); absent when the kernel reports none.",
        json_schema_extra={"additionalProperties": {"type": "string", "pattern": HEX64}, "x-kubernetes-validations": [REGISTER_KEYS]},
    )
    cores: list[CoreSpec] = Field(default_factory=list, max_length=64, description="Distinct core types of the node.")
    probe: Literal["kvm", "mrs", "sysfs"] = Field(
        description="How the registers were read: kvm (guest view), mrs (host EL0 view), sysfs (identity only).",
    )
    kernel: str | None = Field(None, max_length=256, description="Kernel release of the node.")
    source: str | None = Field(None, max_length=1024, description="Free text: where the values come from.")
    cpuinfo_features: str | None = Field(None, max_length=8192, description="The Features line of /proc/cpuinfo (HWCAPs), for diagnosis.")
    kvm: KvmSpec | None = Field(None, description="KVM capabilities seen by the probe.")
    guest_view: dict[str, str] | None = Field(
        None, max_length=MAX_REGISTERS,
        description="Registers a guest started with this node's own view reads differently from `registers` (the physical CTR_EL0 "
        "KVM passes through, DCZID_EL0 KVM never shows userspace); empty: none; absent: not measured.",
        json_schema_extra={"additionalProperties": {"type": "string", "pattern": HEX64}, "x-kubernetes-validations": [REGISTER_KEYS]},
    )
    verifications: list[VerificationSpec] = Field(
        default_factory=list, max_length=32,
        description="The kernel's verdicts on the models of the CpuModels whose pool holds this node (current and live revisions).",
    )
    fingerprint: str = Field(pattern=r"^[0-9a-f]{16}$", description="Hash of the feature and cache registers (docs/profile-format.md).")


class NodeCpuProfile(_Schema):
    """Published by the node agent: one per node, named after it, owned by the Node."""

    apiVersion: Literal["armcpu.io/v1alpha1"] = API_VERSION
    kind: Literal["NodeCpuProfile"] = "NodeCpuProfile"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: NodeCpuProfileSpec


# ---------------------------------------------------------------- CpuModel

FeatureSetting = Literal["Disabled", "Required"]


class LabelSelectorRequirement(_Schema):
    key: str = Field(max_length=317, description="The label key the requirement applies to.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(description="How the key's value is compared with values.")
    values: list[str] = Field(default_factory=list, max_length=64, description="Values for In and NotIn; empty for Exists and DoesNotExist.")


class LabelSelector(_Schema):
    """A standard Kubernetes label selector; an empty selector selects nothing here (never every node)."""

    matchLabels: dict[str, str] = Field(default_factory=dict, description="Labels an object must carry, all of them (key: value).",
                                        json_schema_extra={"additionalProperties": {"type": "string", "maxLength": 63}})
    matchExpressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, max_length=32, description="Requirements an object's labels must meet, all of them (ANDed with matchLabels).",
    )


class RegisterSetting(_Schema):
    """A raw field value for what no FEAT name covers (cache geometry, PARange, breakpoint counts)."""

    register_name: str = Field(alias="register", pattern=REGISTER_NAME, description="Register name, e.g. CTR_EL0 or ID_AA64MMFR0_EL1.")
    field: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$", description="Field name as Arm spells it, e.g. DminLine.")
    value: int = Field(ge=0, description="Field value; it must fit the field (checked by the webhook) and not exceed what the pool offers.")


class CpuModelSpec(_Schema):
    """What the user asks for: a node pool, an optional cap, and feature adjustments."""

    nodeSelector: LabelSelector = Field(description="The node pool. Nodes without a NodeCpuProfile are reported, not used.")
    vmSelector: LabelSelector | None = Field(
        None,
        description="KubeVirt VirtualMachines (any namespace) that use this model: armcpu pins them to compatible nodes and "
        "records the model on their template. Omitted: no VM is touched. A VM selected by two CpuModels is left unchanged (Event).",
    )
    base: str | None = Field(None, max_length=63, description="A named model (armcpu models) that caps the result; omitted: the pool itself.")
    features: dict[str, FeatureSetting] = Field(
        default_factory=dict,
        description="FEAT_xxx: Disabled (hide it and what depends on it) or Required (nodes without it are incompatible).",
        json_schema_extra={
            "additionalProperties": {"type": "string", "enum": ["Disabled", "Required"]},
            "maxProperties": 128,
            "x-kubernetes-validations": [
                {"rule": "self.all(k, k.matches('^FEAT_[A-Za-z0-9_]+$'))", "message": "feature names look like FEAT_SVE"},
            ],
        },
    )
    registers: list[RegisterSetting] = Field(
        default_factory=list,
        max_length=64,
        description="Raw field values for what no FEAT name covers.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["register", "field"]},
    )
    identityFrom: str | None = Field(
        None, max_length=253,
        description="The pool node whose MIDR/REVIDR/AIDR the guest sees (default: the first pool member by name). Every member's "
        "identity is listed as a target implementation either way, so the guest enables every host's errata workarounds.",
    )
    updatePolicy: Literal["Pinned", "Follow"] = Field(
        "Pinned",
        description="Pinned: once computed the model stays; nodes that cannot run it are marked incompatible. Follow: the model follows the pool.",
    )
    enforcement: Literal["Scheduling", "HookSidecar"] = Field(
        "Scheduling",
        description="Scheduling: selected VMs only run and migrate on compatible nodes, and get the sve/pauth disables libvirt can "
        "express. HookSidecar: also start QEMU with the model's per-field ID register properties, through a KubeVirt hook sidecar "
        "(feature gate Sidecar) running armcpu's onDefineDomain script from a ConfigMap armcpu keeps in each VM namespace. "
        "Skipped when the model equals every pool node's own registers.",
    )


class Implementation(_Schema):
    """One member's identity, offered to the guest as a target implementation."""

    midr: str = Field(pattern=HEX32, description="MIDR_EL1 of the member.")
    revidr: str = Field(pattern=HEX64, description="REVIDR_EL1 of the member.")
    aidr: str = Field(pattern=HEX64, description="AIDR_EL1 of the member.")


class ModelStatus(_Schema):
    """The computed model, everything a VM needs to be started with it."""

    registers: dict[str, str] = Field(description="Every ID register of the model (hex), as a guest started with it reads them.",
                                      json_schema_extra={"additionalProperties": {"type": "string", "pattern": HEX64}})
    features: list[str] = Field(default_factory=list, description="FEAT names the model presents.")
    midr: str = Field(pattern=HEX32, description="MIDR the guest sees.")
    implementations: list[Implementation] = Field(default_factory=list, description="Every member's identity (for errata hypercalls).")
    qemu: str | None = Field(None, description="QEMU -cpu argument for the model (qemu-sysreg-v9 syntax, under review upstream).")
    qemuMachine: str | None = Field(None, description="QEMU -machine properties for the model's target implementations (impl-cpu.N.*), if any.")
    libvirtDisabled: list[str] = Field(default_factory=list, description="vCPU features (sve, pauth) selected VMs get with policy disable.")
    domainRewrite: Literal["Needed", "NotNeeded"] | None = Field(
        None, description="NotNeeded: the model equals every pool node's own registers, so scheduling alone keeps migration safe and "
        "enforcement HookSidecar adds nothing.",
    )
    members: list[str] = Field(default_factory=list, description="Nodes whose profiles the model was computed from.")


class NodeCounts(_Schema):
    """How many nodes the nodeSelector selects, and how many of them can or cannot run the model."""

    selected: int = Field(0, description="Nodes the nodeSelector selects.")
    compatible: int = Field(0, description="Selected nodes that can run the current revision (labelled cpumodel.armcpu.io/<name>=<revision>).")
    incompatible: int = Field(0, description="Selected nodes that cannot (reasons in incompatibleNodes).")
    pending: int | None = Field(None, ge=0, description="Selected nodes armcpu's rules admit but whose kernel has not verified the revision yet "
                                        "(with --kernel-verification Required; listed in pendingNodes).")


class NodeWarning(_Schema):
    """A cost on a compatible node."""

    name: str = Field(description="The node.")
    message: str = Field(description="What costs what, e.g. which CTR_EL0 fields differ and make guest reads trap.")


class VmCounts(_Schema):
    """The VirtualMachines of this model."""

    selected: int = Field(0, description="VMs this model's vmSelector matches.")
    current: int = Field(0, description="Selected VMs whose template carries the current revision.")
    ambiguous: int = Field(0, description="Selected VMs also selected by another CpuModel, left unchanged.")
    domainRewrite: int = Field(0, description="Selected VMs whose template starts QEMU through armcpu's domain hook.")
    running: dict[str, int] = Field(
        default_factory=dict, description="Running VMs (VirtualMachineInstances) of this model per revision they were started with.",
    )
    restartPending: int = Field(0, description="Running VMs started with another revision than their template's: the new definition "
                                "applies at their next restart.")


class IncompatibleNode(_Schema):
    """A selected node that cannot run the model, and why."""

    name: str = Field(description="The node.")
    reasons: list[str] = Field(default_factory=list, description="Each a register field with the node's and the model's value and the rule "
                                                                 "that refuses it (up to 5, then how many more).")


class Condition(_Schema):
    """A Kubernetes API condition."""

    type: str = Field(description="Ready, Degraded, Invalid, RestartPending, PredictionMismatch, MigrationSafe or IdentityMatchesModel.")
    status: Literal["True", "False", "Unknown"] = Field(description="Whether the condition holds.")
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", description="One CamelCase word for programs (see docs/operator.md).")
    message: str = Field("", description="What a human should know, naming nodes, fields and values.")
    lastTransitionTime: str = Field(description="When status last changed.")
    observedGeneration: int | None = Field(None, description="The spec generation the condition was computed for.")


class LiveRevision(_Schema):
    """An older revision some running VM was started with, kept until the last of them restarts."""

    revision: int = Field(description="The revision.")
    fingerprint: str | None = Field(None, description="Its fingerprint.")
    registers: dict[str, str] = Field(description="Its registers (hex), to tell which nodes can still run it.",
                                      json_schema_extra={"additionalProperties": {"type": "string", "pattern": HEX64}})
    implementations: list[Implementation] = Field(default_factory=list, description="Its members' identities.")
    nodes: int = Field(0, description="Nodes that can run both it and the current revision (labelled r<N>.cpumodel.armcpu.io/<name>); "
                       "0: its VMs cannot migrate until they restart (said in the RestartPending condition).")


class Vmm(_Schema):
    """What the cluster's QEMU can do, as the operator was told (--vmm-sysreg, --vmm-impl-cpu)."""

    sysreg: bool = Field(False, description="QEMU accepts -cpu host,SYSREG_<REG>_<FIELD>=<value> (no released QEMU does).")
    implCpu: bool = Field(False, description="QEMU accepts -M virt,impl-cpu.N.* and enables KVM's cap 239 (no released QEMU does).")


class Guarantee(_Schema):
    """Which migrations of this pool's VMs are safe under the enforcement in effect and the declared QEMU."""

    enforcement: str = Field(description="The enforcement it was computed for (the one in effect).")
    safe: bool = Field(description="True: every move between startOn and migrateTo nodes is accepted, by the rules the truth "
                       "matrix measured (docs/truth.md). False: reason and message say why, and what would fix it.")
    reason: str = Field(description="One CamelCase word (the MigrationSafe condition's reason).")
    message: str = Field("", description="What holds, and when unsafe what would fix it.")
    vmm: Vmm | None = Field(None, description="The QEMU abilities it assumed.")
    startOn: list[str] = Field(default_factory=list, max_length=20,
                               description="Up to 20 nodes a VM may boot on (labelled start.cpumodel.armcpu.io/<name>).")
    startOnCount: int = Field(0, description="How many nodes a VM may boot on.")
    migrateTo: list[str] = Field(default_factory=list, max_length=20,
                                 description="Up to 20 nodes a running VM may migrate to (empty: no migration is safe).")
    migrateToCount: int = Field(0, description="How many nodes a running VM may migrate to.")


class CpuModelStatus(_Schema):
    """What the operator computed and where it applies; written by the operator only."""

    observedGeneration: int | None = Field(None, description="The spec generation this status was computed for.")
    revision: int | None = Field(None, description="Increases whenever the model's registers change.")
    fingerprint: str | None = Field(None, description="Short hash of the model's registers and identities (the node agent labels nodes with theirs).")
    specHash: str | None = Field(None, description="Hash of the spec the current revision was computed for.")
    appliedSpec: CpuModelSpec | None = Field(
        None, description="The spec the current revision was computed from, and the one in effect (selectors and enforcement "
        "included): a spec change that is invalid or cannot be computed leaves this, and the revision, as they were.",
    )
    model: ModelStatus | None = None
    nodes: NodeCounts | None = Field(None, description="Node counts.")
    vms: VmCounts | None = Field(None, description="VirtualMachine counts.")
    incompatibleNodes: list[IncompatibleNode] = Field(default_factory=list, description="Up to 20 nodes that cannot run the model, with reasons.")
    incompatibleNodesOmitted: int = Field(0, description="How many incompatible nodes are not listed.")
    pendingNodes: list[str] = Field(default_factory=list, max_length=20,
                                    description="Up to 20 nodes waiting for their agent to verify the current revision on their kernel.")
    nodeWarnings: list[NodeWarning] = Field(
        default_factory=list, description="Costs on compatible nodes, e.g. a CTR_EL0 that differs from the node's makes every guest CTR_EL0 "
        "read trap (up to 20).",
    )
    guarantee: Guarantee | None = Field(None, description="Which migrations are safe on the stack the cluster runs "
                                        "(the MigrationSafe condition says the same).")
    liveRevisions: list[LiveRevision] = Field(
        default_factory=list, max_length=16,
        description="Older revisions running VMs still use: nodes that can run one (and the current revision) are labelled "
        "r<N>.cpumodel.armcpu.io/<name>=true, and such a VM's nodeSelector requires that label until it restarts.",
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, Degraded, Invalid, RestartPending, PredictionMismatch (a node's kernel disagrees "
        "with armcpu's rules), MigrationSafe (status.guarantee), IdentityMatchesModel (the guest's MIDR promises no hwcap the "
        "model hides).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class CpuModel(_Schema):
    """A common CPU model for a pool of nodes, and where it can run."""

    apiVersion: Literal["armcpu.io/v1alpha1"] = API_VERSION
    kind: Literal["CpuModel"] = "CpuModel"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: CpuModelSpec
    status: CpuModelStatus | None = None
