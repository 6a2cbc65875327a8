{{- define "referrers-proxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "referrers-proxy.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "referrers-proxy.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "referrers-proxy.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "referrers-proxy.redisName" -}}
{{- printf "%s-redis" (include "referrers-proxy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "referrers-proxy.chartLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{- define "referrers-proxy.labels" -}}
{{ include "referrers-proxy.chartLabels" . }}
{{ include "referrers-proxy.selectorLabels" . }}
{{- end }}

{{- define "referrers-proxy.redisLabels" -}}
{{ include "referrers-proxy.chartLabels" . }}
{{ include "referrers-proxy.redisSelectorLabels" . }}
{{- end }}

{{- define "referrers-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "referrers-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: proxy
{{- end }}

{{- define "referrers-proxy.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "referrers-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end }}

{{/* Whether the proxy has a Redis index; true renders as a non-empty string. */}}
{{- define "referrers-proxy.hasRedis" -}}
{{- if or .Values.redis.enabled .Values.redis.url .Values.redis.existingSecret .Values.redis.sentinel.hosts }}true{{ end }}
{{- end }}

{{- define "referrers-proxy.scheme" -}}
{{- if .Values.tls.secretName }}HTTPS{{ else }}HTTP{{ end }}
{{- end }}

{{/* The rules values.schema.json cannot express (or that a --skip-schema-validation install skips). */}}
{{- define "referrers-proxy.validate" -}}
{{- if and (eq .Values.mode "standalone") (not .Values.upstream) }}
{{- fail "mode standalone needs upstream: the registry's http:// or https:// URL" }}
{{- end }}
{{- if and (eq .Values.mode "sidecar") .Values.upstream }}
{{- fail "mode sidecar fronts the registry in the pod: leave upstream empty" }}
{{- end }}
{{- if and (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) (not (include "referrers-proxy.hasRedis" .)) }}
{{- fail "more than one replica needs Redis (redis.enabled, redis.url or redis.existingSecret): the embedded index lives in one process" }}
{{- end }}
{{- if and (gt (int .Values.workers) 1) (not (include "referrers-proxy.hasRedis" .)) }}
{{- fail "more than one worker needs Redis (redis.enabled, redis.url or redis.existingSecret): the embedded index lives in one process" }}
{{- end }}
{{- if and .Values.redis.enabled (or .Values.redis.url .Values.redis.existingSecret) }}
{{- fail "redis.enabled runs a Redis in the chart: leave redis.url and redis.existingSecret empty, or disable it" }}
{{- end }}
{{- if and .Values.redis.url .Values.redis.existingSecret }}
{{- fail "set redis.url or redis.existingSecret, not both" }}
{{- end }}
{{- if ne (empty .Values.redis.sentinel.hosts) (empty .Values.redis.sentinel.masterName) }}
{{- fail "redis.sentinel.hosts and redis.sentinel.masterName go together" }}
{{- end }}
{{- if and .Values.redis.sentinel.hosts (or .Values.redis.cluster .Values.redis.enabled) }}
{{- fail "redis.sentinel finds an external master: not with redis.cluster or redis.enabled" }}
{{- end }}
{{- if and .Values.front.enabled .Values.tls.secretName }}
{{- fail "front.enabled speaks plain HTTP to the proxy: leave tls.secretName empty and terminate TLS at the ingress" }}
{{- end }}
{{- if and .Values.front.enabled (hasPrefix "https://" .Values.upstream) }}
{{- fail "front.enabled needs sidecar mode or an http:// upstream" }}
{{- end }}
{{- end }}

{{/* host:port of the registry, for the front. */}}
{{- define "referrers-proxy.registryAddress" -}}
{{- if eq .Values.mode "sidecar" }}127.0.0.1:5000{{ else }}{{ $u := urlParse .Values.upstream }}{{ $u.host }}{{ if not (contains ":" $u.host) }}:80{{ end }}{{ end }}
{{- end }}

{{- define "referrers-proxy.frontContainer" -}}
- name: front
  image: "{{ .Values.front.image.repository }}:{{ .Values.front.image.tag }}"
  imagePullPolicy: {{ .Values.front.image.pullPolicy }}
  env:
    # The image renders /etc/nginx/templates/*.template with these into /etc/nginx/conf.d/.
    - name: ORP_REGISTRY
      value: {{ include "referrers-proxy.registryAddress" . | quote }}
    - name: ORP_PROXY
      value: "127.0.0.1:8080"
    - name: ORP_LISTEN
      value: {{ printf "0.0.0.0:%d" (int .Values.front.port) | quote }}
  ports:
    - name: front
      containerPort: {{ .Values.front.port }}
  livenessProbe:
    tcpSocket:
      port: front
    {{- toYaml .Values.livenessProbe | nindent 4 }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: front
    {{- toYaml .Values.readinessProbe | nindent 4 }}
  lifecycle:
    preStop:
      exec:
        command: ["sleep", "5"]
  resources:
    {{- toYaml .Values.front.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: front-template
      mountPath: /etc/nginx/templates
      readOnly: true
    - name: front-conf
      mountPath: /etc/nginx/conf.d
    - name: front-tmp
      mountPath: /tmp
{{- end }}

{{- define "referrers-proxy.proxyContainer" -}}
- name: referrers-proxy
  image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - serve
    {{- range .Values.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  env:
    - name: REFERRERS_PROXY_UPSTREAM
      value: {{ ternary "http://127.0.0.1:5000" .Values.upstream (eq .Values.mode "sidecar") | quote }}
    - name: REFERRERS_PROXY_LISTEN
      value: "0.0.0.0:8080"
    - name: REFERRERS_PROXY_LOG_LEVEL
      value: {{ .Values.logLevel | quote }}
    - name: REFERRERS_PROXY_LOG_FORMAT
      value: {{ .Values.logFormat | quote }}
    - name: REFERRERS_PROXY_SHUTDOWN_GRACE
      value: {{ .Values.shutdownGraceSeconds | quote }}
    - name: REFERRERS_PROXY_WORKERS
      value: {{ .Values.workers | quote }}
    {{- if .Values.redis.enabled }}
    - name: REFERRERS_PROXY_REDIS_URL
      value: "redis://{{ include "referrers-proxy.redisName" . }}:6379/0"
    {{- else if .Values.redis.existingSecret }}
    - name: REFERRERS_PROXY_REDIS_URL
      valueFrom:
        secretKeyRef:
          name: {{ .Values.redis.existingSecret }}
          key: {{ .Values.redis.existingSecretKey }}
    {{- else if .Values.redis.url }}
    - name: REFERRERS_PROXY_REDIS_URL
      value: {{ .Values.redis.url | quote }}
    {{- end }}
    {{- if .Values.redis.cluster }}
    - name: REFERRERS_PROXY_REDIS_CLUSTER
      value: "true"
    {{- end }}
    {{- with .Values.redis.sentinel.hosts }}
    - name: REFERRERS_PROXY_REDIS_SENTINEL
      value: {{ join "," . | quote }}
    - name: REFERRERS_PROXY_REDIS_MASTER
      value: {{ $.Values.redis.sentinel.masterName | quote }}
    {{- end }}
    {{- if .Values.redis.passwordSecret }}
    - name: REFERRERS_PROXY_REDIS_PASSWORD_FILE
      value: /etc/referrers-proxy/redis-password/{{ .Values.redis.passwordSecretKey }}
    {{- end }}
    {{- if .Values.redis.caSecret }}
    - name: REFERRERS_PROXY_REDIS_CA_FILE
      value: /etc/referrers-proxy/redis-ca/{{ .Values.redis.caSecretKey }}
    {{- end }}
    {{- if not (kindIs "invalid" .Values.redis.waitReplicas) }}
    - name: REFERRERS_PROXY_REDIS_WAIT_REPLICAS
      value: {{ .Values.redis.waitReplicas | quote }}
    {{- end }}
    {{- if .Values.tls.secretName }}
    - name: REFERRERS_PROXY_TLS_CERT
      value: /etc/referrers-proxy/tls/tls.crt
    - name: REFERRERS_PROXY_TLS_KEY
      value: /etc/referrers-proxy/tls/tls.key
    {{- end }}
    {{- with .Values.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: http
      containerPort: 8080
  livenessProbe:
    httpGet:
      path: /healthz
      port: http
      scheme: {{ include "referrers-proxy.scheme" . }}
    {{- toYaml .Values.livenessProbe | nindent 4 }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: http
      scheme: {{ include "referrers-proxy.scheme" . }}
    {{- toYaml .Values.readinessProbe | nindent 4 }}
  lifecycle:
    # Let the Service drop this pod before the proxy stops listening.
    preStop:
      exec:
        command: ["sleep", "5"]
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  {{- if or .Values.tls.secretName .Values.redis.passwordSecret .Values.redis.caSecret .Values.extraVolumeMounts }}
  volumeMounts:
    {{- if .Values.tls.secretName }}
    - name: tls
      mountPath: /etc/referrers-proxy/tls
      readOnly: true
    {{- end }}
    {{- if .Values.redis.passwordSecret }}
    - name: redis-password
      mountPath: /etc/referrers-proxy/redis-password
      readOnly: true
    {{- end }}
    {{- if .Values.redis.caSecret }}
    - name: redis-ca
      mountPath: /etc/referrers-proxy/redis-ca
      readOnly: true
    {{- end }}
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
{{- end }}

{{- define "referrers-proxy.registryContainer" -}}
- name: registry
  image: "{{ .Values.registry.image.repository }}:{{ .Values.registry.image.tag }}"
  imagePullPolicy: {{ .Values.registry.image.pullPolicy }}
  env:
    - name: REGISTRY_HTTP_ADDR
      value: "127.0.0.1:5000"
    # The proxy deletes superseded referrers tag-schema indexes by digest.
    - name: REGISTRY_STORAGE_DELETE_ENABLED
      value: "true"
    {{- with .Values.registry.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  lifecycle:
    # Keep answering the proxy while it finishes the requests in flight.
    preStop:
      exec:
        command: ["sleep", "{{ add .Values.shutdownGraceSeconds 5 }}"]
  resources:
    {{- toYaml .Values.registry.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: registry-data
      mountPath: /var/lib/registry
{{- end }}
