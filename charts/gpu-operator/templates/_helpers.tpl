{{/*
Names. The operator is a cluster singleton whose identity (ServiceAccount gpu-operator) other objects refer to,
so object names are fixed, as upstream's are.
*/}}
{{- define "gpu-operator.name" -}}gpu-operator{{- end -}}

{{- define "gpu-operator.labels" -}}
app.kubernetes.io/name: gpu-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- with (.Values.operator | default dict).labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The operator pod's selector: `app: gpu-operator` is what the operator's own metrics Service selects. */}}
{{- define "gpu-operator.selectorLabels" -}}
app: gpu-operator
app.kubernetes.io/component: gpu-operator
{{- end -}}

{{/*
The operator image: [repository/]image:version, version defaulting to the chart's appVersion. Upstream's values name
its own operator (nvcr.io/nvidia/gpu-operator), not this one: then the chart's own image is used (ignoredValues).
*/}}
{{- define "gpu-operator.upstreamImage" -}}
{{- if and (eq (toString .Values.operator.repository | trimSuffix "/") "nvcr.io/nvidia") (eq (toString .Values.operator.image) "gpu-operator") }}true{{ end -}}
{{- end -}}

{{- define "gpu-operator.image" -}}
{{- $op := .Values.operator -}}
{{- if include "gpu-operator.upstreamImage" . -}}
{{- $op = dict "image" "gpu-operator" -}}
{{- end -}}
{{- $version := $op.version | default .Chart.AppVersion | toString -}}
{{- $sep := ternary "@" ":" (hasPrefix "sha256:" $version) -}}
{{- if $op.repository -}}
{{- printf "%s/%s%s%s" $op.repository $op.image $sep $version -}}
{{- else -}}
{{- printf "%s%s%s" $op.image $sep $version -}}
{{- end -}}
{{- end -}}

{{/*
componentImage: (dict "section" <values map> "default" <files/default-images.yaml entry>) as one reference,
`repository/image:version` with the operator's default filling what is empty, or `image` verbatim when it is a
full reference and there is no repository or no version (what the ClusterPolicy's section resolves to). Upstream's chart passes these to its operator as VALIDATOR_IMAGE and
DRIVER_MANAGER_IMAGE (the images used when the ClusterPolicy names none).
*/}}
{{- define "gpu-operator.componentImage" -}}
{{- $s := .section | default dict -}}
{{- $d := .default -}}
{{- $image := toString ($s.image | default "") -}}
{{- /* Verbatim as the ClusterPolicy has it (prune): a full reference with no repository or no version. */ -}}
{{- if and (regexMatch "[:@]" $image) (or (not $s.repository) (not $s.version)) -}}
{{- $image -}}
{{- else -}}
{{- $version := toString ($s.version | default $d.version) -}}
{{- $sep := ternary "@" ":" (hasPrefix "sha256:" $version) -}}
{{- printf "%s/%s%s%s" ($s.repository | default $d.repository) ($image | default $d.image) $sep $version -}}
{{- end -}}
{{- end -}}

{{/* Pod and container security settings shared by the operator and its hook Jobs. */}}
{{- define "gpu-operator.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "gpu-operator.containerSecurityContext" -}}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Scheduling settings of the operator pod, reused by the hook Jobs. */}}
{{- define "gpu-operator.scheduling" -}}
{{- /* Called with the root context, or (dict "root" . "spread" true) for the operator's pods: with more than one
replica they then prefer different nodes. */}}
{{- $spread := and (hasKey . "spread") .spread }}
{{- with (hasKey . "root" | ternary .root .) }}
{{- with .Values.operator.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $affinity := deepCopy (.Values.operator.affinity | default dict) }}
{{- if and $spread (gt (int .Values.operator.replicas) 1) (not (hasKey $affinity "podAntiAffinity")) }}
{{- /* Replicas on different nodes where possible, so one node's loss leaves a follower to take over. */}}
{{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" (include "gpu-operator.selectorLabels" . | fromYaml)) }}
{{- $_ := set $affinity "podAntiAffinity" (dict "preferredDuringSchedulingIgnoredDuringExecution" (list (dict "weight" 100 "podAffinityTerm" $term))) }}
{{- end }}
{{- with $affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.operator.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.operator.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
- name: {{ . }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
prune: a values map as the ClusterPolicy wants it, as YAML. Recursively drops keys whose value is null, "", or an
empty list or map (the operator's default applies), but keeps a non-empty labels, annotations or additionalLabels map
as it is,
and in any map without a `version`, drops `repository`, and `image` unless it is a full reference with a tag or
digest (used verbatim), so the operator's default image for that component applies. Lists are kept as they are.
A `version` Helm reads as a number (`--set driver.version=580`) becomes a string, as upstream's `quote` makes it.
A quoted "true"/"false" or whole number (`--set-string`, `enabled: "false"`) under a key the CRDs type boolean or
integer becomes one, as upstream's templates print these bare (tests/test_chart_files.py keeps the lists equal to the
CRDs'; `default`, a string in most sections, is left alone).
*/}}
{{- define "gpu-operator.prune" -}}
{{- $booleans := list "autoUpgrade" "deleteEmptyDir" "enable" "enablePodLabels" "enablePodUID" "enabled" "force" "honorLabels" "hostNetwork" "hostPID" "hostProcess" "nlsEnabled" "nriPluginEnabled" "runAsNonRoot" "useHostMofed" "useNvidiaDriverCRD" "useOpenKernelModules" "usePrecompiled" "use_ocp_driver_toolkit" -}}
{{- $integers := list "failureThreshold" "fsGroup" "hostPort" "initialDelaySeconds" "maxParallelUpgrades" "modulus" "periodSeconds" "runAsGroup" "runAsUser" "successThreshold" "timeoutSeconds" "tolerationSeconds" "weight" -}}
{{- $out := dict -}}
{{- range $k, $v := . -}}
{{- if and (kindIs "map" $v) (has $k (list "labels" "annotations" "additionalLabels")) -}}
{{- /* A user's labels or annotations: kept as given ("" is a valid value), unless empty. */ -}}
{{- if $v -}}
{{- $_ := set $out $k $v -}}
{{- end -}}
{{- else if kindIs "map" $v -}}
{{- $sub := include "gpu-operator.prune" $v | fromYaml -}}
{{- if $sub -}}
{{- $_ := set $out $k $sub -}}
{{- end -}}
{{- else if kindIs "invalid" $v -}}
{{- else if and (kindIs "string" $v) (eq $v "") -}}
{{- else if and (kindIs "slice" $v) (empty $v) -}}
{{- else if and (kindIs "string" $v) (has $k $booleans) (has (lower $v) (list "true" "false")) -}}
{{- $_ := set $out $k (eq (lower $v) "true") -}}
{{- else if and (kindIs "string" $v) (has $k $integers) (regexMatch "^[0-9]+$" $v) -}}
{{- $_ := set $out $k (atoi $v) -}}
{{- else if eq $k "version" -}}
{{- $_ := set $out $k (toString $v) -}}
{{- else -}}
{{- $_ := set $out $k $v -}}
{{- end -}}
{{- end -}}
{{- if not (hasKey $out "version") -}}
{{- $_ := unset $out "repository" -}}
{{- if and (hasKey $out "image") (not (regexMatch "[:@]" (toString $out.image))) -}}
{{- $_ := unset $out "image" -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* Names of the CRDs shipped in crds/ (what the upgrade hook applies). */}}
{{- define "gpu-operator.crdNames" -}}
{{- range $path, $_ := .Files.Glob "crds/*.yaml" }}
{{- range $doc := regexSplit "(?m)^---\\s*$" ($.Files.Get $path) -1 }}
{{- $crd := fromYaml $doc }}
{{- if and $crd $crd.metadata }}
- {{ $crd.metadata.name }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
The driver's chart-only keys with their CRD names also accepted (a values file written after the ClusterPolicy):
useNvidiaDriverCRD: "true" when driver.nvidiaDriverCRD.enabled or driver.useNvidiaDriverCRD is;
upgradePolicy: driver.upgradePolicy (a map) as YAML, gpuPodDeletion becoming podDeletion, whose own keys win.
*/}}
{{- define "gpu-operator.useNvidiaDriverCRD" -}}
{{- $d := .Values.driver | default dict -}}
{{- if or (eq (toString (dig "nvidiaDriverCRD" "enabled" false $d)) "true") (eq (toString $d.useNvidiaDriverCRD) "true") }}true{{ end -}}
{{- end -}}

{{- define "gpu-operator.upgradePolicy" -}}
{{- $up := omit . "gpuPodDeletion" -}}
{{- if kindIs "map" .gpuPodDeletion -}}
{{- $pd := deepCopy .gpuPodDeletion -}}
{{- if kindIs "map" .podDeletion }}{{ range $k, $x := .podDeletion }}{{ $_ := set $pd $k $x }}{{ end }}{{ end -}}
{{- $_ := set $up "podDeletion" $pd -}}
{{- end -}}
{{- toYaml $up -}}
{{- end -}}

{{/* Whether the chart creates ClusterPolicy `cluster-policy`: clusterPolicy.enabled and upstream's deployCR. */}}
{{- define "gpu-operator.deployCR" -}}
{{- if and .Values.clusterPolicy.enabled .Values.clusterPolicy.deployCR }}true{{ end -}}
{{- end -}}

{{/*
imageVersion: a section (dict "section" <values map> "default" <files/default-images.yaml entry or "">) as YAML,
with `version` filled in from the operator's default when the values name another repository or image but no
version (upstream's chart does the same with its own version), so a mirror registry is never silently dropped.
A section naming the default repository and image, or none, keeps an empty version: the operator's default.
*/}}
{{- define "gpu-operator.imageVersion" -}}
{{- $s := deepCopy .section -}}
{{- $d := .default -}}
{{- if and (kindIs "map" $d) (not $s.version) -}}
{{- $repo := toString ($s.repository | default "") -}}
{{- $image := toString ($s.image | default "") -}}
{{- if and $repo (not (regexMatch "[:@]" $image)) (or (ne $repo $d.repository) (ne ($image | default $d.image) $d.image)) -}}
{{- $_ := set $s "image" ($image | default $d.image) -}}
{{- $_ := set $s "version" $d.version -}}
{{- end -}}
{{- end -}}
{{- toYaml $s -}}
{{- end -}}

{{/*
ignoredValues: a YAML list of "<key>: <why>" for each value of upstream's chart that is set to do something this
chart does not do (the install notes print them; nothing upstream's values ask for is dropped silently).
*/}}
{{- define "gpu-operator.ignoredValues" -}}
{{- $v := .Values.AsMap -}}
{{- $out := list -}}
{{- if dig "platform" "openshift" false $v -}}
{{- $out = append $out "platform.openshift: OpenShift is not supported" -}}
{{- end -}}
{{- if dig "nfd" "nodefeaturerules" false $v -}}
{{- $out = append $out "nfd.nodefeaturerules: NFD is not vendored, so no NodeFeatureRules are installed" -}}
{{- end -}}
{{- if dig "node-feature-discovery" dict $v -}}
{{- $out = append $out "node-feature-discovery: NFD is not vendored; configure it in NFD's own chart" -}}
{{- end -}}
{{- if dig "gpuCluster" "deployCR" false $v -}}
{{- $out = append $out "gpuCluster.deployCR: the GPUCluster (DRA) stack is not supported; draDriver is unused" -}}
{{- end -}}
{{- if include "gpu-operator.upstreamImage" . -}}
{{- $out = append $out "operator.repository/image: upstream's operator image (nvcr.io/nvidia/gpu-operator) is not this operator; the chart's own image is used" -}}
{{- end -}}
{{- if dig "operator" "logging" dict $v -}}
{{- $out = append $out "operator.logging: the operator logs at INFO level in its own format" -}}
{{- end -}}
{{- if dig "driver" "nvidiaDriverCRD" "nodeSelector" dict $v -}}
{{- $out = append $out "driver.nvidiaDriverCRD.nodeSelector: NVIDIADriver default is made without one (as upstream's chart); it drives the GPU nodes no other NVIDIADriver selects" -}}
{{- end -}}
{{- if dig "operator" "defaultGPUMode" "" $v -}}
{{- $out = append $out "operator.defaultGPUMode: not a ClusterPolicy field (upstream's API server drops it too)" -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/*
nullSections: Helm drops a values section set to null (`--set operator=null`, or `operator:` with nothing under it
in a values file) together with its defaults; this puts the chart-only sections' defaults (files/chart-defaults.yaml)
back for such a section, so null means its defaults. Every template reading those sections includes it first
(it renders nothing; the ClusterPolicy's operand sections need none: null leaves them to the operator).
The same for the groups of settings within them the templates read keys of (`operator.metrics:` with nothing
under it, as upstream's commented-out example leaves it, is the metrics defaults).
*/}}
{{- define "gpu-operator.nullSections" -}}
{{- $defaults := .Files.Get "files/chart-defaults.yaml" | fromYaml }}
{{- range $k, $d := $defaults }}
{{- if kindIs "invalid" (index $.Values $k) }}{{ $_ := set $.Values $k $d }}{{ end }}
{{- end }}
{{- range $path := list "operator.leaderElection" "operator.metrics" "operator.metrics.service" "operator.metrics.prometheusRule" "operator.metrics.grafanaDashboard" "operator.livenessProbe" "operator.readinessProbe" "doctor.rbac" }}
{{- $keys := splitList "." $path }}
{{- $at := $.Values }}{{ $d := $defaults }}
{{- range $keys | initial }}{{ $at = index $at . }}{{ $d = index $d . }}{{ end }}
{{- if and (kindIs "map" $at) (kindIs "invalid" (index $at (last $keys))) }}
{{- $_ := set $at (last $keys) (deepCopy (index $d (last $keys))) }}
{{- end }}
{{- end }}
{{- end -}}
