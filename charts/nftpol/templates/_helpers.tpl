{{/*
Names and labels shared by every template. Standard Kubernetes recommended labels
(app.kubernetes.io/*) so `kubectl get -l app.kubernetes.io/name=nftpol` finds everything.
*/}}

{{- define "nftpol.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the release name, or "<release>-nftpol" when the release name does not
already contain the chart name. Truncated to 63 characters (DNS label).
*/}}
{{- define "nftpol.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "nftpol.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "nftpol.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nftpol.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "nftpol.labels" -}}
helm.sh/chart: {{ include "nftpol.chart" . }}
{{ include "nftpol.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nftpol
{{- end }}

{{- define "nftpol.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "nftpol.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "nftpol.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{- define "nftpol.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "nftpol.imageTag" .) }}
{{- end }}

{{/* The agent's unix socket, the same path inside the pod and on the host. */}}
{{- define "nftpol.socketPath" -}}
{{- printf "%s/nftpol.sock" (trimSuffix "/" .Values.socketDir) }}
{{- end }}

{{/* Where the init container sees the host's CNI directories (install-cni's defaults). */}}
{{- define "nftpol.cniBinMount" -}}/host/opt/cni/bin{{- end }}
{{- define "nftpol.cniConfMount" -}}/host/etc/cni/net.d{{- end }}

{{/* The metrics Service exists when asked for, or when a ServiceMonitor needs it. */}}
{{- define "nftpol.metricsService" -}}
{{- if or .Values.metrics.service.enabled .Values.metrics.serviceMonitor.enabled }}true{{ end }}
{{- end }}
