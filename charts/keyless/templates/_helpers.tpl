{{- define "keyless.name" -}}
{{- printf "%s-webhook" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "keyless.labels" -}}
app.kubernetes.io/name: keyless-webhook
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "keyless.selectorLabels" -}}
app.kubernetes.io/name: keyless-webhook
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "keyless.useCertManager" -}}
{{- if eq .Values.tls.source "certManager" -}}true
{{- else if and (eq .Values.tls.source "auto") (.Capabilities.APIVersions.Has "cert-manager.io/v1") -}}true
{{- else if or (eq .Values.tls.source "generated") (eq .Values.tls.source "auto") -}}
{{- else -}}{{ fail (printf "tls.source must be auto, certManager or generated, not %q" .Values.tls.source) }}
{{- end -}}
{{- end -}}

{{- define "keyless.tlsSecret" -}}{{ include "keyless.name" . }}-tls{{- end -}}
