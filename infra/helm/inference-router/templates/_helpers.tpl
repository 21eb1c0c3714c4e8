{{/* Names, labels and the environment shared by the router's pods. */}}

{{- define "inference-router.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "inference-router.fullname" -}}
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

{{- define "inference-router.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "inference-router.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "api") */}}
{{- define "inference-router.selectorLabels" -}}
app.kubernetes.io/name: {{ include "inference-router.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "inference-router.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "inference-router.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "inference-router.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "inference-router.secretName" -}}
{{- include "inference-router.fullname" . }}
{{- end }}

{{- define "inference-router.providerSecretName" -}}
{{- default (include "inference-router.fullname" .) .Values.providers.existingSecret }}
{{- end }}

{{- define "inference-router.redisHost" -}}
{{- printf "%s-redis" (include "inference-router.fullname" .) }}
{{- end }}

{{/* Backend (= queue) name -> the variable holding its key. */}}
{{- define "inference-router.keyVars" -}}
openai: OPENAI_API_KEY
anthropic: ANTHROPIC_API_KEY
google: GEMINI_API_KEY
openrouter: OPENROUTER_API_KEY
grok: XAI_API_KEY
venice: VENICE_API_KEY
llm-d: LLMD_API_KEY
{{- end }}

{{/*
A value kept in the chart's Secret: the one given, else the one the Secret already holds
(so upgrades keep it), else `prefix` and a new random one of `length` letters and digits
(32 when not given). (list $ "KEY" given prefix [length])
*/}}
{{- define "inference-router.kept" -}}
{{- $ctx := index . 0 }}
{{- $key := index . 1 }}
{{- $given := index . 2 }}
{{- if $given }}
{{- $given }}
{{- else }}
{{- $existing := lookup "v1" "Secret" $ctx.Release.Namespace (include "inference-router.secretName" $ctx) | default dict }}
{{- $old := dig "data" $key "" $existing }}
{{- if $old }}
{{- $old | b64dec }}
{{- else }}
{{- $length := 32 }}
{{- if gt (len .) 4 }}
{{- $length = index . 4 }}
{{- end }}
{{- printf "%s%s" (index . 3) (randAlphaNum (int $length)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* REDIS_URL (and REDIS_PASSWORD for the bundled Redis) for a container's env. */}}
{{- define "inference-router.redisEnv" -}}
{{- if .Values.redis.bundled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "inference-router.secretName" . }}
      key: REDIS_PASSWORD
- name: REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:6379/0" (include "inference-router.redisHost" .) | quote }}
{{- else if or .Values.redis.external.url .Values.redis.external.existingSecret }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ default (include "inference-router.secretName" .) .Values.redis.external.existingSecret }}
      key: {{ ternary .Values.redis.external.existingSecretKey "REDIS_URL" (not (empty .Values.redis.external.existingSecret)) }}
{{- else }}
{{- fail "redis.bundled is false: set redis.external.url or redis.external.existingSecret" }}
{{- end }}
{{- end }}

{{/* The env of the API and of its registry init container. */}}
{{- define "inference-router.apiEnv" -}}
{{- include "inference-router.redisEnv" . }}
- name: DATABASE_URL
  value: {{ default "sqlite:////data/router.db" .Values.api.databaseUrl | quote }}
- name: ROUTER_AUTH
  value: {{ .Values.api.auth | quote }}
- name: ROUTER_ADMIN_KEY
  valueFrom:
    secretKeyRef:
      {{- with .Values.api.adminKey.existingSecret }}
      name: {{ . }}
      key: {{ $.Values.api.adminKey.secretKey }}
      {{- else }}
      name: {{ include "inference-router.secretName" . }}
      key: ROUTER_ADMIN_KEY
      {{- end }}
- name: ROUTER_FORWARD_HEADERS
  value: {{ .Values.llmd.forwardHeaders | quote }}
{{- /* bound to 0.0.0.0: any Host name, unless api.allowedHosts narrows it (plus localhost,
the name the probes send) */}}
- name: ROUTER_HOST
  value: "0.0.0.0"
{{- with .Values.api.allowedHosts }}
- name: ROUTER_ALLOWED_HOSTS
  value: {{ append . "localhost" | uniq | join "," | quote }}
{{- end }}
{{- with .Values.api.allowedOrigins }}
- name: ROUTER_ALLOWED_ORIGINS
  value: {{ join "," . | quote }}
{{- end }}
{{- $vars := include "inference-router.keyVars" . | fromYaml }}
{{- range .Values.providers.enabled }}
{{- if or (not (hasKey $vars .)) (eq . "llm-d") }}
{{- fail (printf "providers.enabled: unknown provider %q (llm-d is enabled by llmd.baseUrl)" .) }}
{{- end }}
{{- /* the API enables the backend when the variable is set; the key stays in the workers */}}
- name: {{ index $vars . }}
  value: "on"
{{- end }}
{{- if .Values.llmd.baseUrl }}
- name: LLMD_BASE_URL
  value: {{ .Values.llmd.baseUrl | quote }}
{{- end }}
{{- end }}

{{/* Volumes every router pod mounts under a read-only root: /tmp and ~/.cache. */}}
{{- define "inference-router.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: cache
  mountPath: /home/router/.cache
{{- end }}

{{- define "inference-router.scratchVolumes" -}}
- name: tmp
  emptyDir: {}
- name: cache
  emptyDir: {}
{{- end }}
