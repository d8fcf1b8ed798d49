{{/* Names, labels and the shared pieces of both planes' pods. */}}

{{- define "molt.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "molt.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "molt.dataplane.fullname" -}}
{{- printf "%s-dataplane" (include "molt.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "molt.controlplane.fullname" -}}
{{- printf "%s-controlplane" (include "molt.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "molt.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "molt.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one plane: (dict "root" $ "component" "dataplane") */}}
{{- define "molt.selectorLabels" -}}
app.kubernetes.io/name: {{ include "molt.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "molt.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "molt.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "molt.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The control plane's URL as data planes dial it. */}}
{{- define "molt.controlplane.url" -}}
{{- if .Values.controlplane.enabled -}}
{{- printf "http://%s:%d" (include "molt.controlplane.fullname" .) (int .Values.controlplane.service.port) -}}
{{- else -}}
{{- required "externalControlPlane.url is required when controlplane.enabled is false" .Values.externalControlPlane.url -}}
{{- end -}}
{{- end -}}

{{/* Hardened pod and container security contexts: the image's non-root
user, no privilege escalation, no capabilities, read-only root. */}}
{{- define "molt.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "molt.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* An env var from the release's Secret: (list $ "NAME" "key" optional) */}}
{{- define "molt.secretEnv" -}}
{{- $root := index . 0 -}}
- name: {{ index . 1 }}
  valueFrom:
    secretKeyRef:
      name: {{ required "existingSecret is required: the Secret holding molt's tokens and keys" $root.Values.existingSecret }}
      key: {{ index . 2 }}
      {{- if index . 3 }}
      optional: true
      {{- end }}
{{- end -}}
