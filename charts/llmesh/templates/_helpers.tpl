{{/* The operator's name: its Deployment, Services, ServiceAccount and RBAC objects. */}}
{{- define "llmesh.name" -}}
{{- .Values.operator.name -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "llmesh.labels" -}}
app.kubernetes.io/name: {{ include "llmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: llmesh
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* What selects the operator's pods (never changes across upgrades). */}}
{{- define "llmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* An image reference from {repository, tag, digest}: repository:tag, repository@digest, or
     repository:tag@digest. An empty tag is the chart's appVersion. */}}
{{- define "llmesh.image" -}}
{{- $img := index . 0 -}}
{{- $root := index . 1 -}}
{{- $tag := $img.tag | default $root.Chart.AppVersion -}}
{{- if $img.digest -}}
{{- if $img.tag -}}
{{- printf "%s:%s@%s" $img.repository $img.tag $img.digest -}}
{{- else -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- end -}}
{{- else -}}
{{- printf "%s:%s" $img.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The ServiceAccount as an RBAC subject. */}}
{{- define "llmesh.subject" -}}
- kind: ServiceAccount
  name: {{ include "llmesh.name" . }}
  namespace: {{ .Release.Namespace }}
{{- end -}}
