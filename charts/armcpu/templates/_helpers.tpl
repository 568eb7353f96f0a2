{{- define "armcpu.agentServiceAccount" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ .Values.agent.serviceAccountName }}
{{- end -}}
{{- define "armcpu.labels" -}}
app.kubernetes.io/name: armcpu
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{- define "armcpu.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- define "armcpu.operatorName" -}}
{{ .Release.Name }}-operator
{{- end -}}
{{- define "armcpu.webhookSecret" -}}
{{ .Release.Name }}-webhook-tls
{{- end -}}
{{- define "armcpu.podSecurity" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}
{{- define "armcpu.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}
{{/*
The webhook's serving certificate when cert-manager is not used: generated once per render (memoised
on the root context, so the Secret, the caBundle and the Deployment's checksum agree) and reused from
the existing Secret on upgrades, so an upgrade neither rotates it nor restarts the operator.
*/}}
{{- define "armcpu.webhookTls" -}}
{{- if not (hasKey . "armcpuWebhookTls") -}}
{{- $name := include "armcpu.operatorName" . -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "armcpu.webhookSecret" .) -}}
{{- if and $secret (hasKey ($secret.data | default dict) "ca.crt") -}}
{{- $_ := set . "armcpuWebhookTls" (dict "tls.crt" (index $secret.data "tls.crt") "tls.key" (index $secret.data "tls.key") "ca.crt" (index $secret.data "ca.crt")) -}}
{{- else -}}
{{- $svc := printf "%s.%s.svc" $name .Release.Namespace -}}
{{- $ca := genCA "armcpu-webhook-ca" 3650 -}}
{{- $cert := genSignedCert $svc nil (list $svc (printf "%s.%s" $name .Release.Namespace) $name) 3650 $ca -}}
{{- $_ := set . "armcpuWebhookTls" (dict "tls.crt" ($cert.Cert | b64enc) "tls.key" ($cert.Key | b64enc) "ca.crt" ($ca.Cert | b64enc)) -}}
{{- end -}}
{{- end -}}
{{- toYaml .armcpuWebhookTls -}}
{{- end -}}
