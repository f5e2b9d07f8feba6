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

{{- /* A duration value (90s, 5m, 1h) in seconds, for an alert threshold. */ -}}
{{- define "keyless.seconds" -}}
{{- $d := toString . -}}
{{- if hasSuffix "h" $d -}}{{ mul (trimSuffix "h" $d | int) 3600 }}
{{- else if hasSuffix "m" $d -}}{{ mul (trimSuffix "m" $d | int) 60 }}
{{- else if hasSuffix "s" $d -}}{{ trimSuffix "s" $d | int }}
{{- else -}}{{ fail (printf "%q is not a duration like 90s, 15m or 1h" $d) }}
{{- end -}}
{{- end -}}

{{- define "keyless.nodeName" -}}
{{- printf "%s-node" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "keyless.nodeSelectorLabels" -}}
app.kubernetes.io/name: keyless-node
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- /* HOST:PORT of a node address (IPv6 in brackets), from (list ADDRESS PORT). */ -}}
{{- define "keyless.nodeAddress" -}}
{{- $address := index . 0 -}}
{{- $port := index . 1 -}}
{{- if contains ":" $address -}}[{{ $address }}]:{{ $port }}{{- else -}}{{ $address }}:{{ $port }}{{- end -}}
{{- end -}}

{{- define "keyless.checkMode" -}}
{{- if not (has .Values.mode (list "sidecar" "node")) -}}
{{- fail (printf "mode must be sidecar or node, not %q" .Values.mode) -}}
{{- end -}}
{{- end -}}

{{- /* keyless node's listen flags, one list item a line. */ -}}
{{- define "keyless.nodeListenArgs" -}}
- {{ printf "--aws-listen=%s" (include "keyless.nodeAddress" (list .Values.node.awsAddress .Values.node.port)) | quote }}
{{- with .Values.node.gcpAddress }}
- {{ printf "--gcp-listen=%s" (include "keyless.nodeAddress" (list . $.Values.node.port)) | quote }}
{{- end }}
{{- with .Values.node.azureAddress }}
- {{ printf "--azure-listen=%s" (include "keyless.nodeAddress" (list . $.Values.node.port)) | quote }}
{{- end }}
{{- end -}}
