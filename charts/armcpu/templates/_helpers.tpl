{{- define "armcpu.agentServiceAccount" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ .Values.agent.serviceAccountName }}
{{- end -}}
{{- define "armcpu.labels" -}}
app.kubernetes.io/name: armcpu
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
